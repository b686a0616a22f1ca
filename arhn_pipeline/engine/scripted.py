"""A scripted engine: answers by rule, for testing stage logic without a model. Scripts are plain
functions registered by name, so a test (or a user reproducing a case) picks one by config."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from pydantic import Field

from arhn_pipeline.engine.base import LLMEngine, LLMRequest, LLMResult

Script = Callable[[LLMRequest], str]
SCRIPTS: dict[str, Script] = {}
# How many requests each script has answered in this process (tests assert "the engine was not called").
CALLS: Counter[str] = Counter()


def register_script(name: str) -> Callable[[Script], Script]:
    def wrap(fn: Script) -> Script:
        SCRIPTS[name] = fn
        return fn

    return wrap


@register_script("constant_no")
def _constant_no(req: LLMRequest) -> str:
    return "no"


class ScriptedEngine(LLMEngine):
    """Answers each request with SCRIPTS[model](request): a scripted engine's "model" is its script, so a
    cascade stage that names another model gets another script. Token counts are whitespace words."""

    model: str = Field(default="constant_no", description="the script: a function registered with register_script")
    latency_seconds: float = Field(
        default=0.0, description="time each generate call takes, as a model's would (for concurrency tests)"
    )

    @property
    def engine_name(self) -> str:
        return "scripted"

    def model_id(self) -> str:
        return f"scripted:{self.model}"

    def generate(self, requests: list[LLMRequest]) -> list[LLMResult]:
        if self.model not in SCRIPTS:
            raise KeyError(f"no script named {self.model!r}; registered: {sorted(SCRIPTS)}")
        fn = SCRIPTS[self.model]
        time.sleep(self.latency_seconds)
        CALLS[self.model] += len(requests)
        out = []
        for req, n in zip(requests, self.count_tokens(requests), strict=True):
            text = fn(req)
            out.append(LLMResult(text=text, finish_reason="stop", prompt_tokens=n, completion_tokens=len(text.split())))
        return out

    def count_tokens(self, requests: list[LLMRequest]) -> list[int]:
        return [sum(len(content.split()) + 4 for _, content in r.messages) for r in requests]

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        words = text.split()
        if len(words) <= max_tokens:
            return text, False
        return " ".join(words[:max_tokens]), True
