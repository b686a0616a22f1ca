"""Train and evaluate the retriever variants again with other seeds, from the decisions already stored, and print
nDCG@10 / Recall@100 per variant and seed with the mean and the spread: is a difference between two cleaning
methods larger than what the seed alone moves?

    .venv/bin/python scripts/repeat_seeds.py --config configs/compare_trec_dl.yaml --seed 43 --seed 44 \
        --variant original --variant arhn_R --variant rlhn_rlhn --variant rlhn_hn_remove

Each seed works in its own state folder (`var/seeds/SEED/`, with a copy of the pipeline's DuckDB file), so the
seed-42 models and figures of the main run stay as they are; the main run's own figures are read as seed 42
(the config's seed). Variants with the same training data share one model, as in the pipeline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, required=True, help="the run config of the main run")
    ap.add_argument("--seed", dest="seeds", type=int, action="append", required=True)
    ap.add_argument("--variant", dest="variants", action="append", required=True)
    args = ap.parse_args()

    from arhn_pipeline import settings

    main_db, main_var = settings.db_path(), settings.var_dir()
    ops = (yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}).get("ops", {})
    seed0 = int(ops.get("trained_retriever", {}).get("config", {}).get("seed", 42))
    figures = _figures(main_db, args.variants, seed0)
    for seed in args.seeds:
        folder = main_var / "seeds" / str(seed)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(main_db, folder / "arhn.duckdb")
        if (main_var / "first_stage").is_dir():  # the untrained model's runs: not encoded again
            shutil.copytree(main_var / "first_stage", folder / "first_stage", dirs_exist_ok=True)
        os.environ.update(ARHN_VAR_DIR=str(folder), ARHN_DB=str(folder / "arhn.duckdb"))
        os.environ.setdefault("ARHN_MODELS_DIR", str(main_var / "models"))
        figures.update(_one_seed(ops, seed, args.variants))
    seeds = [seed0, *args.seeds]
    print(f"\n| variant | eval set | {' | '.join(f'seed {s}' for s in seeds)} | mean nDCG@10 | spread (max - min) |")
    print("|---|---|" + "---|" * (len(seeds) + 2))
    for variant, eval_set in sorted({(v, e) for v, e, _ in figures}, key=lambda k: (args.variants.index(k[0]), k[1])):
        got = {s: figures[(variant, eval_set, s)][0] for s in seeds if (variant, eval_set, s) in figures}
        cells = [f"{got[s]:.4f}" if s in got else "-" for s in seeds]
        values = list(got.values())
        spread, mean = max(values) - min(values), statistics.mean(values)
        print(f"| {variant} | {eval_set} | {' | '.join(cells)} | {mean:.4f} | {spread:.4f} |")


def _figures(db: Path, variants: list[str], seed: int) -> dict[tuple[str, str, int], tuple[float, float]]:
    """(variant, eval set, seed) -> (nDCG@10, Recall@100), as retriever_eval stores them in `db`."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as conn:
        rows = conn.execute(
            "SELECT variant, eval_set, ndcg_at_10, recall_at_100 FROM retriever_eval WHERE variant IN ?", [variants]
        ).fetchall()
    return {(v, e, seed): (n, r) for v, e, n, r in rows}


def _one_seed(ops: dict, seed: int, variants: list[str]) -> dict[tuple[str, str, int], tuple[float, float]]:
    import dagster as dg

    from arhn_pipeline import settings
    from arhn_pipeline.definitions import build_defs, job_run_config

    defs = build_defs()
    instance = dg.DagsterInstance.ephemeral()
    train = {**ops.get("trained_retriever", {}).get("config", {}), "seed": seed}
    seeded = {**ops, "trained_retriever": {"config": train}}
    for variant in variants:
        job = defs.resolve_job_def("train_retriever")
        config = job_run_config(job, seeded)
        result = job.execute_in_process(partition_key=variant, instance=instance, run_config=config)
        assert result.success, f"training {variant} with seed {seed} failed"
    evaluate = {**seeded}
    evaluate["retriever_eval"] = {"config": {**ops.get("retriever_eval", {}).get("config", {}), "variants": variants}}
    job = defs.resolve_job_def("evaluate_retrievers")
    assert job.execute_in_process(instance=instance, run_config=job_run_config(job, evaluate)).success
    figures = _figures(settings.db_path(), variants, seed)
    print(f"seed {seed}: {figures}", flush=True)
    return figures


if __name__ == "__main__":
    main()
