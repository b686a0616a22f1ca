"""Ingest benchmark: raw_triplets' ingest against DuckDB's own read_json of the same file, at two sizes.

Generates BGE-format files (Q queries x 1 positive + 15 negatives, 40-120-word passages drawn from a
shared pool as mined negatives are), then, each in a fresh process: the columnar ingest (the default), the
line-by-line ingest (the reference path), both with every rule (validate, hash, fold, normalize into
queries/passages/candidates, quarantine), and the baseline `CREATE TABLE AS SELECT * FROM read_json(...)`
(no validation, no normalization). Each way's time runs until its rows are in the database file (a CHECKPOINT
after the commit); the time to the commit alone is printed too. Each way runs --repeat times (default 3,
alternating); the run of median time is shown, with every run's seconds. Prints pairs/s, peak RSS, the ratios.

    .venv/bin/python bench/ingest.py                    # 10,000 and 100,000 queries (1.6 M pairs)
    .venv/bin/python bench/ingest.py --queries 2000     # quick: 2,000 and 20,000
    .venv/bin/python bench/ingest.py --profile          # also: where the columnar ingest's time goes (large file)
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
    if kind == "profile":
        _profile(conn, path)
        return
    if kind in ("columnar", "per_line"):
        from arhn_pipeline.raw_triplets.ingest import ingest
        from arhn_pipeline.schema import create_schema
        from arhn_pipeline.sources.registry import SourceEntry

        create_schema(conn)
        t0 = time.perf_counter()
        entry = SourceEntry(name="bench", format="bge", path=Path(path))
        stats = ingest(conn, "bench", entry, reader=kind, checkpoint=False)
        pairs = stats.positives + stats.negatives
    else:
        conn.execute(f"CREATE TABLE raw AS SELECT * FROM read_json('{path}', format='newline_delimited')")
        pairs = conn.execute("SELECT sum(len(pos) + len(neg)) FROM raw").fetchone()[0]
    committed = time.perf_counter() - t0
    conn.execute("CHECKPOINT")  # the rows in the database file, not only in its write-ahead log
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"pairs": int(pairs), "seconds": seconds, "committed": committed, "peak_mib": peak_mib}))


class _TimedConnection:
    """A DuckDB connection that adds up the seconds of each SQL statement, by the statement's first words; its
    cursors (the ingest's parsing workers, in threads) add theirs, labelled as the workers'."""

    def __init__(self, conn, seconds=None, prefix=""):
        self.conn, self.prefix = conn, prefix
        self.seconds = {} if seconds is None else seconds

    def execute(self, sql, *args):
        t0 = time.perf_counter()
        result = self.conn.execute(sql, *args)
        words = " ".join(sql.split()[:6])
        label = self.prefix + (words.split(" AS ")[0] if "TEMP TABLE" in words else words)
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0  # one += per GIL hold
        return result

    def cursor(self):
        return _TimedConnection(self.conn.cursor(), self.seconds, "(parsing worker) ")

    def __getattr__(self, name):
        return getattr(self.conn, name)


def _profile(conn, path: str) -> None:
    """The columnar ingest once more, with every SQL statement timed; the rest is Python (reading the file in
    chunks, finding lines, the fallback path, bookkeeping)."""
    from arhn_pipeline.raw_triplets.ingest import ingest
    from arhn_pipeline.schema import create_schema
    from arhn_pipeline.sources import readers
    from arhn_pipeline.sources.registry import SourceEntry

    create_schema(conn)
    timed_conn = _TimedConnection(conn)
    reading, waiting = [0.0], [0.0]

    def timed(it, into):  # the seconds spent in next() of `it`, added into `into`
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                into[0] += time.perf_counter() - t0
                return
            into[0] += time.perf_counter() - t0
            yield item

    import arhn_pipeline.raw_triplets.ingest as ingest_module

    parse_chunk, parsing = ingest_module.columnar.parse_chunk, [0.0]

    def timed_parse(*a, **k):
        t0 = time.perf_counter()
        try:
            return parse_chunk(*a, **k)
        finally:
            parsing[0] += time.perf_counter() - t0  # one += per GIL hold

    ingest_module.columnar.parse_chunk = timed_parse
    chunks, parsed = readers.iter_line_chunks, ingest_module._parsed_chunks
    ingest_module.iter_line_chunks = lambda *a, **k: timed(chunks(*a, **k), reading)  # the reading thread
    ingest_module._parsed_chunks = lambda *a, **k: timed(parsed(*a, **k), waiting)  # the writing thread
    t0 = time.perf_counter()
    ingest(timed_conn, "bench", SourceEntry(name="bench", format="bge", path=Path(path)), reader="columnar")
    total = time.perf_counter() - t0
    worker = {k: v for k, v in timed_conn.seconds.items() if k.startswith("(parsing worker)")}
    main = {k: v for k, v in timed_conn.seconds.items() if k not in worker}
    sql = sum(main.values())
    rows = [("waiting for the next parsed chunk", waiting[0])]
    rows += _top(main, "SQL")
    rows += [("the rest of Python (fallback lines, repeats, bookkeeping)", total - sql - waiting[0])]
    print(f"\nwhere the columnar ingest's {total:.1f} s go ({Path(path).name}); the writing thread:")
    for label, seconds in rows:
        print(f"  {seconds:7.2f} s  {seconds / total:6.1%}  {label}")
    print(f"the reading thread: {reading[0]:.2f} s reading the file into chunks (lines found, UTF-8 checked)")
    busy = parsing[0]
    print(f"the parsing workers ({ingest_module.PARSE_WORKERS} threads, {busy:.1f} s of parsing in all):")
    rest = busy - sum(worker.values())
    for label, seconds in _top(worker, "SQL", 6) + [("the rest: Polars (hashing, byte checks), Arrow", rest)]:
        print(f"  {seconds:7.2f} s  {seconds / busy:6.1%}  {label}")


def _top(seconds: dict[str, float], kind: str, n: int = 10) -> list[tuple[str, float]]:
    parts = sorted(seconds.items(), key=lambda kv: -kv[1])
    rows = [(f"{kind}: {label}", s) for label, s in parts[:n]]
    return rows + [(f"{kind}: {len(parts) - n} other statements", sum(s for _, s in parts[n:]))]


def measure(kind: str, path: Path, workdir: Path) -> dict:
    db = workdir / f"{kind}-{path.stem}.duckdb"
    db.unlink(missing_ok=True)
    Path(f"{db}.wal").unlink(missing_ok=True)
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path), str(db)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    """The run of median time (its peak memory with it), with every run's seconds for the spread."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[len(ordered) // 2], "all_seconds": [r["seconds"] for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=10_000, help="small size; the large one is 10x")
    ap.add_argument("--skip-per-line", action="store_true", help="leave out the line-by-line reference path")
    ap.add_argument("--profile", action="store_true", help="then time each part of the columnar ingest")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each way, alternating; the median is shown")
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
            every: dict[str, list[dict]] = {kind: [] for kind in kinds}
            for _ in range(args.repeat):  # alternating, so a slow spell of the machine touches every way alike
                for kind in kinds:
                    every[kind].append(measure(kind, path, work))
            runs = {kind: median_run(r) for kind, r in every.items()}
            results[n] = runs
            base = runs["duckdb_read_json"]
            print(f"\n{n:,} queries, {pairs:,} pairs, {size_mib:,.0f} MiB file (median of {args.repeat} runs)")
            for name, r in runs.items():
                spread = ", ".join(f"{s:.1f}" for s in r["all_seconds"])
                print(
                    f"  {name:18} {r['pairs'] / r['seconds']:>10,.0f} pairs/s  {r['seconds']:7.1f} s  "
                    f"peak {r['peak_mib']:7.0f} MiB   speed vs read_json {base['seconds'] / r['seconds']:.2f}x   "
                    f"(to the commit, before the checkpoint: {r['committed']:.1f} s, "
                    f"{base['committed'] / r['committed']:.2f}x; runs: {spread} s)"
                )
        for kind in kinds:
            if kind == "duckdb_read_json":
                continue
            small, large = results[args.queries][kind], results[args.queries * 10][kind]
            print(
                f"\n{kind} peak memory, 10x the file: {small['peak_mib']:.0f} -> {large['peak_mib']:.0f} MiB "
                f"({large['peak_mib'] / small['peak_mib']:.2f}x)"
            )
        if args.profile:
            large_path = work / f"bge_{args.queries * 10}.jsonl"
            db = work / "profile.duckdb"
            subprocess.run([sys.executable, __file__, "--child", "profile", str(large_path), str(db)], check=True)


if __name__ == "__main__":
    main()
