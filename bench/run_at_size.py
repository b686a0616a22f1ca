"""A sub-dataset at BGE size through the CPU default: 100,000 queries x (1 positive + 15 negatives) = 1.6 M pairs,
built from real texts, run by `arhn run` as a user runs it (ingest, the judge, the ranker, qualification,
`relabeled`, the collection), twice: from an empty vector store (cold) and again into a new database with the
vectors the first run stored (warm).

    .venv/bin/python bench/run_at_size.py                     # 100,000 queries
    .venv/bin/python bench/run_at_size.py --queries 10000     # quick
    .venv/bin/python bench/run_at_size.py --folder F --runs warm   # again, with the vectors a cold run stored in F

The texts: the TREC DL 2019 / 2020 judged hard-negative files in ../shared/data/judged (94 real queries, each with
its highest-graded passage and the next 30 BM25 hits, some of them human-confirmed false negatives). Query i of
the partition is one of those 94 (drawn with the seed), with its positive and 15 of its 30 negatives drawn and
shuffled, under a query id of its own: the pairs are real hard negatives, and the partition has 1.6 M of them, but
only about 2,900 distinct texts, so the cold run embeds those once and the rest of both runs is the pipeline's
own work at size (loading, features from stored vectors, verdicts, rankings, decisions, writes). A real
sub-dataset of this size has about 30 times more distinct texts: its cold embedding is that much longer (see
docs/measurements.md "The CPU judge at scale" for the embedding rates).

The CPU default, as a user without a GPU runs a sub-dataset this size: the packaged small LLM is not a judge,
so `rankings` uses the scorer (the shipped trained judge), `judgments` the trained judge alone (the LLM judge
needs a judge worth asking); `snippets` are skipped by config (1.6 M calls of the small model would take
about a week at 0.4 s each, and it does not judge). The shipped judge was trained on these DL years: its verdicts here
are in-sample, and no reference exists for the generated partition, so the methods are withheld by the gate;
this run measures time and memory, not quality.

Prints the run's own closing table, then per run the wall time, the time of each stage (from the run's lines)
and the peak RSS of the run process (the largest child's, getrusage).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
NEGATIVES = 15


def shared_data() -> Path:
    path = Path(os.environ.get("ARHN_SHARED_DATA", PROJECT.parent / "shared" / "data"))
    if not (path / "judged").is_dir():
        raise SystemExit(f"needs the judged TREC DL files under {path}/judged (set ARHN_SHARED_DATA)")
    return path


def generate(path: Path, queries: int, seed: int) -> tuple[int, int]:
    """The partition's BGE file; returns (pairs, distinct texts)."""
    data = shared_data() / "judged"
    base = []
    for year in ("dl19", "dl20"):
        with (data / f"trec_{year}_bm25_hardneg_human_grades.jsonl").open(encoding="utf-8") as fh:
            base += [json.loads(line) for line in fh if line.strip()]
    rng = random.Random(seed)
    texts: set[str] = set()
    pairs = 0
    with path.open("w", encoding="utf-8") as out:
        for i in range(queries):
            row = rng.choice(base)
            negatives = rng.sample(row["neg"], min(NEGATIVES, len(row["neg"])))
            texts.update([row["query"], row["pos"][0], *negatives])
            out.write(json.dumps({"query_id": f"q{i}", "query": row["query"], "pos": row["pos"][:1], "neg": negatives}))
            out.write("\n")
            pairs += 1 + len(negatives)
    return pairs, len(texts)


RUN_CONFIG = {"ops": {"snippets": {"config": {"skip": True}}}}


def run(state: Path, embeddings: Path, sources: Path, config: Path, subset: str) -> tuple[float, int, str]:
    """One `arhn run` of the partition in a fresh process: wall seconds, the process's peak RSS (KiB), stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARHN_")}
    env.update(
        ARHN_VAR_DIR=str(state),
        ARHN_SOURCES=str(sources),
        ARHN_EMBEDDINGS_DIR=str(embeddings),
        ARHN_MODELS_DIR=os.environ.get("ARHN_MODELS_DIR", str(PROJECT / "var" / "models")),
        ARHN_VLLM_CACHE=os.environ.get("ARHN_VLLM_CACHE", str(PROJECT / "var" / "vllm-cache")),
        ARHN_SETTINGS_FILE=str(state / "none.env"),
        ARHN_PROGRESS_SECONDS="60",
    )
    cmd = [str(Path(sys.executable).parent / "arhn"), "run", "--subset", subset, "--no-train", "--config", str(config)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=PROJECT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"arhn run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    # RUSAGE_CHILDREN's maxrss is the largest child's so far: a later run smaller than an earlier one shows
    # the earlier one's figure, so each run's own figure is only known when it is the larger
    return seconds, peak if peak > before else -before, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--folder", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument(
        "--runs", default="cold,warm", help="which runs: cold,warm (default) or warm (the folder's vectors kept)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="arhn-at-size-") as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        subset = "at_size"
        source = folder / f"{subset}.jsonl"
        t0 = time.perf_counter()
        pairs, distinct = generate(source, args.queries, args.seed)
        print(
            f"generated {source.name}: {args.queries:,} queries, {pairs:,} pairs, {distinct:,} distinct texts, "
            f"{source.stat().st_size / 2**20:,.0f} MiB ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        sources = folder / "sources.yaml"
        sources.write_text(yaml.safe_dump({"sources": {subset: {"format": "bge", "path": str(source)}}}))
        config = folder / "run.yaml"
        config.write_text(yaml.safe_dump(RUN_CONFIG))
        embeddings = folder / "embeddings"
        results = {}
        labels = args.runs.split(",")
        if labels[0] == "warm" and not any(embeddings.glob("*/*")):
            raise SystemExit(f"--runs warm needs the vectors of an earlier cold run in {embeddings}")
        for label in labels:
            state = folder / f"state-{label}"
            shutil.rmtree(state, ignore_errors=True)
            state.mkdir()
            print(f"\n--- {label}: arhn run --subset {subset} --no-train (vectors in {embeddings})", flush=True)
            seconds, peak, out = run(state, embeddings, sources, config, subset)
            print(out.rstrip())
            results[label] = (seconds, peak)
        print(
            f"\n{args.queries:,} queries x (1 + {NEGATIVES}) = {pairs:,} pairs, {distinct:,} distinct texts, seed "
            f"{args.seed}, {os.cpu_count()} cores"
        )
        print(f"{'run':6} {'wall':>9} {'pairs/s':>9} {'peak RSS':>11} {'hours for 1.5 M pairs':>22}")
        for label, (seconds, peak) in results.items():
            rss = f"{peak / 1024:,.0f} MiB" if peak > 0 else f"<= {-peak / 1024:,.0f} MiB"
            rate = pairs / seconds
            print(f"{label:6} {seconds / 60:7.1f} m {rate:9,.0f} {rss:>11} {1.5e6 / rate / 3600:22.2f}")


if __name__ == "__main__":
    main()
