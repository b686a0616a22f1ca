"""A served or hosted judge as users run one: the engine (not the local GPU) decides which LLM stages run; a
window of requests in flight across batch boundaries; rate limits and several servers, one of which dies; the
Batch API with batches that finish, fail some lines, expire half done or are cancelled, and a killed run that
resumes by its recorded batches. Every server is the tests' own (helpers/fake_provider.py) on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections import Counter

import duckdb
import pytest

from arhn_pipeline.engine import batch_api
from arhn_pipeline.engine.base import LLMRequest, Sampling
from arhn_pipeline.engine.cache import EngineCallsFailed, cached_generate
from arhn_pipeline.engine.openai_engine import OpenAIEngine, RateLimiter, reset_seconds
from arhn_pipeline.engine.resources import engine_from_env
from arhn_pipeline.engine.scripted import ScriptedEngine
from arhn_pipeline_tests.helpers.fake_provider import Behaviour, FakeProvider


def requests(n: int, tag: str = "q") -> list[LLMRequest]:
    return [
        LLMRequest(
            messages=(("user", f"{tag} number {i}"),),
            template="judgments/test.prompt.yaml",
            template_version="t1",
            sampling=Sampling(max_tokens=8),
        )
        for i in range(n)
    ]


def engine(url: str, **kw) -> OpenAIEngine:
    return OpenAIEngine(model="m", base_url=url, structured="none", backoff_seconds=0.05, **kw)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there once the socket is closed


# --- which stages run: the engine's rule ---


def test_the_engine_not_the_local_gpu_decides_whether_it_is_asked_to_judge(monkeypatch):
    for name in ("ARHN_ENGINE", "ARHN_LLM_JUDGE", "ARHN_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ARHN_ENGINE", "openai")
    ask, why = engine_from_env().judge_rule()
    assert ask and "hosted" in why  # on this CPU-only machine
    monkeypatch.setenv("ARHN_LLM_JUDGE", "0")
    assert engine_from_env().judge_rule() == (False, "configured: judge=false")
    monkeypatch.setenv("ARHN_ENGINE", "vllm")
    monkeypatch.delenv("ARHN_LLM_JUDGE")
    ask, why = engine_from_env().judge_rule()
    assert not ask and "SmolLM2" in why
    monkeypatch.setenv("ARHN_LLM_JUDGE", "maybe")
    with pytest.raises(ValueError, match="ARHN_LLM_JUDGE"):
        engine_from_env()


def test_the_default_config_runs_the_llm_ranker_and_judge_when_the_engine_is_a_judge(tmp_path, monkeypatch):
    """No run config: with an engine that is a judge, `rankings` ranks with the LLM and the cascade's LLM stage
    judges what the trained judge flagged; with one that is not, neither asks it. The metadata names the rule."""
    import dagster as dg

    from arhn_pipeline.definitions import build_defs
    from arhn_pipeline_tests.conftest import write_jsonl, write_registry

    rows = [
        {"query_id": f"q{i}", "query": f"what do {x} eat", "pos": [f"{x} eat grass and leaves."],
         "neg": [f"{x} eat grass and hay.", "Rain falls in spring.", f"{x} are mammals."]}
        for i, x in enumerate(["cows", "goats", "deer", "sheep"])
    ]  # fmt: skip
    source = write_jsonl(tmp_path / "toy.jsonl", rows)
    monkeypatch.setenv(
        "ARHN_SOURCES", str(write_registry(tmp_path / "s.yaml", {"toy": {"format": "bge", "path": str(source)}}))
    )
    for judge in (True, False):
        llm = ScriptedEngine(model="constant_no", judge=judge)
        db_file = tmp_path / f"judge-{judge}.duckdb"
        monkeypatch.setenv("ARHN_DB", str(db_file))
        defs = build_defs(llm=llm)
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("subset", ["toy"])
        chosen = [a for a in defs.assets if a.key.to_user_string() in ("raw_triplets", "rankings", "judgments")]
        result = dg.materialize(chosen, partition_key="toy", instance=instance, resources=defs.resources)
        assert result.success
        ranked = result.asset_materializations_for_node("rankings")[0].metadata
        judged = result.asset_materializations_for_node("judgments")[0].metadata
        assert ranked["ranker"].value == ("llm" if judge else "scorer")
        assert ranked["ranker_chosen_by"].value.startswith(f"auto -> {'llm' if judge else 'scorer'}: configured")
        assert judged["llm_judge_rule"].value.startswith("asked" if judge else "skipped")
        assert judged["stages_skipped"].value == ("none" if judge else "llm_judge")
        with duckdb.connect(str(db_file), read_only=True) as conn:
            stages = {s for (s,) in conn.execute("SELECT DISTINCT stage FROM verdicts").fetchall()}
            judged_calls = conn.execute("SELECT count(*) FROM llm_calls WHERE template LIKE 'judgments/%'").fetchone()
            ranked_calls = conn.execute("SELECT count(*) FROM llm_calls WHERE template LIKE 'rankings/%'").fetchone()
        assert ("llm_judge" in stages) == judge
        assert (judged_calls[0] > 0) == judge and (ranked_calls[0] > 0) == judge


# --- keeping a server busy ---


def test_a_window_of_requests_stays_in_flight_across_batch_boundaries(db, store):
    with FakeProvider(Behaviour(latency=0.2)) as server:
        calls, stats = cached_generate(store, engine(server.url, concurrency=8), requests(40), batch_size=4)
    assert server.record.max_in_flight == 8  # batch by batch it would be 4
    assert stats.cache_misses == 40 and len(calls) == 40
    assert db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == 40


def test_429_with_retry_after_and_an_exhausted_budget_pause_the_endpoint(db, store):
    b = Behaviour(rate_limit_first=1, retry_after="1", remaining_zero_at=3, reset="1s")
    with FakeProvider(b) as server:
        t0 = time.monotonic()
        cached_generate(store, engine(server.url, concurrency=1), requests(6), batch_size=6)
    times = [t - t0 for t, _ in server.record.chat]
    assert len(times) == 7  # one 429, six answers, nothing else retried
    assert times[1] - times[0] >= 0.95  # the retry waited for retry-after
    assert times[4] - times[3] >= 0.95  # after "remaining 0, reset 1s" the next request waited
    assert db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == 6


def test_the_client_side_limits_spread_requests_over_the_minute():
    limiter = RateLimiter(requests_per_minute=300, tokens_per_minute=0)  # 5 a second
    t0 = time.monotonic()
    for _ in range(16):
        limiter.acquire(100)
    assert time.monotonic() - t0 >= (16 - 5) / 5 - 0.1
    tokens = RateLimiter(requests_per_minute=0, tokens_per_minute=6000)  # 100 tokens a second
    t0 = time.monotonic()
    for _ in range(3):
        tokens.acquire(100)
    assert time.monotonic() - t0 >= 1.9
    assert reset_seconds("6m0s") == 360 and reset_seconds("20ms") == 0.02 and reset_seconds("1.5") == 1.5


def test_a_server_that_dies_mid_stage_beside_one_that_lives(db, store):
    with FakeProvider(Behaviour(latency=0.05, die_after=5)) as dying, FakeProvider(Behaviour(latency=0.05)) as living:
        urls = f"{dying.url}, {living.url}, {closed_port_url()}"  # and one that never answered at all
        calls, _ = cached_generate(store, engine(urls, concurrency=4), requests(60), batch_size=8)
    assert len(calls) == 60 and all(c.response.startswith("answer to") for c in calls)
    # the dying server answered until it died; every other call was carried by the living one, each once
    died, lived = dying.record.answered_texts, living.record.answered_texts
    assert dying.record.answered >= 5 and len(set(died)) == len(died) and len(set(lived)) == len(lived)
    assert set(died) | set(lived) == {f"q number {i}" for i in range(60)}
    # nothing answered was asked again, but for what the server answered as it died: a request in flight then
    # (one of its last answers) may have got no further than the server's socket, and is asked of the other
    asked_again = set(died) & set(lived)
    assert asked_again <= set(died[-dying.record.max_in_flight :]), (asked_again, died)
    assert db.execute("SELECT count(*) FROM llm_failures").fetchone()[0] == 0


def test_with_every_server_gone_the_calls_fail_and_a_rerun_asks_only_those(db, store):
    with FakeProvider(Behaviour(die_after=3)) as server:
        with pytest.raises(EngineCallsFailed, match="7 of 10"):
            cached_generate(store, engine(server.url, concurrency=1, max_retries=1), requests(10), batch_size=10)
    assert db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == 3
    with FakeProvider() as again:
        cached_generate(store, engine(again.url), requests(10), batch_size=10)
    assert again.record.answered == 7


@pytest.mark.parametrize("how", ["endless", "huge", "trickle"])
def test_a_server_that_never_stops_sending_costs_bounded_time_and_bytes(db, store, how):
    """Each attempt ends within its deadline having read at most the cap; the call is a recorded failure."""
    with FakeProvider(Behaviour(hostile=how)) as server:
        eng = engine(server.url, max_retries=1, deadline_seconds=2.0, max_response_bytes=2**20, timeout_seconds=5)
        t0 = time.monotonic()
        with pytest.raises(EngineCallsFailed, match="1 of 1"):
            cached_generate(store, eng, requests(1), batch_size=1)
        seconds = time.monotonic() - t0
        sent = server.record.bytes_sent
    assert seconds < 2 * (2.0 + 1.5) + 1  # two attempts, each within its deadline (a trickle: plus one read)
    assert sent < 2 * (2**20 + 16 * 2**20)  # what the cap read, and what the kernel's buffers took meanwhile
    error = db.execute("SELECT error FROM llm_failures").fetchone()[0]
    assert ("larger than 1,048,576 bytes" in error) if how != "trickle" else ("not complete after 2 s" in error)


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "1e9", "Wed, 21 Oct 2015 07:28:00 GMT", "soon"])
def test_a_bad_retry_after_is_clamped_never_a_crash(db, store, value):
    with FakeProvider(Behaviour(hostile=f"retry:{value}")) as server:
        t0 = time.monotonic()
        calls, _ = cached_generate(store, engine(server.url, max_wait_seconds=1.0), requests(1), batch_size=1)
    assert calls[0].response == "answer to late" and time.monotonic() - t0 < 3


def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(db, store, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-elsewhere")
    with FakeProvider(Behaviour(hostile="redirect")) as server:
        with pytest.raises(EngineCallsFailed, match="1 of 1"):
            cached_generate(store, engine(server.url, max_retries=1), requests(1), batch_size=1)
    assert (
        "redirect to 'http://127.0.0.1:9/steal' not followed"
        in db.execute("SELECT error FROM llm_failures").fetchone()[0]
    )


# --- the Batch API ---


def batch_engine(url: str, **kw) -> OpenAIEngine:
    return engine(url, mode="batch", batch_poll_seconds=0.02, **kw)


def test_batches_split_at_the_limits_and_partial_failures_go_to_llm_failures(db, store, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    batch_api.set_stage("toy", "judgments")
    with FakeProvider(Behaviour(batch_error_every=4)) as server:
        with pytest.raises(EngineCallsFailed, match="5 of 20"):
            cached_generate(store, batch_engine(server.url, batch_max_lines=8), requests(20), batch_size=4)
        assert len(server.record.batches) == 3  # 8 + 8 + 4 lines
        assert server.record.auth == Counter({"Bearer sk-test-secret": sum(server.record.auth.values())})
    rows = db.execute("SELECT partition, asset, status, len(call_ids) FROM llm_batches ORDER BY 4 DESC").fetchall()
    assert rows == [("toy", "judgments", "collected", 8)] * 2 + [("toy", "judgments", "collected", 4)]
    assert db.execute("SELECT count(*) FROM llm_calls WHERE engine = 'openai'").fetchone()[0] == 15
    assert db.execute("SELECT count(*) FROM llm_failures").fetchone()[0] == 5
    with FakeProvider() as again:  # a re-run sends exactly the five that failed, in one new batch
        cached_generate(store, batch_engine(again.url), requests(20), batch_size=4)
        assert len(again.record.submitted_ids) == 5
    assert b"sk-test-secret" not in (tmp_path / "arhn.duckdb").read_bytes()
    byte_limited = batch_api.split([b"x" * 10] * 5, max_lines=100, max_bytes=25)
    assert byte_limited == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize("end", ["expired", "cancelled"])
def test_an_expired_or_cancelled_batch_resends_only_what_has_no_answer(db, store, end):
    with FakeProvider(Behaviour(batch_end=end, later_batch_end="completed", batch_answer_share=0.5)) as server:
        calls, _ = cached_generate(store, batch_engine(server.url), requests(10), batch_size=10)
    ids = server.record.submitted_ids
    assert len(ids) == 15 and len(set(ids)) == 10  # 10, then only the 5 the first batch left unanswered
    assert [s for (s,) in db.execute("SELECT counts->>'status' FROM llm_batches ORDER BY submitted_at").fetchall()] == [
        end,
        "completed",
    ]
    assert len(calls) == 10 and db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == 10


def test_a_failed_batch_records_every_call_as_a_failure(db, store):
    with FakeProvider(Behaviour(batch_end="failed")) as server:
        with pytest.raises(EngineCallsFailed, match="6 of 6"):
            cached_generate(store, batch_engine(server.url), requests(6), batch_size=6)
    assert db.execute("SELECT count(*) FROM llm_failures WHERE error LIKE '%invalid input file%'").fetchone()[0] == 6


def test_a_step_that_stops_waiting_resumes_by_its_recorded_batches_and_never_submits_twice(db, store):
    batch_api.set_stage("toy", "snippets")
    with FakeProvider(Behaviour(polls_to_finish=10**9)) as server:
        eng = batch_engine(server.url, batch_wait_seconds=0.1, batch_max_lines=6)
        with pytest.raises(batch_api.BatchesPending, match="2 batch"):
            cached_generate(store, eng, requests(10), batch_size=10)
        assert db.execute("SELECT count(*) FROM llm_batches WHERE status != 'collected'").fetchone()[0] == 2
        # the sensor sees the stage's batches unfinished: nothing to run yet
        from arhn_pipeline.llm_stage import finished_batches

        rows = db.execute("SELECT batch_id, endpoint, partition, asset FROM llm_batches").fetchall()
        poll = batch_api.Provider(eng, server.url)
        assert finished_batches(lambda e, b: poll.status(b)["status"], rows) == {}
        server.behaviour.polls_to_finish = 0  # the provider finishes them
        assert finished_batches(lambda e, b: poll.status(b)["status"], rows) == {
            ("toy", "snippets"): sorted(r[0] for r in rows)
        }
        poll.close()
        calls, _ = cached_generate(store, eng, requests(10), batch_size=10)  # the re-run the sensor asks for
    assert len(server.record.submitted_ids) == 10 == len(set(server.record.submitted_ids))
    assert len(calls) == 10
    assert db.execute("SELECT count(*) FROM llm_batches WHERE status = 'collected'").fetchone()[0] == 2
