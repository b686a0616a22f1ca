"""Ingest benchmark: raw_triplets' ingest against DuckDB's own read_json of the same file, at two sizes.

Generates BGE-format files (Q queries x 1 positive + 15 negatives, 40-120-word passages drawn from a
shared pool as mined negatives are), then, each in a fresh process: the columnar ingest (the default), the
line-by-line ingest (the reference path), both with every rule (validate, hash, fold, normalize into
queries/passages/candidates, quarantine), and the baseline `CREATE TABLE AS SELECT * FROM read_json(...)`
(no validation, no normalization). Prints pairs/s, peak RSS, and the ratios.

    .venv/bin/python bench/ingest.py                    # 10,000 and 100,000 queries (1.6 M pairs)
    .venv/bin/python bench/ingest.py --queries 2000     # quick: 2,000 and 20,000
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "river mountain protein market inflation vaccine gene climate bond tax enzyme delta glacier fund cell "
    "policy season patient loan price ocean desert index species storm energy trial dose rate asset lake"
).split()


def generate(path: Path, queries: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    pool = [" ".join(rng.choices(WORDS, k=rng.randint(40, 120))) + f" ({i})" for i in range(max(1000, queries * 4))]
    pairs = 0
    with path.open("w") as fh:
        for q in range(queries):
            row = {
                "query": f"question {q} about " + " ".join(rng.choices(WORDS, k=6)),
                "pos": [pool[rng.randrange(len(pool))]],
                "neg": rng.sample(pool, 15),
                "prompt": "Represent this sentence for searching relevant passages: ",
            }
            if row["pos"][0] in row["neg"]:
                row["neg"].remove(row["pos"][0])
            pairs += 1 + len(row["neg"])
            fh.write(json.dumps(row) + "\n")
    return pairs


def _child(kind: str, path: str, db: str) -> None:
    import duckdb

    conn = duckdb.connect(db)
    t0 = time.perf_counter()
    if kind in ("columnar", "per_line"):
        from arhn_pipeline.raw_triplets.ingest import ingest
        from arhn_pipeline.schema import create_schema
        from arhn_pipeline.sources.registry import SourceEntry

        create_schema(conn)
        t0 = time.perf_counter()
        stats = ingest(conn, "bench", SourceEntry(name="bench", format="bge", path=Path(path)), reader=kind)
        pairs = stats.positives + stats.negatives
    else:
        conn.execute(f"CREATE TABLE raw AS SELECT * FROM read_json('{path}', format='newline_delimited')")
        pairs = conn.execute("SELECT sum(len(pos) + len(neg)) FROM raw").fetchone()[0]
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"pairs": int(pairs), "seconds": seconds, "peak_mib": peak_mib}))


def measure(kind: str, path: Path, workdir: Path) -> dict:
    db = workdir / f"{kind}-{path.stem}.duckdb"
    db.unlink(missing_ok=True)
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path), str(db)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=10_000, help="small size; the large one is 10x")
    ap.add_argument("--skip-per-line", action="store_true", help="leave out the line-by-line reference path")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {}
        kinds = ["columnar", "duckdb_read_json"] + ([] if args.skip_per_line else ["per_line"])
        for n in (args.queries, args.queries * 10):
            path = work / f"bge_{n}.jsonl"
            pairs = generate(path, n)
            size_mib = path.stat().st_size / 2**20
            runs = {kind: measure(kind, path, work) for kind in kinds}
            results[n] = runs
            base = runs["duckdb_read_json"]
            print(f"\n{n:,} queries, {pairs:,} pairs, {size_mib:,.0f} MiB file")
            for name, r in runs.items():
                print(
                    f"  {name:18} {r['pairs'] / r['seconds']:>10,.0f} pairs/s  {r['seconds']:7.1f} s  "
                    f"peak {r['peak_mib']:7.0f} MiB   speed vs read_json {base['seconds'] / r['seconds']:.2f}x"
                )
        for kind in kinds:
            if kind == "duckdb_read_json":
                continue
            small, large = results[args.queries][kind], results[args.queries * 10][kind]
            print(
                f"\n{kind} peak memory, 10x the file: {small['peak_mib']:.0f} -> {large['peak_mib']:.0f} MiB "
                f"({large['peak_mib'] / small['peak_mib']:.2f}x)"
            )


if __name__ == "__main__":
    main()
