"""The call table as cache, with the scripted engine: re-runs send nothing, interrupted runs resume."""

import pytest

from arhn_pipeline.engine.base import LLMRequest, Sampling
from arhn_pipeline.engine.cache import cached_generate
from arhn_pipeline.engine.scripted import CALLS, ScriptedEngine, register_script


@register_script("echo_last_word")
def _echo(req: LLMRequest) -> str:
    return req.messages[-1][1].split()[-1]


def requests(n, template_version="v1", prefix="say"):
    return [
        LLMRequest(
            messages=(("user", f"{prefix} word{i}"),),
            template="t.yaml",
            template_version=template_version,
            sampling=Sampling(max_tokens=8),
        )
        for i in range(n)
    ]


class SentLog(ScriptedEngine):
    """Records every prompt it is sent, and can fail after a number of batches (a crash mid-stage)."""

    fail_after_batches: int = -1

    def generate(self, reqs):
        sent = SENT.setdefault(self.model, [])
        if self.fail_after_batches >= 0 and len(BATCHES) >= self.fail_after_batches:
            raise RuntimeError("engine process killed")
        BATCHES.append(len(reqs))
        sent.extend(r.messages[-1][1] for r in reqs)
        return super().generate(reqs)


SENT: dict[str, list[str]] = {}
BATCHES: list[int] = []


@pytest.fixture(autouse=True)
def _reset():
    SENT.clear()
    BATCHES.clear()


def test_second_run_sends_nothing(db, store):
    engine = SentLog(model="echo_last_word")
    calls, stats = cached_generate(store, engine, requests(10))
    assert [c.response for c in calls] == [f"word{i}" for i in range(10)]
    assert (stats.cache_misses, stats.cache_hits) == (10, 0)
    before = CALLS["echo_last_word"]
    calls2, stats2 = cached_generate(store, engine, requests(10))
    assert CALLS["echo_last_word"] == before
    assert (stats2.cache_misses, stats2.cache_hits) == (0, 10)
    assert [c.call_id for c in calls2] == [c.call_id for c in calls]


def test_duplicate_requests_in_one_batch_are_sent_once(db, store):
    engine = SentLog(model="echo_last_word")
    reqs = requests(3) + requests(3)
    calls, stats = cached_generate(store, engine, reqs)
    assert len(calls) == 6 and SENT["echo_last_word"] == ["say word0", "say word1", "say word2"]
    assert stats.cache_misses == 3


def test_interrupted_run_resumes_and_sends_each_key_once(db, store):
    crashing = SentLog(model="echo_last_word", fail_after_batches=2)
    with pytest.raises(RuntimeError, match="killed"):
        cached_generate(store, crashing, requests(10), batch_size=3)
    # the two batches answered before the crash were stored
    assert db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == 6
    calls, stats = cached_generate(store, SentLog(model="echo_last_word"), requests(10), batch_size=3)
    assert (stats.cache_hits, stats.cache_misses) == (6, 4)
    sent = SENT["echo_last_word"]
    assert sorted(sent) == sorted(f"say word{i}" for i in range(10))  # each exactly once across both runs
    assert [c.response for c in calls] == [f"word{i}" for i in range(10)]


def test_changed_prompt_reasks_only_what_changed(db, store):
    engine = SentLog(model="echo_last_word")
    cached_generate(store, engine, requests(5))
    SENT.clear()
    changed = requests(5)
    changed[2] = LLMRequest(
        messages=(("user", "say other2"),), template="t.yaml", template_version="v1", sampling=Sampling(max_tokens=8)
    )
    cached_generate(store, engine, changed)
    assert SENT["echo_last_word"] == ["say other2"]
    # a new template version changes every key
    SENT.clear()
    cached_generate(store, engine, requests(5, template_version="v2"))
    assert len(SENT["echo_last_word"]) == 5


def test_call_table_answers_what_was_asked_and_answered(db, store):
    engine = ScriptedEngine(model="echo_last_word")
    calls, _ = cached_generate(store, engine, requests(1))
    row = db.execute(
        "SELECT model, engine, template, template_version, messages->>'$[0].content', response, prompt_tokens, "
        "completion_tokens FROM llm_calls WHERE call_id = ?",
        [calls[0].call_id],
    ).fetchone()
    assert row == ("scripted:echo_last_word", "scripted", "t.yaml", "v1", "say word0", "word0", 6, 1)


def test_estimate_counts_what_is_still_to_send(db, store):
    from arhn_pipeline.engine.estimate import estimate

    engine = ScriptedEngine(model="echo_last_word")
    cached_generate(store, engine, requests(4))
    est = estimate(store, engine, "toy", requests(10))
    assert (est.requests, est.cached) == (10, 4)
    assert est.prompt_tokens == sum(engine.count_tokens(requests(10)[4:]))
    assert est.completion_tokens_bound == 6 * 8
    assert est.completion_tokens_expected == 6  # one word per earlier answer


def test_engine_sampling_overrides_are_part_of_the_key(db, store):
    greedy, warm = ScriptedEngine(model="echo_last_word"), ScriptedEngine(model="echo_last_word", temperature=0.7)
    cached_generate(store, greedy, requests(2))
    _, stats = cached_generate(store, warm, requests(2))
    assert stats.cache_misses == 2
    temps = db.execute("SELECT DISTINCT sampling->>'$.temperature' FROM llm_calls ORDER BY 1").fetchall()
    assert [t[0] for t in temps] == ["0.0", "0.7"]


def test_progress_is_reported_while_the_engine_works_and_after_each_batch(db, store, monkeypatch):
    """An engine that holds the main thread for a whole batch: the stage still reports done / total, the rate
    and the time left on its own clock (every ARHN_PROGRESS_SECONDS), and after each batch."""
    monkeypatch.setenv("ARHN_PROGRESS_SECONDS", "0.2")
    engine = ScriptedEngine(model="echo_last_word", latency_seconds=1.0)
    cached_generate(store, engine, requests(3))
    lines: list[str] = []
    cached_generate(store, engine, requests(9), batch_size=4, log=lines.append)
    assert len(lines) >= 3 * 4  # three batches of a second each, a report every 0.2 s
    assert all(line.startswith("t.yaml: ") and "new calls answered (3 from cache)" in line for line in lines)
    assert lines[-1].startswith("t.yaml: 6/6 new calls answered") and "requests/s" in lines[-1]
    assert any("left" in line and "unknown" not in line for line in lines if "4/6" in line)


class _WatchedStore:
    """The test's store, whose `store_calls` of batch k waits (up to 5 s) for the engine to start batch k + 1,
    and notes whether it did: storing in line with the engine, it never does."""

    def __init__(self, store, started, fail_at=None):
        self.store, self.started, self.fail_at = store, started, fail_at
        self.saw_next_batch: list[bool] = []

    def lookup_calls(self, keys):
        return self.store.lookup_calls(keys)

    def store_failures(self, failures):
        self.store.store_failures(failures)

    def store_calls(self, records):
        k = len(self.saw_next_batch)
        if k == self.fail_at:
            self.saw_next_batch.append(False)
            raise OSError("disk full")
        last = k == len(self.started) - 1
        self.saw_next_batch.append(True if last else self.started[k + 1].wait(5))
        return self.store.store_calls(records)


class _Starting(ScriptedEngine):
    def generate(self, reqs):
        STARTED[len(BATCHES)].set()
        BATCHES.append(len(reqs))
        return super().generate(reqs)


STARTED: list = []


def test_each_batch_is_stored_while_the_engine_answers_the_next(db, store):
    import threading

    STARTED[:] = [threading.Event() for _ in range(3)]
    watched = _WatchedStore(store, STARTED)
    calls, stats = cached_generate(watched, _Starting(model="echo_last_word"), requests(9), batch_size=3)
    assert BATCHES == [3, 3, 3]
    assert watched.saw_next_batch == [True, True, True]  # batches 1 and 2 were stored while the next was answered
    assert [c.response for c in calls] == [f"word{i}" for i in range(9)]
    # every answer is stored by the time the call returns, in the order answered
    rows = db.execute("SELECT response FROM llm_calls ORDER BY created_at, response").fetchall()
    assert sorted(r for (r,) in rows) == sorted(f"word{i}" for i in range(9))
    _, again = cached_generate(store, _Starting(model="echo_last_word"), requests(9), batch_size=3)
    assert (again.cache_hits, again.cache_misses) == (9, 0)


def test_a_store_that_fails_while_the_engine_works_fails_the_stage_and_keeps_what_was_stored(db, store):
    import threading

    STARTED[:] = [threading.Event() for _ in range(3)]
    watched = _WatchedStore(store, STARTED, fail_at=1)
    with pytest.raises(OSError, match="disk full"):
        cached_generate(watched, _Starting(model="echo_last_word"), requests(9), batch_size=3)
    assert db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == 3  # the first batch; never the third
    assert len(watched.saw_next_batch) == 2  # nothing stored after the failure
