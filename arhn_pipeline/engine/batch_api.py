"""The provider's Batch API for an LLM stage (`ARHN_OPENAI_MODE=batch`): OpenAI's /v1/files + /v1/batches, the
half-price way RLHN relabeled 680K pairs, with the same call cache, audit rows and resume as online calls.

1. The stage's uncached requests become batch JSONL lines (`custom_id` = the call key, `body` = the chat
   completion request, exactly as the online engine would post it), split at the provider's limits (lines and
   bytes per batch).
2. Each part is uploaded (`purpose=batch`) and its batch created; the batch id, the file id and the call keys it
   carries are recorded in `llm_batches` BEFORE any wait, so a killed run finds them again.
3. Batches are polled with backoff. A finished batch's output file is read back: each line's answer is stored
   under its call key (a 4xx line as the server's `rejected` answer, as online), a line that failed (5xx, 429,
   an `error`) goes to `llm_failures`. Keys an expired or cancelled batch left without an answer are sent again in
   a new batch (only those); a batch that failed as a whole records its keys as failures.
4. A run that finds its keys in an open batch collects that batch, never submits them again.

How a long wait sits in Dagster: a step waits up to `batch_wait_seconds` (default 10 min), storing what has come;
then it ends with `BatchesPending` (the run fails, naming the batches), releasing the `llm_engine` slot. The
`llm_batch_sensor` polls the open batches and, when every batch of a partition has finished, requests a run of
that partition's stage, which collects the answers and goes on. The same JSONL is the input of vLLM's offline
batch runner (`python -m vllm.entrypoints.openai.run_batch -i IN -o OUT --model M`), whose output file
`read_output` reads.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from arhn_pipeline.engine.base import Answered, LLMRequest, LLMResult
from arhn_pipeline.vocab import BATCH_COLLECTED

if TYPE_CHECKING:
    from arhn_pipeline.engine.openai_engine import OpenAIEngine

# A batch in one of these states will not change any more.
FINISHED = ("completed", "failed", "expired", "cancelled")
COLLECTED = BATCH_COLLECTED

# The partition and asset whose stage is running (set by the LLM stages), recorded with each batch so that the
# sensor knows what to re-run.
_where: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("arhn_batch_where", default=None)


def set_stage(partition: str, asset: str) -> None:
    """Called by each LLM stage as it starts (the in-process executor runs one step at a time per thread)."""
    _where.set((partition, asset))


class BatchesPending(RuntimeError):
    """The stage's batches are submitted and recorded but not finished within the step's wait: the step ends,
    the llm_batch_sensor re-runs the partition when they finish (or re-run it by hand)."""


@dataclass(frozen=True)
class OpenBatch:
    batch_id: str
    endpoint: str
    call_ids: list[str]


class BatchStore(Protocol):
    def record_batch(
        self,
        batch_id: str,
        endpoint: str,
        model: str,
        template: str,
        where: tuple[str, str] | None,
        file_id: str,
        call_ids: list[str],
    ) -> None: ...

    def open_batches(self, call_ids: Iterable[str]) -> list[tuple[str, str, list[str]]]: ...

    def set_batch_status(self, batch_id: str, status: str, counts: dict[str, Any] | None = None) -> None: ...


def batch_line(key: str, body: dict[str, Any]) -> bytes:
    line = {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def split(lines: list[bytes], max_lines: int, max_bytes: int) -> list[list[int]]:
    """Indices of `lines` in parts of at most `max_lines` lines and `max_bytes` bytes (a line larger than
    `max_bytes` alone in its part, which the provider will refuse: it is recorded as that batch's failure)."""
    parts: list[list[int]] = []
    size = 0
    for i, line in enumerate(lines):
        if not parts or len(parts[-1]) >= max_lines or size + len(line) > max_bytes:
            parts.append([])
            size = 0
        parts[-1].append(i)
        size += len(line)
    return parts


def read_output(text: str) -> Iterator[tuple[str, LLMResult]]:
    """(custom_id, result) per line of a batch output or error file (OpenAI's and vLLM's run_batch alike). A
    line that failed is a result with `error` set, never an answer; a 4xx is the server's answer (`rejected`)."""
    from arhn_pipeline.engine.openai_engine import parse_completion

    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            key = line["custom_id"]
        except (ValueError, KeyError, TypeError):
            continue  # no call key: nothing to attach it to (its call stays unanswered and is asked again)
        response = line.get("response") or {}
        status = int(response.get("status_code") or 0)
        body = response.get("body")
        if line.get("error"):
            yield key, _failed(f"batch line {number}: {json.dumps(line['error'])[:200]}")
        elif status == 200:
            try:
                yield key, parse_completion(body)
            except (KeyError, IndexError, TypeError, ValueError):
                yield key, _failed(f"batch line {number}: malformed body")
        elif 400 <= status < 500 and status != 429:
            yield key, LLMResult("", f"rejected: http {status}: {json.dumps(body)[:300]}", 0, 0)
        else:
            yield key, _failed(f"batch line {number}: http {status or 'none'}")


def _failed(error: str) -> LLMResult:
    return LLMResult("", "failed", 0, 0, error=error)


class Provider:
    """The Batch API endpoints of one base URL (the key read from the environment at each request)."""

    def __init__(self, engine: OpenAIEngine, url: str):
        import httpx

        self.engine, self.url = engine, url
        self.client = httpx.Client(timeout=engine.timeout_seconds)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        errors = []
        for attempt in range(self.engine.max_retries + 1):
            try:
                response = self.client.request(method, f"{self.url}{path}", headers=self.engine.headers(), **kwargs)
            except httpx.TransportError as exc:
                errors.append(type(exc).__name__)
            else:
                if response.status_code < 400:
                    return response
                if response.status_code != 429 and response.status_code < 500:
                    raise RuntimeError(f"{method} {path}: http {response.status_code}: {response.text[:300]}")
                errors.append(f"http {response.status_code}")
            time.sleep(self.engine.backoff_seconds * 2**attempt)
        raise RuntimeError(f"{method} {path} at {self.url}: no answer after {len(errors)} attempts ({errors[-1]})")

    def submit(self, payload: bytes) -> tuple[str, str]:
        """Upload the JSONL and create its batch: (batch id, input file id)."""
        files = {"file": ("arhn-batch.jsonl", payload, "application/jsonl")}
        file_id = self._call("POST", "/files", data={"purpose": "batch"}, files=files).json()["id"]
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": self.engine.completion_window,
        }
        return self._call("POST", "/batches", json=body).json()["id"], file_id

    def status(self, batch_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/batches/{batch_id}").json())

    def content(self, file_id: str | None) -> str:
        return self._call("GET", f"/files/{file_id}/content").text if file_id else ""

    def close(self) -> None:
        self.client.close()


def answer(
    store: BatchStore,
    engine: OpenAIEngine,
    pending: list[tuple[str, LLMRequest]],
    saver: Any,
    progress: Any,
    trace: Callable[[Iterable[str]], None],
) -> None:
    """Answer `pending` through the Batch API, storing answers through `saver` (engine/cache.py) as each batch
    is collected; raises BatchesPending when some are still open after the engine's `batch_wait_seconds`."""
    requests = dict(pending)
    providers = {url: Provider(engine, url) for url in engine.urls}
    try:
        open_batches = {row[0]: OpenBatch(*row) for row in store.open_batches(requests)}
        covered = {k for b in open_batches.values() for k in b.call_ids}
        fresh = [k for k in requests if k not in covered]
        open_batches.update(_submit(store, engine, providers, requests, fresh, trace))
        done = 0
        deadline = time.monotonic() + engine.batch_wait_seconds
        delay = engine.batch_poll_seconds
        while open_batches:
            for batch_id, batch in list(open_batches.items()):
                provider = providers.get(batch.endpoint) or Provider(engine, batch.endpoint)
                info = provider.status(batch_id)
                if info.get("status") not in FINISHED:
                    store.set_batch_status(batch_id, str(info.get("status")), info.get("request_counts"))
                    continue
                answered = _collect(provider, info, batch, requests, saver)
                done += saver.flush()
                progress.settle(done)
                store.set_batch_status(
                    batch_id, COLLECTED, {**(info.get("request_counts") or {}), "status": info["status"]}
                )
                del open_batches[batch_id]
                if info["status"] in ("expired", "cancelled"):  # what it left unanswered goes out again
                    left = [k for k in batch.call_ids if k in requests and k not in answered]
                    open_batches.update(_submit(store, engine, providers, requests, left, trace))
            if not open_batches:
                break
            if time.monotonic() >= deadline:
                ids = ", ".join(sorted(open_batches))
                raise BatchesPending(
                    f"{len(open_batches)} batch(es) still running after {engine.batch_wait_seconds:g} s ({ids}); "
                    f"{done} answers stored. The llm_batch_sensor re-runs this partition when they finish (or run "
                    "it again by hand): nothing is submitted twice"
                )
            time.sleep(delay)
            delay = min(delay * 2, engine.batch_poll_seconds * 32)
    finally:
        for provider in providers.values():
            provider.close()


def _submit(
    store: BatchStore,
    engine: OpenAIEngine,
    providers: dict[str, Provider],
    requests: dict[str, LLMRequest],
    keys: list[str],
    trace: Callable[[Iterable[str]], None],
) -> dict[str, OpenBatch]:
    if not keys:
        return {}
    lines = [batch_line(k, engine.body(requests[k])) for k in keys]
    urls = list(providers)
    made = {}
    template = requests[keys[0]].template
    for n, part in enumerate(split(lines, engine.batch_max_lines, engine.batch_max_bytes)):
        url = urls[n % len(urls)]
        ids = [keys[i] for i in part]
        trace(ids)
        batch_id, file_id = providers[url].submit(b"".join(lines[i] for i in part))
        store.record_batch(batch_id, url, engine.model_id(), template, _where.get(), file_id, ids)
        made[batch_id] = OpenBatch(batch_id, url, ids)
    return made


def _collect(
    provider: Provider, info: dict[str, Any], batch: OpenBatch, requests: dict[str, LLMRequest], saver: Any
) -> set[str]:
    """Store a finished batch's answers and failures; returns the keys that got an answer."""
    answered: set[str] = set()
    wanted = set(batch.call_ids)
    seen: set[str] = set()
    text = provider.content(info.get("output_file_id")) + "\n" + provider.content(info.get("error_file_id"))
    for key, result in read_output(text):
        if key not in wanted or key in seen or key not in requests:
            continue  # not ours, a repeat, or answered by another run since
        seen.add(key)
        saver.add(key, requests[key], Answered(0, result, 0.0, len(batch.call_ids)))
        if result.error is None:
            answered.add(key)
    if info["status"] in ("failed", "completed"):  # every key without a line is a failure (asked again next run)
        reason = (
            f"batch {batch.batch_id} failed: {json.dumps(info.get('errors') or {})[:200]}"
            if info["status"] == "failed"
            else f"batch {batch.batch_id} completed without a line for this call"
        )
        for key in wanted - seen:
            if key in requests:
                saver.add(key, requests[key], Answered(0, _failed(reason), 0.0, 1))
    return answered
