"""What a stage hands the engine and what it gets back, and the resource interface every engine implements."""

from __future__ import annotations

import hashlib
import json
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from arhn_pipeline.engine.special_tokens import neutralize


@dataclass(frozen=True)
class Structured:
    """A constraint on the answer's form, enforced by the engine's structured-output decoding."""

    kind: Literal["json", "choice", "regex"]
    value: Any  # a JSON schema, a list of choices, or a regular expression

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0

    def as_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}


@dataclass(frozen=True)
class LLMRequest:
    """One chat request. `template` and `template_version` name the prompt file it was rendered from."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    template: str
    template_version: str
    sampling: Sampling = field(default_factory=Sampling)
    structured: Structured | None = None
    # Not part of the call's identity (both follow from the messages): the identifiers the prompt gave its
    # passages, in the order shown, and the texts from data the prompt shows (for the planted-answer check).
    labels: tuple[str, ...] = ()
    data: tuple[str, ...] = ()

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def cache_key(self, model_id: str) -> str:
        """The call's identity: same model, template version, prompt and sampling -> same answer."""
        payload = {
            "model": model_id,
            "template_version": self.template_version,
            "messages": self.messages,
            "sampling": self.sampling.as_dict(),
            "structured": self.structured.as_dict() if self.structured else None,
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class LLMResult:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int | None = None  # served from the prefix cache, when the engine reports it
    error: str | None = None  # no answer: what failed (a remote engine after its retries); never stored as one


@dataclass(frozen=True)
class Answered:
    """One answer as it comes back from `LLMEngine.stream`: which request, the result, and the engine seconds
    it took shared among `share` requests (a batch's size, or the requests in flight beside it)."""

    index: int
    result: LLMResult
    seconds: float
    share: int
    ends_batch: bool = False  # the last answer of an engine call: store what came now


class LLMEngine(dg.ConfigurableResource):  # type: ignore[type-arg]
    """An engine that answers a batch of chat requests. Stages call `generate` through the call cache
    (engine/cache.py) and never know which implementation is behind it."""

    model: str = Field(description="model id (hub id or local folder); 'smollm2' is the packaged CPU default")
    temperature: float | None = Field(
        default=None, description="overrides every stage's sampling temperature (stages default to 0, greedy)"
    )
    top_p: float | None = Field(default=None, description="overrides every stage's top_p")
    max_tokens_scale: float = Field(
        default=1.0, description="multiplies every stage's generation budget (reasoning models need more)"
    )
    judge: bool | None = Field(
        default=None,
        description="whether the stages that need a judge (the cascade's LLM stage, ranker `auto`) ask this engine; "
        "unset: the engine's own rule (a served or hosted model, or vLLM on a GPU: yes; the packaged small CPU "
        "model: no). ARHN_LLM_JUDGE=1/0 sets it for the shipped definitions",
    )

    def with_defaults(self, request: LLMRequest) -> LLMRequest:
        """The request as it is sent (before its cache key is taken): this engine's sampling overrides applied,
        and every control token of the model in the text made plain text (engine/special_tokens.py)."""
        s = request.sampling
        sampling = Sampling(
            max_tokens=max(1, round(s.max_tokens * self.max_tokens_scale)),
            temperature=s.temperature if self.temperature is None else self.temperature,
            top_p=s.top_p if self.top_p is None else self.top_p,
            seed=s.seed,
        )
        tokens = self.special_tokens()
        messages = tuple((role, neutralize(content, tokens)) for role, content in request.messages)
        if sampling == s and messages == request.messages:
            return request
        return replace(request, sampling=sampling, messages=messages)

    def special_tokens(self) -> tuple[str, ...]:
        """The model's special tokens as text (from its tokenizer); none where the engine has no tokenizer,
        leaving the generic chat-template markers of engine/special_tokens.py."""
        return ()

    @property
    @abstractmethod
    def engine_name(self) -> str: ...

    def judge_rule(self) -> tuple[bool, str]:
        """(ask it, why): whether this engine is a judge worth asking, and the rule that said so. The decision
        is the engine's, not the local machine's: a hosted model is worth asking from a CPU-only machine."""
        if self.judge is not None:
            return self.judge, f"configured: judge={str(self.judge).lower()}"
        return self.own_judge_rule()

    def own_judge_rule(self) -> tuple[bool, str]:
        return False, f"{self.engine_name} engine: not a judge unless configured (judge=true)"

    @abstractmethod
    def generate(self, requests: list[LLMRequest]) -> list[LLMResult]:
        """Answer every request, in order, in as few engine calls as the implementation can."""

    def stream(
        self, requests: list[LLMRequest], batch_size: int, on_send: Callable[[list[int]], None]
    ) -> Iterator[Answered]:
        """Answers as they come back, in any order. `on_send(indices)` is called just before those requests
        go to the engine. Here: `batch_size` at a time through `generate` (an in-process engine wants whole
        batches); a remote engine keeps a window of requests in flight across batch boundaries instead."""
        for start in range(0, len(requests), batch_size):
            chunk = requests[start : start + batch_size]
            on_send(list(range(start, start + len(chunk))))
            t0 = time.perf_counter()
            results = self.generate(chunk)
            seconds = time.perf_counter() - t0
            if len(results) != len(chunk):
                raise RuntimeError(f"engine returned {len(results)} results for {len(chunk)} requests")
            for i, result in enumerate(results):
                yield Answered(start + i, result, seconds, len(chunk), ends_batch=i == len(chunk) - 1)

    @abstractmethod
    def count_tokens(self, requests: list[LLMRequest]) -> list[int]:
        """Prompt tokens of each request with its chat template applied."""

    @abstractmethod
    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        """Cut `text` to at most `max_tokens` tokens of this model; say whether it was cut."""

    _made: dict[str, LLMEngine] = PrivateAttr(default_factory=dict)
    _on_answered: Any = PrivateAttr(default=None)

    @contextmanager
    def reporting(self, on_answered: Callable[[int], None]) -> Iterator[None]:
        """While open, the engine calls `on_answered(n)` as requests of a `generate` call are answered (the
        call cache's progress reports); engines that answer a batch at once report nothing until it returns."""
        previous, self._on_answered = self._on_answered, on_answered
        try:
            yield
        finally:
            self._on_answered = previous

    def answered(self, n: int = 1) -> None:
        if self._on_answered is not None:
            self._on_answered(n)

    def for_model(self, name: str | None) -> LLMEngine:
        """The engine of this kind and settings for another model (a cascade stage that names one); this one
        when `name` is empty or its own. Engines made here are shut down with this one, and only one of them
        is kept loaded at a time."""
        if not name or name == self.model:
            return self
        if name not in self._made:
            for other in self._made.values():
                other.shutdown()
            self._made[name] = type(self)(**{**self.model_dump(), "model": name})
        return self._made[name]

    def shutdown(self) -> None:
        """Release the model and every process it runs in, with those of every engine made by `for_model`."""
        for other in self._made.values():
            other.shutdown()
        self.release()

    def release(self) -> None:
        """Release this engine's own model and processes (engines that hold none have nothing to do)."""

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.shutdown()

    def model_id(self) -> str:
        return self.model

    def settings_metadata(self) -> dict[str, str]:
        """Engine settings worth showing with a stage's materialization (the vLLM engine: its dtype and why)."""
        return {}

    def context_window(self) -> int | None:
        """Tokens a prompt plus its answer may take, when the engine has a limit."""
        return None

    def passage_budget(self, configured: int, passages: int, max_tokens: int, overhead: int = 400) -> int:
        """Tokens per passage for a prompt showing `passages` of them: the configured budget, lowered so that
        the whole prompt and its answer fit the context window."""
        window = self.context_window()
        if window is None:
            return configured
        return max(16, min(configured, (window - overhead - max_tokens) // max(passages, 1)))
