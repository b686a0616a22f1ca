"""The default run a new user starts after set-up (`arhn run`: the embedded samples, CPU vLLM, SmolLM2), from a
cold state, then the same command again with everything cached (the baseline: what is not LLM work).

    .venv/bin/python bench/first_run.py            # both runs; --cold-only for one

A fresh runtime folder (DuckDB file, Dagster home, vLLM cache) in a temporary directory; the prepared models
are reused (they are set-up, not the run). Prints the CPU's flags and the dtype `auto` chose, engine
start-ups, wall time, and the seconds of every step as Dagster reports them, summed per asset.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
STEP = re.compile(r'Finished execution of step "([^"]+)" in ([0-9hms.]+)')
STARTED = re.compile(r"vLLM engine started in ([0-9.]+) s")


def seconds(text: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"([0-9.]+)(h|ms|m|s)", text):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


def run(env: dict[str, str]) -> tuple[float, dict[str, float], list[float], str]:
    t0 = time.perf_counter()
    out = subprocess.run([PROJECT / ".venv/bin/arhn", "run"], cwd=PROJECT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"arhn run failed:\n{out.stderr[-4000:]}")
    steps: dict[str, float] = defaultdict(float)
    for name, took in STEP.findall(out.stderr):
        steps[name] += seconds(took)
    return wall, dict(steps), [float(s) for s in STARTED.findall(out.stderr)], out.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold-only", action="store_true")
    args = parser.parse_args()
    from arhn_pipeline import settings
    from arhn_pipeline.engine.vllm_engine import BF16_CPU_FLAGS, choose_dtype, cpu_flags

    flags = cpu_flags()
    dtype, why = choose_dtype(os.environ.get("ARHN_DTYPE", "auto"), False, flags)
    shown = [f for f in ("avx2", "avx512f", *BF16_CPU_FLAGS) if f in flags]
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
    )
    print(f"machine: {model}, {os.cpu_count()} cores, flags {', '.join(shown) or '-'}")
    from arhn_pipeline.cli import TCMALLOC

    preload = "yes" if TCMALLOC.exists() else "no (not installed)"
    print(f"dtype {os.environ.get('ARHN_DTYPE', 'auto')} -> {dtype} ({why}); tcmalloc preloaded by arhn run: {preload}")
    with tempfile.TemporaryDirectory(prefix="arhn-first-run-") as tmp:
        env = dict(os.environ, ARHN_VAR_DIR=tmp, ARHN_MODELS_DIR=str(settings.models_dir()))
        for key in ("ARHN_DB", "DAGSTER_HOME", "ARHN_VLLM_CACHE", "ARHN_ENGINE", "ARHN_MODEL", "ARHN_SOURCES"):
            env.pop(key, None)
        results = [("cold", *run(env))]
        if not args.cold_only:
            results.append(("cached", *run(env)))
    names = sorted({n for _, _, steps, _, _ in results for n in steps}, key=lambda n: -results[0][2].get(n, 0))
    print("\n| step | " + " | ".join(f"{label} s" for label, *_ in results) + " |")
    print("|---|" + "---|" * len(results))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{steps.get(name, 0):.1f}" for _, _, steps, _, _ in results) + " |")
    print("| **wall time** | " + " | ".join(f"**{wall:.0f}**" for _, wall, *_ in results) + " |")
    for label, wall, _, starts, _ in results:
        print(f"{label}: {wall / 60:.1f} min wall, {len(starts)} engine start-up(s) {[round(s, 1) for s in starts]}")


if __name__ == "__main__":
    sys.exit(main())
