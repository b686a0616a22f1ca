"""Scale-out benchmark: the same K partitions with 1 and with 2 run processes on DuckLake, and DuckLake against
the DuckDB file on the same work.

    .venv/bin/python bench/scale.py                    # K = 4 partitions, 2 s per engine batch of 16 requests
    .venv/bin/python bench/scale.py --partitions 6 --latency 5

Each partition is a generated BGE file (16 queries x 1 positive + 15 negatives, texts distinct across
partitions); the work is the `gather_evidence` job (ingest, snippets, rankings, the cascade's verdicts) with
the scripted engine answering NO_ANSWER in batches of 16 requests, every batch taking `--latency` seconds:
a stand-in for a GPU serving one run (the LLM ranker, and the LLM judge alone in the cascade: no CPU
embedding in the way). A PostgreSQL server for the catalog is started in a temporary folder (Debian's
postgresql). Three ways, each from an empty store, each run process a fresh Python
(`arhn_pipeline_tests/helpers/run_job.py`):
  file, 1 process       the DuckDB file (the default), every partition in one process, one after another
  ducklake, 1 process   the same on DuckLake
  ducklake, 2 processes the partitions split between two processes running at once (two machines, two GPUs)
Prints wall times and two ratios: DuckLake's overhead (ducklake 1 / file 1) and the speed-up of a second
process (ducklake 1 / ducklake 2). Then the time to store one batch of answers on each backend (the write
lock is held that long on DuckLake: what bounds the commits per second of all runs together). The ratios,
not the seconds, are the figures: the seconds depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
SAMPLES = ["sample_geo", "sample_bio", "sample_fin"]


def registry(folder: Path, k: int, queries: int) -> tuple[Path, list[str]]:
    """K generated BGE files of distinct texts (so no partition finds another's answers in the call cache)."""
    sys.path.insert(0, str(PROJECT / "bench"))
    from ingest import generate

    names = [f"part{i}" for i in range(k)]
    entries = {}
    for i, name in enumerate(names):
        path = folder / f"{name}.jsonl"
        generate(path, queries, seed=100 + i)
        entries[name] = {"format": "bge", "path": str(path)}
    path = folder / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": entries}), encoding="utf-8")
    return path, names


# Every LLM stage through the scripted engine in batches of 16 (the LLM ranker; the cascade: the LLM judge
# alone), so that no CPU embedding stands in the way of what is measured: runs sharing engines' time.
RUN_CONFIG = {
    "ops": {
        "snippets": {"config": {"batch_size": 16}},
        "rankings": {"config": {"batch_size": 16, "ranker": "llm"}},
        "judgments": {"config": {"batch_size": 16, "stages": [{"name": "llm_judge", "kind": "llm"}]}},
    }
}


def timed(groups: list[list[str]], env: dict[str, str], config: Path) -> float:
    """Wall seconds until every process (one per group of partitions) has finished."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "arhn_pipeline_tests.helpers.run_job", "gather_evidence", "--config", str(config)]
            + group,
            env=env,
            cwd=PROJECT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for group in groups
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a run process failed:\n{err[-3000:]}")
    return time.perf_counter() - t0


def commit_seconds(env: dict[str, str], storage_kind: str, db: Path, size: int, repeats: int = 15) -> float:
    """Median seconds to store one batch of `size` answers (DuckDBStore.store_calls: connect, lock, write,
    commit), in this process with the run processes' environment."""
    import statistics

    from call_store import new_key, record

    from arhn_pipeline.store import DuckDBStore

    os.environ.update({k: v for k, v in env.items() if k.startswith("ARHN_DUCKLAKE")})
    store = DuckDBStore(database=str(db), storage=storage_kind)
    seconds = []
    for i in range(repeats):
        batch = [
            record(new_key(f"{storage_kind}-{size}-{i}-{j}"), "word " * 200, "answer " * 30, (245, 30), size)
            for j in range(size)
        ]
        t0 = time.perf_counter()
        store.store_calls(batch)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def _print_runs(runs: dict[str, float], args: argparse.Namespace) -> None:
    print(
        f"\n{args.partitions} partitions x gather_evidence ({args.queries * 16} pairs each, batches of 16; scripted "
        f"engine, {args.latency:g} s per batch), {os.cpu_count()} cores"
    )
    for label, seconds in runs.items():
        print(f"  {label:24} {seconds:7.1f} s")
    overhead = runs["ducklake, 1 process"] / runs["file, 1 process"]
    speedup = runs["ducklake, 1 process"] / runs["ducklake, 2 processes"]
    print(f"\nDuckLake overhead vs the DuckDB file (same work, 1 process): {overhead:.2f}x the time")
    print(f"speed-up of 2 processes over 1 on DuckLake: {speedup:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--latency", type=float, default=2.0, help="seconds per engine batch (a GPU's stand-in)")
    ap.add_argument("--queries", type=int, default=16, help="queries per partition (16 candidates each)")
    args = ap.parse_args()
    sys.path.insert(0, str(PROJECT))
    from arhn_pipeline_tests.helpers.postgres import PostgresServer

    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as pg:
        work = Path(tmp)
        sources, names = registry(work, args.partitions, args.queries)
        config = work / "run_config.yaml"
        config.write_text(yaml.safe_dump(RUN_CONFIG), encoding="utf-8")
        base = dict(
            os.environ,
            ARHN_SOURCES=str(sources),
            ARHN_ENGINE="scripted",
            ARHN_SCRIPT="slow_no_answer",
            ARHN_SCRIPT_LATENCY=str(args.latency),
        )

        def lake(name: str) -> dict[str, str]:
            return dict(
                base,
                ARHN_STORAGE="ducklake",
                ARHN_DUCKLAKE_CATALOG=pg.create(name),
                ARHN_DUCKLAKE_DATA=str(work / f"{name}_data"),
            )

        half = (len(names) + 1) // 2
        runs = {
            "file, 1 process": timed([names], dict(base, ARHN_DB=str(work / "one.duckdb")), config),
            "ducklake, 1 process": timed([names], lake("one"), config),
            "ducklake, 2 processes": timed([names[:half], names[half:]], lake("two"), config),
        }
        _print_runs(runs, args)
        commit_env = {"duckdb": base, "ducklake": lake("commits")}
        commits = {
            (kind, size): commit_seconds(commit_env[kind], kind, work / "c.duckdb", size)
            for kind in ("duckdb", "ducklake")
            for size in (64, 512)
        }
    print("\nstoring one batch of LLM answers (store_calls: connect, lock, write, commit), median of 15:")
    for (kind, size), seconds in commits.items():
        print(f"  {kind:9} {size:4} answers  {seconds * 1000:6.0f} ms")
    ratio = commits[("ducklake", 512)] / commits[("duckdb", 512)]
    print(f"DuckLake vs the DuckDB file, batches of 512: {ratio:.1f}x the time")


if __name__ == "__main__":
    main()
