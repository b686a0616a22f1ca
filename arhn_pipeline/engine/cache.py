"""The call cache: every LLM call a stage makes goes through `cached_generate`, and every answer is kept.

A request whose key is already stored is never sent again, so a run killed midway resumes where it
stopped and a changed prompt re-asks only the requests it changed. Answers are stored as they come, a few dozen at a
time, in a `CallStore` (the DuckDB file's `llm_calls` table: store.DuckDBStore), which is open only to look up
and to store; each batch is stored on a thread of its own while the engine answers the next (`_Saver.hand_off`).
The engine streams its answers (`LLMEngine.stream`): an in-process engine a batch at a time, a
remote one with a window of requests in flight across batch boundaries; a Batch API engine through
engine/batch_api.py.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from arhn_pipeline import faults, settings
from arhn_pipeline.engine.base import Answered, LLMEngine, LLMRequest
from arhn_pipeline.store import CallRecord, StoredCall


class CallStore(Protocol):
    def lookup_calls(self, keys: Iterable[str]) -> dict[str, StoredCall]: ...

    def store_calls(self, records: list[CallRecord]) -> list[str]: ...

    def store_failures(self, failures: list[tuple[str, str, str, str, str]]) -> None: ...


class EngineCallsFailed(RuntimeError):
    """Some calls got no answer after the engine's retries. Every answer that came is stored; a re-run asks
    exactly the failed ones."""


@dataclass
class CallStats:
    requests: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    engine_seconds: float = 0.0
    asked_twice: int = 0  # answered here, but stored meanwhile by another run racing on the same keys

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
            "llm_asked_twice": self.asked_twice,
            "llm_requests_per_second": round(self.requests_per_second, 2),
        }


# How often a stage reports its progress while the engine works (ARHN_PROGRESS_SECONDS overrides it).
PROGRESS_SECONDS = 30.0


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class Progress:
    """Done / total, requests per second and the time left of one stage's engine calls, reported every
    PROGRESS_SECONDS from a background thread (the engine may hold the main thread for minutes) and after
    every batch."""

    def __init__(self, stage: str, total: int, cached: int, log: Callable[[str], None] | None):
        self.stage, self.total, self.cached, self.log = stage, total, cached, log
        self.done = 0
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        every = settings.number("ARHN_PROGRESS_SECONDS")
        self._every = PROGRESS_SECONDS if every is None else every
        self._thread = threading.Thread(target=self._beat, name=f"progress-{stage}", daemon=True)

    def __enter__(self) -> Progress:
        if self.log is not None and self.total:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def answered(self, n: int) -> None:
        with self._lock:
            self.done = min(self.total, self.done + n)

    def settle(self, done: int) -> None:
        """A batch came back: `done` calls are answered in all."""
        with self._lock:
            self.done = done
        self.report()

    def line(self) -> str:
        with self._lock:
            done = self.done
        elapsed = time.monotonic() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        # a rate from the first few answers says little (an in-process engine answers a batch all at once)
        sure = rate > 0 and done >= max(2, self.total // 20)
        left = f"about {_duration((self.total - done) / rate)} left" if sure else "time left unknown yet"
        return (
            f"{self.stage}: {done}/{self.total} new calls answered ({self.cached} from cache), "
            f"{rate:.2f} requests/s, {_duration(elapsed)} so far, {left}"
        )

    def report(self) -> None:
        if self.log is not None:
            self.log(self.line())

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            self.report()


_trace_lock = threading.Lock()


def _trace(keys: Iterable[str]) -> None:
    """With ARHN_CALL_LOG=FILE, append the key of every call sent to the engine (before it is sent): an
    operator's record of exactly what was asked, and how a test proves that nothing answered is asked again."""
    path = settings.value("ARHN_CALL_LOG")
    if path:
        with _trace_lock, open(path, "a", encoding="utf-8") as fh:
            fh.writelines(f"{key}\n" for key in keys)
            fh.flush()
            os.fsync(fh.fileno())


# Answers are stored in small transactions as they come: each engine batch at once, and a stream of single
# answers at most this many at once and at least this often.
STORE_EVERY = 64
STORE_SECONDS = 2.0
SESSION_STORE_EVERY = 1024  # a session's steps come fast: by time, mostly (a kill loses at most STORE_SECONDS)


class CallSession:
    """Consecutive `cached_generate` calls whose requests follow from the answers before them (a ranking's window
    steps: window k shows the order window k-1 gave). After a call whose every request was new, the next call's
    requests follow from answers that were not stored before, so they are not looked up; and answers are stored
    across calls (every STORE_SECONDS or SESSION_STORE_EVERY answers, and the rest when the session ends), so a step
    costs no database round trip of its own. A kill loses at most the answers not yet stored: they are asked
    again."""

    def __init__(self) -> None:
        self.saver: _Saver | None = None
        self.previous_all_new = False

    def __enter__(self) -> CallSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saver is not None:
            self.saver.flush()


def cached_generate(
    store: CallStore,
    engine: LLMEngine,
    requests: list[LLMRequest],
    batch_size: int = 256,
    log: Callable[[str], None] | None = None,
    session: CallSession | None = None,
) -> tuple[list[StoredCall], CallStats]:
    """Answer `requests` (in order) from the call store, sending only missing keys to the engine."""
    model = engine.model_id()
    requests = [engine.with_defaults(r) for r in requests]
    keys = [r.cache_key(model) for r in requests]
    stored = {} if session is not None and session.previous_all_new else store.lookup_calls(keys)
    stats = CallStats(requests=len(requests))
    todo: dict[str, LLMRequest] = {}
    for key, req in zip(keys, requests, strict=True):
        if key not in stored and key not in todo:
            todo[key] = req
    stats.cache_hits = len(requests) - len(todo)
    stats.cache_misses = len(todo)
    pending = list(todo.items())
    stage = requests[0].template.split("/")[0] if requests else "llm"
    failures: list[tuple[str, str, str, str, str]] = []
    if session is not None:
        session.previous_all_new = bool(requests) and stats.cache_hits == 0
    with Progress(stage, len(pending), stats.cache_hits, log) as progress, engine.reporting(progress.answered):
        if pending:
            t0 = time.perf_counter()
            saver = _saver(session, store, engine, model)
            saver.bind(stats, stored, failures)
            if getattr(engine, "uses_batch_api", False):
                from arhn_pipeline.engine import batch_api

                batch_api.answer(store, engine, pending, saver, progress, _trace)  # type: ignore[arg-type]
            else:
                _answer(engine, pending, batch_size, saver, progress)
            if session is None:  # a session's steps report when their answers are stored, not each step
                saver.flush()
                progress.settle(len(pending))
            stats.engine_seconds += time.perf_counter() - t0
    if failures:
        if session is not None and session.saver is not None:
            session.saver.flush()  # every answer that came is stored before the stage fails
        store.store_failures(failures)
        kinds = sorted({f[4].rsplit("; ", 1)[-1] for f in failures})
        raise EngineCallsFailed(
            f"{stage}: {len(failures)} of {len(pending)} calls got no answer from {engine.engine_name} after its "
            f"retries (last errors: {', '.join(kinds[:5])}); the {len(pending) - len(failures)} answered are "
            "stored, a re-run asks only the failed ones (see the llm_failures table)"
        )
    return [stored[k] for k in keys], stats


def _saver(session: CallSession | None, store: CallStore, engine: LLMEngine, model: str) -> _Saver:
    """This call's saver: its own (each engine batch stored as it ends, a stream every STORE_EVERY or
    STORE_SECONDS), or the session's, kept across calls (every SESSION_STORE_EVERY or STORE_SECONDS)."""
    if session is None:
        return _Saver(store, engine, model, STORE_EVERY, at_batch_end=True)
    if session.saver is None:
        session.saver = _Saver(store, engine, model, SESSION_STORE_EVERY, at_batch_end=False)
    return session.saver


def _answer(
    engine: LLMEngine,
    pending: list[tuple[str, LLMRequest]],
    batch_size: int,
    saver: _Saver,
    progress: Progress,
) -> None:
    """Stream the pending requests through the engine; the saver stores the answers as they come."""
    done = 0
    try:
        for answer in engine.stream(
            [req for _, req in pending], batch_size, lambda ix: _trace(pending[i][0] for i in ix)
        ):
            key, req = pending[answer.index]
            saver.add(key, req, answer)
            done += 1
            if saver.due(answer.ends_batch):
                saver.hand_off()  # stored while the engine answers the next batch
                progress.settle(done)
    except BaseException:
        # the engine failed: what was handed off is stored before its error goes up (a failed store of it is
        # the lesser news, and shows again as calls asked on the next run)
        with contextlib.suppress(Exception):
            saver.wait()
        raise


# Whether an engine batch's answers are stored on a thread of their own while the engine answers the next batch
# (bench/call_store.py's stage figures turn it off for their baseline).
STORE_IN_BACKGROUND = True


class _Saver:
    """Answers waiting to be stored, and the store of them in one short transaction. Each answer counts (the
    answers handed back, the token totals, the failures) when it comes; the store only writes.

    `hand_off` stores on a thread of its own, so the engine answers its next batch meanwhile: storing a batch
    costs its transaction (and on DuckLake the wait for the write lock), which grows with `llm_calls`
    (docs/scaling.md), and the engine would otherwise stand idle through it. One store at a time, in the order
    handed off: a batch waits for the one before, so memory holds at most two batches, and a kill loses at most
    the answers not yet stored (asked again on the next run, as before). `flush` waits for it and stores what is
    left before returning; an error of a store is raised there, or at the next hand-off."""

    def __init__(self, store: CallStore, engine: LLMEngine, model: str, every: int, at_batch_end: bool):
        self.store, self.engine, self.model = store, engine, model
        self.every, self.at_batch_end = every, at_batch_end
        self.buffer: list[tuple[str, LLMRequest, Answered]] = []
        self.last_store = time.monotonic()
        self._storing: threading.Thread | None = None
        self._failed: BaseException | None = None

    def due(self, ends_batch: bool) -> bool:
        """Whether what came should be stored now."""
        return (
            (ends_batch and self.at_batch_end)
            or len(self.buffer) >= self.every
            or time.monotonic() - self.last_store >= STORE_SECONDS
        )

    def bind(
        self, stats: CallStats, stored: dict[str, StoredCall], failures: list[tuple[str, str, str, str, str]]
    ) -> None:
        """Count the next answers into these (a session's saver serves one call after another)."""
        self.stats, self.stored, self.failures = stats, stored, failures

    def add(self, key: str, req: LLMRequest, answer: Answered) -> None:
        res = answer.result
        if res.error is not None:
            self.failures.append((key, self.model, self.engine.engine_name, req.template, res.error))
            return
        self.buffer.append((key, req, answer))
        self.stored[key] = StoredCall(key, res.text, res.finish_reason)
        self.stats.prompt_tokens += res.prompt_tokens
        self.stats.completion_tokens += res.completion_tokens
        self.stats.cached_prompt_tokens += res.cached_prompt_tokens or 0

    def flush(self) -> int:
        """Store what came (after the store handed off, if one is running); returns how many answers that was."""
        self.wait()
        chunk = self._take()
        if chunk:
            self._store(chunk)
        return len(chunk)

    def hand_off(self) -> int:
        """Store what came on a thread of its own, once the store handed off before has ended; returns how many
        answers that was."""
        if not STORE_IN_BACKGROUND:
            return self.flush()
        self.wait()
        chunk = self._take()
        if chunk:
            self._storing = threading.Thread(target=self._store_handed_off, args=(chunk,), name="store-answers")
            self._storing.start()
        return len(chunk)

    def wait(self) -> None:
        """Until the store handed off has ended; its error, if it failed."""
        if self._storing is not None:
            self._storing.join()
            self._storing = None
        failed, self._failed = self._failed, None
        if failed is not None:
            raise failed

    def _take(self) -> list[tuple[str, LLMRequest, Answered]]:
        chunk, self.buffer = self.buffer, []
        self.last_store = time.monotonic()
        return chunk

    def _store_handed_off(self, chunk: list[tuple[str, LLMRequest, Answered]]) -> None:
        try:
            self._store(chunk)
        except BaseException as exc:  # raised in the thread that waits for it
            self._failed = exc

    def _store(self, chunk: list[tuple[str, LLMRequest, Answered]]) -> None:
        faults.point("llm_batch")
        repeated = self.store.store_calls(
            [
                CallRecord(
                    call_id=key,
                    model=self.model,
                    engine=self.engine.engine_name,
                    template=req.template,
                    template_version=req.template_version,
                    messages=req.chat(),
                    sampling=req.sampling.as_dict(),
                    structured=req.structured.as_dict() if req.structured else None,
                    response=a.result.text,
                    finish_reason=a.result.finish_reason,
                    prompt_tokens=a.result.prompt_tokens,
                    completion_tokens=a.result.completion_tokens,
                    cached_prompt_tokens=a.result.cached_prompt_tokens,
                    batch_seconds=a.seconds,
                    batch_size=a.share,
                )
                for key, req, a in chunk
            ]
        )
        if repeated:  # another run stored these first: its answer is the one on record, and the one used
            self.stats.asked_twice += len(repeated)
            self.stored.update(self.store.lookup_calls(repeated))
