"""The call table, which is also the cache: every LLM call a stage makes goes through `cached_generate`.

A request whose key is already stored is never sent again, so a run killed midway resumes where it
stopped and a changed prompt re-asks only the requests it changed. Results are committed batch by batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
from dagster_duckdb import DuckDBResource

from arhn_pipeline.engine.base import LLMEngine, LLMRequest, LLMResult
from arhn_pipeline.store import opened

CALLS_SCHEMA = """
CREATE TABLE IF NOT EXISTS llm_calls (
    call_id              VARCHAR PRIMARY KEY,  -- LLMRequest.cache_key(model)
    model                VARCHAR NOT NULL,
    engine               VARCHAR NOT NULL,     -- vllm | scripted
    template             VARCHAR NOT NULL,     -- prompt file, e.g. snippets/snippet.prompt.yaml
    template_version     VARCHAR NOT NULL,     -- content hash of that file
    messages             JSON NOT NULL,        -- exactly what was asked
    sampling             JSON NOT NULL,
    structured           JSON,
    response             VARCHAR NOT NULL,     -- exactly what was answered
    finish_reason        VARCHAR,
    prompt_tokens        INTEGER,
    completion_tokens    INTEGER,
    cached_prompt_tokens INTEGER,              -- served from the prefix cache (vLLM)
    batch_seconds        DOUBLE,               -- wall time of the engine call that answered it
    batch_size           INTEGER,
    parse_status         VARCHAR,              -- set by the stage's parser: parsed | repaired | unparsed
    created_at           TIMESTAMP NOT NULL
);
"""


@dataclass
class CallStats:
    requests: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    engine_seconds: float = 0.0

    def add(self, other: CallStats) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def requests_per_second(self) -> float:
        return self.cache_misses / self.engine_seconds if self.engine_seconds else 0.0

    def as_metadata(self) -> dict[str, float | int]:
        return {
            "llm_requests": self.requests,
            "llm_cache_hits": self.cache_hits,
            "llm_cache_misses": self.cache_misses,
            "llm_prompt_tokens_sent": self.prompt_tokens,
            "llm_completion_tokens": self.completion_tokens,
            "llm_prefix_cached_tokens": self.cached_prompt_tokens,
            "llm_engine_seconds": round(self.engine_seconds, 2),
            "llm_requests_per_second": round(self.requests_per_second, 2),
        }


@dataclass(frozen=True)
class StoredCall:
    call_id: str
    response: str
    finish_reason: str | None


def ensure_calls_table(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(CALLS_SCHEMA)


def cached_generate(
    db: DuckDBResource | duckdb.DuckDBPyConnection,
    engine: LLMEngine,
    requests: list[LLMRequest],
    batch_size: int = 256,
    log: Callable[[str], None] | None = None,
) -> tuple[list[StoredCall], CallStats]:
    """Answer `requests` (in order) from the call table, sending only missing keys to the engine.

    Given a DuckDBResource, the DuckDB file is open only to look up and to store each batch, never while the
    engine generates, so a reader in another process (`arhn explain`, a notebook) gets in between batches.
    """
    model = engine.model_id()
    requests = [engine.with_defaults(r) for r in requests]
    keys = [r.cache_key(model) for r in requests]
    with opened(db) as conn:
        ensure_calls_table(conn)
        stored = _lookup(conn, set(keys))
    stats = CallStats(requests=len(requests))
    todo: dict[str, LLMRequest] = {}
    for key, req in zip(keys, requests, strict=True):
        if key not in stored and key not in todo:
            todo[key] = req
    stats.cache_hits = len(requests) - len(todo)
    stats.cache_misses = len(todo)
    pending = list(todo.items())
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        t0 = time.perf_counter()
        results = engine.generate([req for _, req in chunk])
        seconds = time.perf_counter() - t0
        stats.engine_seconds += seconds
        with opened(db) as conn:
            _store(conn, engine, chunk, results, seconds)
        for (key, _), res in zip(chunk, results, strict=True):
            stored[key] = StoredCall(key, res.text, res.finish_reason)
            stats.prompt_tokens += res.prompt_tokens
            stats.completion_tokens += res.completion_tokens
            stats.cached_prompt_tokens += res.cached_prompt_tokens or 0
        if log:
            log(
                f"llm: {min(start + batch_size, len(pending))}/{len(pending)} new calls answered "
                f"({stats.cache_hits} from cache)"
            )
    return [stored[k] for k in keys], stats


def _lookup(conn: duckdb.DuckDBPyConnection, keys: set[str]) -> dict[str, StoredCall]:
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT call_id, response, finish_reason FROM llm_calls WHERE call_id IN (SELECT unnest(?))",
        [list(keys)],
    ).fetchall()
    return {r[0]: StoredCall(*r) for r in rows}


def _store(
    conn, engine: LLMEngine, chunk: list[tuple[str, LLMRequest]], results: list[LLMResult], seconds: float
) -> None:
    if len(results) != len(chunk):
        raise RuntimeError(f"engine returned {len(results)} results for {len(chunk)} requests")
    rows = [
        (
            key,
            engine.model_id(),
            engine.engine_name,
            req.template,
            req.template_version,
            json.dumps(req.chat(), ensure_ascii=False),
            json.dumps(req.sampling.as_dict()),
            json.dumps(req.structured.as_dict()) if req.structured else None,
            res.text,
            res.finish_reason,
            res.prompt_tokens,
            res.completion_tokens,
            res.cached_prompt_tokens,
            seconds,
            len(chunk),
        )
        for (key, req), res in zip(chunk, results, strict=True)
    ]
    # One statement per batch, committed at once: a crash loses at most the batch in flight.
    conn.executemany(
        "INSERT INTO llm_calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, now()) "
        "ON CONFLICT DO NOTHING",
        rows,
    )


def set_parse_status(conn: duckdb.DuckDBPyConnection, statuses: dict[str, str]) -> None:
    if statuses:
        conn.execute(
            "UPDATE llm_calls SET parse_status = s.status FROM "
            "(SELECT unnest(?) AS call_id, unnest(?) AS status) s WHERE llm_calls.call_id = s.call_id",
            [list(statuses), list(statuses.values())],
        )
