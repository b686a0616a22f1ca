"""Wide queries: does a query with thousands of negatives cost time linear in its candidates? The same number of
(query, passage) pairs in partitions of 15 / 150 / 1,500 / 5,000 negatives per query, through `judgments` (the
LLM judge), `rankings` (the LLM ranker: sliding windows) and `relabeled`, with the scripted engine (answers at
once: what is measured is the pipeline's own work per pair, not a model's).

    .venv/bin/python bench/wide_queries.py                  # 15,000 pairs a partition
    .venv/bin/python bench/wide_queries.py --pairs 30000

Prints seconds per 1,000 pairs of each stage at each width, the ratio to the narrowest (goal: within 1.5x) and
the peak RSS of the process (one process runs all widths, narrowest first: the peak can only grow). The ranker
also per 1,000 window slots (candidates shown to the LLM, summed over requests): with windows of 20 and a stride
of 10, a query wider than one window shows each candidate about twice. That is the sliding-window method's
own work (RankGPT's), which a served model pays in prompt tokens; the pipeline's work is linear in the slots.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WIDTHS = [15, 150, 1500, 5000]


def write_partition(path: Path, width: int, pairs: int) -> None:
    queries = max(1, round(pairs / (width + 1)))  # the same number of pairs at every width, as near as whole queries go
    with path.open("w") as fh:
        for q in range(queries):
            row = {
                "query_id": f"w{width}-q{q}",
                "query": f"question {q} of width {width}: what is item {q}?",
                "pos": [f"Item {q} of width {width} is the answer to question {q}."],
                "neg": [f"Passage {i} for question {q} (width {width}) says something else." for i in range(width)],
            }
            fh.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=15_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="arhn-bench-wide-") as tmp:
        folder = Path(tmp)
        sources = {}
        for width in WIDTHS:
            write_partition(folder / f"w{width}.jsonl", width, args.pairs)
            sources[f"w{width}"] = {"format": "bge", "path": str(folder / f"w{width}.jsonl")}
        (folder / "sources.yaml").write_text(json.dumps({"sources": sources}))
        os.environ.update(
            ARHN_SOURCES=str(folder / "sources.yaml"),
            ARHN_DB=str(folder / "bench.duckdb"),
            ARHN_VAR_DIR=str(folder / "var"),
            ARHN_PROGRESS_SECONDS="3600",
        )
        os.environ.setdefault("ARHN_MODELS_DIR", str(ROOT / "var" / "models"))
        import dagster as dg

        from arhn_pipeline.definitions import build_defs
        from arhn_pipeline.engine.scripted import ScriptedEngine
        from arhn_pipeline.rankings.core import STRIDE, WINDOW_SIZE, windows

        defs = build_defs(llm=ScriptedEngine(model="constant_no"))
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("subset", list(sources))
        by_name = {a.key.to_user_string(): a for a in defs.assets}
        ops = {
            "rankings": {"config": {"ranker": "llm"}},
            "judgments": {"config": {"stages": [{"name": "llm_judge", "kind": "llm"}]}},
            "snippets": {"config": {"skip": True}},
        }
        rows = []
        for width in WIDTHS:
            key = f"w{width}"
            dg.materialize([by_name["raw_triplets"]], partition_key=key, instance=instance, resources=defs.resources)
            figures = {}
            for stage in ("snippets", "judgments", "rankings", "relabeled"):
                config = {"ops": {k: v for k, v in ops.items() if k == stage}}
                t0 = time.perf_counter()
                result = dg.materialize(
                    [by_name[stage]],
                    partition_key=key,
                    instance=instance,
                    resources=defs.resources,
                    run_config=config,
                )
                assert result.success, stage
                figures[stage] = time.perf_counter() - t0
            queries = max(1, round(args.pairs / (width + 1)))
            pairs = queries * (width + 1)
            slots = queries * sum(end - start for start, end in windows(width + 1, WINDOW_SIZE, STRIDE))
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append((width, pairs, figures, peak, slots))
            print(
                f"width {width}: {pairs} pairs, " + ", ".join(f"{s} {t:.1f} s" for s, t in figures.items()), flush=True
            )
    base = rows[0]
    print(
        f"\nseconds per 1,000 pairs (ratio to {base[0]} negatives a query); scripted engine, {args.pairs} pairs a width"
    )
    print("| negatives a query | pairs | judgments | rankings | relabeled | window slots | per 1k slots | peak |")
    print("|---|---|---|---|---|---|---|---|")
    for width, pairs, figures, peak, slots in rows:
        cells = []
        for stage in ("judgments", "rankings", "relabeled"):
            per = figures[stage] / pairs * 1000
            ref = base[2][stage] / base[1] * 1000
            cells.append(f"{per:.2f} ({per / ref:.2f}x)")
        per_slot, ref_slot = figures["rankings"] / slots * 1000, base[2]["rankings"] / base[4] * 1000
        cells += [f"{slots:,}", f"{per_slot:.2f} ({per_slot / ref_slot:.2f}x)"]
        print(f"| {width} | {pairs} | {' | '.join(cells)} | {peak:.0f} MiB |")


if __name__ == "__main__":
    main()
