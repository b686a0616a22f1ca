"""A pre-run estimate of an LLM stage: requests, how many the call cache already answers, prompt tokens
to send (with the model's own tokenizer and chat template), and generated tokens to expect."""

from __future__ import annotations

from dataclasses import dataclass

from arhn_pipeline.engine.base import LLMEngine, LLMRequest
from arhn_pipeline.store import DuckDBStore


@dataclass
class Estimate:
    stage: str
    requests: int
    cached: int
    prompt_tokens: int  # of the requests still to send
    completion_tokens_bound: int  # sum of max_tokens of the requests still to send
    completion_tokens_expected: int | None  # from the mean of earlier answers to the same template, if any

    def lines(self) -> list[str]:
        expected = (
            "no earlier answers to go by"
            if self.completion_tokens_expected is None
            else (f"~{self.completion_tokens_expected:,} expected")
        )
        return [
            f"{self.stage}: {self.requests:,} requests, {self.cached:,} already in the call cache, "
            f"{self.requests - self.cached:,} to send",
            f"  prompt tokens to send: {self.prompt_tokens:,}",
            f"  generated tokens: at most {self.completion_tokens_bound:,}, {expected}",
        ]


def estimate(store: DuckDBStore, llm: LLMEngine, stage: str, requests: list[LLMRequest]) -> Estimate:
    model = llm.model_id()
    requests = [llm.with_defaults(r) for r in requests]
    keys = [r.cache_key(model) for r in requests]
    known = set(store.lookup_calls(keys))
    todo = list({k: r for k, r in zip(keys, requests, strict=True) if k not in known}.values())
    mean = store.mean_completion_tokens(model, requests[0].template) if requests else None
    return Estimate(
        stage=stage,
        requests=len(requests),
        cached=len(requests) - len(todo),
        prompt_tokens=sum(llm.count_tokens(todo)) if todo else 0,
        completion_tokens_bound=sum(r.sampling.max_tokens for r in todo),
        completion_tokens_expected=None if mean is None else round(mean * len(todo)),
    )
