"""Writing a partition's decisions at size: the memory and time of `replace_partition` for the rows `relabeled`
writes for a sub-dataset of 1.6 M pairs (6 methods x 1.6 M candidates = 9.6 M rows), the frame handed to DuckDB
as is (the baseline: converted to Arrow with plain strings, every text value copied) and as Arrow string views
(`store.as_arrow`, as shipped: DuckDB reads the frame's own buffers), in one run.

    .venv/bin/python bench/table_write.py                    # 100,000 queries x 16 candidates x 6 methods
    .venv/bin/python bench/table_write.py --queries 10000

The rows are generated in the decisions table's own columns and shaped as the pipeline's: per method the same
candidates, the method's gate reason (about 120 characters) on each of its rows, the models and prompt versions
of the evidence, a ranking call id per query and a snippet call id per pair (64 hex characters each). Each way
runs in a fresh process writing a new DuckDB file; its peak RSS is counted from the start of the write (the
frame itself, built before, is printed apart), and both files' contents are checked equal (a hash of every
column of every row).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

METHODS = ["arhn:F", "arhn:R", "arhn:R+F", "rlhn:remove", "rlhn:hn_remove", "rlhn:rlhn"]
SUBSET = "msmarco_passage.shard0of10"


def status(field: str) -> float:
    """A /proc/self/status figure in MiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def decisions(queries: int):
    """9.6 M decision rows for 100,000 queries, in the table's declared columns."""
    import polars as pl

    from arhn_pipeline.schema import frame_schema

    declared = frame_schema("decisions")
    i = pl.col("_i")
    pairs = pl.DataFrame({"_i": range(queries * 16)}).with_columns(
        query_id=pl.format("q{}", i // 16),
        passage_id=pl.format("passage-{}", i * 7919 % 3_000_000),
        role=pl.when(i % 16 == 0).then(pl.lit("positive")).otherwise(pl.lit("negative")),
        rank=(i % 16).cast(pl.Int32),
        positive_rank=pl.lit(0, pl.Int32),
        snippet_call_id=i.hash(1).cast(pl.String).str.pad_start(64, "a"),
        rank_call_ids=pl.concat_list((i // 16).hash(2).cast(pl.String).str.pad_start(64, "b")),
    )
    gates = pl.DataFrame(
        {
            "method": METHODS,
            "gate": [
                f"withheld: kappa 0.{k}38 (95% interval 0.170 to 0.522) straddles 0.2, on 147 labelled negatives of "
                "sample_fin, sample_geo"
                for k in range(len(METHODS))
            ],
        }
    )
    rows = (
        pl.concat([pairs.with_columns(method=pl.lit(m)) for m in METHODS])
        .join(gates, on="method", how="left", maintain_order="left")
        .with_columns(
            subset=pl.lit(SUBSET),
            action=pl.lit("keep"),
            rule=pl.lit("no_answer_snippet"),
            snippet_status=pl.lit("not_asked"),
            prompt_versions=pl.lit("snippets=-,rankings=4c4f9b0a1c2d3e4f,rules=arhn-rules-2"),
            model=pl.lit("judge:dl19_dl20@ec660977dfc8 | HuggingFaceTB/SmolLM2-135M-Instruct"),
            judge=pl.lit("0123456789ab"),
            proposed_action=pl.lit("keep"),
            proposed_rule=pl.lit("no_answer_snippet"),
        )
    )
    missing = [pl.lit(None, dtype).alias(c) for c, dtype in declared.items() if c not in rows.columns]
    return rows.with_columns(missing).select([pl.col(c).cast(dtype) for c, dtype in declared.items()])


def one_way(way: str, queries: int, folder: Path) -> dict:
    """In this process: build the rows, write them one way, return the figures."""
    import duckdb

    from arhn_pipeline import store
    from arhn_pipeline.schema import create_schema

    frame = decisions(queries)
    built = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
    conn = duckdb.connect(str(folder / f"{way}.duckdb"))
    create_schema(conn)
    if way == "as is":  # the baseline: what replace_partition registered before
        original = store.as_arrow
        store.as_arrow = lambda f: f
    t0 = time.perf_counter()
    store.replace_partition(conn, "decisions", SUBSET, frame, methods=METHODS)
    seconds = time.perf_counter() - t0
    if way == "as is":
        store.as_arrow = original
    cols = ", ".join(r[0] for r in conn.execute("DESCRIBE decisions").fetchall())
    rows, digest = conn.execute(f"SELECT count(*), sum(hash({cols})::HUGEINT)::VARCHAR FROM decisions").fetchone()
    return {
        "way": way,
        "rows": rows,
        "frame_mib": frame.estimated_size() / 2**20,
        "rss_before_mib": built,
        "peak_mib": status("VmHWM"),
        "seconds": seconds,
        "digest": digest,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--way", help=argparse.SUPPRESS)  # the child's
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.way:
        print(json.dumps(one_way(args.way, args.queries, Path(args.folder))))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="arhn-table-write-") as tmp:
        for way in ("as is", "string views"):
            out = subprocess.run(
                [sys.executable, __file__, "--queries", str(args.queries), "--way", way, "--folder", tmp],
                capture_output=True,
                text=True,
                check=True,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{way}: written", file=sys.stderr, flush=True)
    base, views = results
    assert base["digest"] == views["digest"] and base["rows"] == views["rows"], "the two ways wrote different rows"
    print(
        f"\ndecisions of {args.queries:,} queries x 16 candidates x {len(METHODS)} methods = {base['rows']:,} rows; "
        f"the frame {base['frame_mib']:,.0f} MiB (estimated), the process {base['rss_before_mib']:,.0f} MiB before "
        f"writing; {os.cpu_count()} cores; both files hold the same rows"
    )
    print(f"{'frame handed to DuckDB':24} {'write':>8} {'peak RSS':>10} {'above the frame':>16}")
    for r in results:
        above = r["peak_mib"] - r["rss_before_mib"]
        print(f"{r['way']:24} {r['seconds']:7.1f}s {r['peak_mib']:8,.0f}MiB {above:13,.0f}MiB")
    print(
        f"string views / as is: time {views['seconds'] / base['seconds']:.2f}x, memory above the frame "
        f"{(views['peak_mib'] - views['rss_before_mib']) / (base['peak_mib'] - base['rss_before_mib']):.2f}x"
    )


if __name__ == "__main__":
    main()
