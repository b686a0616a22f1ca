"""Does preloading tcmalloc help vLLM on CPU, and what does the dtype cost? Same requests, fresh process each.

    .venv/bin/python bench/engine_alloc.py                  # 64 snippet requests of sample_geo, 2 repeats
    .venv/bin/python bench/engine_alloc.py --requests 128 --repeats 3 --dtypes float32,bfloat16

For each dtype, with and without `LD_PRELOAD` of Debian's libtcmalloc_minimal (apt: libtcmalloc-minimal4),
a new process starts the packaged SmolLM2 with the project's engine settings and answers the same snippet
requests in one batch: engine start-up seconds and generation seconds, the median over the repeats. The
baseline is the first dtype without tcmalloc. Prints the CPU flags that decide dtype `auto`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from arhn_pipeline.cli import TCMALLOC  # the library `arhn run` preloads

PROJECT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
from arhn_pipeline.engine.vllm_engine import VLLMEngine
from arhn_pipeline.raw_triplets.ingest import ingest
from arhn_pipeline.schema import create_schema
from arhn_pipeline.snippets import core
from arhn_pipeline.sources.registry import load_registry
from arhn_pipeline.store import load_pairs
import duckdb
n, dtype = int(sys.argv[1]), sys.argv[2]
conn = duckdb.connect(":memory:")
create_schema(conn)
ingest(conn, "sample_geo", load_registry()["sample_geo"])
pairs = load_pairs(conn, "sample_geo").head(n)
engine = VLLMEngine(dtype=dtype)
requests, _ = core.snippet_requests(pairs, engine, core.PASSAGE_MAX_TOKENS, core.SNIPPET_MAX_TOKENS)
t0 = time.perf_counter()
engine.llm()
start = time.perf_counter() - t0
t0 = time.perf_counter()
results = engine.generate(requests)
generate = time.perf_counter() - t0
print("RESULT " + json.dumps({"start": start, "generate": generate, "requests": len(results),
      "completion_tokens": sum(r.completion_tokens for r in results), "dtype": engine._dtype[0]}))
engine.shutdown()
"""


def run(n: int, dtype: str, preload: bool) -> dict:
    env = dict(os.environ)
    if preload:
        env["LD_PRELOAD"] = str(TCMALLOC)
    else:
        env.pop("LD_PRELOAD", None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), dtype], cwd=PROJECT, env=env, capture_output=True, text=True, check=False
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"child failed ({dtype}, tcmalloc={preload}):\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    from arhn_pipeline.engine.vllm_engine import BF16_CPU_FLAGS, cpu_flags

    flags = cpu_flags()
    shown = [f for f in ("avx2", "avx512f", *BF16_CPU_FLAGS) if f in flags]
    found = TCMALLOC if TCMALLOC.exists() else "absent"
    print(f"CPU: {os.cpu_count()} cores, flags {', '.join(shown)}; tcmalloc: {found}")
    rows = []
    for dtype in args.dtypes.split(","):
        for preload in (False, True):
            if preload and not TCMALLOC.exists():
                continue
            runs = [run(args.requests, dtype, preload) for _ in range(args.repeats)]
            rows.append(
                (
                    dtype,
                    preload,
                    statistics.median(r["start"] for r in runs),
                    statistics.median(r["generate"] for r in runs),
                    [round(r["generate"], 1) for r in runs],
                )
            )
    base = rows[0][3]
    print(f"\n{args.requests} snippet requests of sample_geo, SmolLM2, median of {args.repeats} fresh processes")
    print("| dtype | tcmalloc | start-up s | generate s | runs | vs first |")
    print("|---|---|---|---|---|---|")
    for dtype, preload, start, gen, each in rows:
        print(f"| {dtype} | {'yes' if preload else 'no'} | {start:.1f} | {gen:.1f} | {each} | {base / gen:.2f}x |")


if __name__ == "__main__":
    main()
