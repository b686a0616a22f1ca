"""A pre-run estimate of an LLM stage: requests, how many the call cache already answers, prompt tokens
to send (with the model's own tokenizer and chat template), and generated tokens to expect."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from arhn_pipeline.engine.base import LLMEngine, LLMRequest
from arhn_pipeline.engine.cache import ensure_calls_table


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


def estimate(conn: duckdb.DuckDBPyConnection, llm: LLMEngine, stage: str, requests: list[LLMRequest]) -> Estimate:
    ensure_calls_table(conn)
    model = llm.model_id()
    requests = [llm.with_defaults(r) for r in requests]
    keys = [r.cache_key(model) for r in requests]
    known = {
        r[0]
        for r in conn.execute(
            "SELECT call_id FROM llm_calls WHERE call_id IN (SELECT unnest(?))", [list(set(keys))]
        ).fetchall()
    }
    todo = list({k: r for k, r in zip(keys, requests, strict=True) if k not in known}.values())
    mean = None
    if requests:
        mean = conn.execute(
            "SELECT avg(completion_tokens) FROM llm_calls WHERE model = ? AND template = ?",
            [model, requests[0].template],
        ).fetchone()[0]
    return Estimate(
        stage=stage,
        requests=len(requests),
        cached=len(requests) - len(todo),
        prompt_tokens=sum(llm.count_tokens(todo)) if todo else 0,
        completion_tokens_bound=sum(r.sampling.max_tokens for r in todo),
        completion_tokens_expected=None if mean is None else round(mean * len(todo)),
    )
