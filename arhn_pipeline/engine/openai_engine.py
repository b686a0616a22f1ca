"""Any OpenAI-compatible chat-completions endpoint as the pipeline's engine: a `vllm serve` fleet that many runs
share, or a hosted API. The same call cache, audit rows and resume as the in-process engine.

    ARHN_ENGINE=openai ARHN_MODEL=<served model name> ARHN_OPENAI_BASE_URL=http://gpu-1:8000/v1,http://gpu-2:8000/v1

The API key is read from the environment variable named by `api_key_env` at each request, never stored,
logged or shown in metadata.

- A window of `concurrency` requests is kept in flight across the stage's whole list (not batch by batch),
  and answers go to the call cache as they complete.
- Several base URLs: each request goes to the live endpoint with the fewest requests in flight; one that stops
  answering (connection refused or dropped, a timeout) is left out for a while (`backoff_seconds`, doubling to
  60 s) and tried again later, while the others carry the stage; with none answering for as long as a request's
  retries would take, the remaining requests fail at once (the stage fails; a re-run asks exactly those).
- Rate limits: `requests_per_minute` and `tokens_per_minute` (prompt plus max_tokens) are kept client-side; a
  429's `retry-after` pauses the endpoint that sent it, and `x-ratelimit-remaining-*` at 0 pauses it until
  `x-ratelimit-reset-*`.
- 429, 5xx, timeouts, dropped connections and malformed responses are retried with exponential backoff. A
  request that still fails is returned as a failure (`LLMResult.error`): the call cache does not store it,
  records it in `llm_failures` and fails the stage once every other answer is stored, so a re-run asks exactly
  the failed ones. A 4xx other than 429 is the server's answer to this request (a prompt too long, say):
  recorded as the call's answer with finish_reason `rejected`, never retried.
- `mode: batch` sends the stage through the provider's Batch API instead (engine/batch_api.py).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from functools import cached_property
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field

from arhn_pipeline import settings
from arhn_pipeline.engine import tokenizer
from arhn_pipeline.engine.base import Answered, LLMEngine, LLMRequest, LLMResult

# Characters per token where no tokenizer is configured (counting and cutting passages): a cautious mean.
CHARS_PER_TOKEN = 3.5


class TransientError(Exception):
    """Worth another attempt: 429, 5xx, a timeout, a dropped connection, a malformed response."""

    def __init__(self, what: str, retry_after: float | None = None, endpoint_down: bool = False):
        super().__init__(what)
        self.retry_after = retry_after  # seconds the server asked to wait (Retry-After), if it said
        self.endpoint_down = endpoint_down  # the endpoint did not answer at all (refused, dropped, timed out)


def split_urls(value: str) -> list[str]:
    urls = [u.strip().rstrip("/") for u in re.split(r"[,\s]+", value) if u.strip()]
    if not urls:
        raise ValueError("no base URL given (ARHN_OPENAI_BASE_URL)")
    return urls


def reset_seconds(value: str | None) -> float | None:
    """OpenAI's x-ratelimit-reset-* durations ("1s", "6m0s", "20ms", "1h2m3.5s") or plain seconds, in seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parts = re.findall(r"([\d.]+)(ms|h|m|s)", value)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


class RateLimiter:
    """Client-side requests- and tokens-per-minute limits as buckets refilled continuously and holding one
    second's worth (so a minute's budget is spread over the minute, not spent in a burst), shared by every
    thread of a stage. 0 means no limit."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.requests, self.tokens = self._room(requests_per_minute), self._room(tokens_per_minute)
        self.t = time.monotonic()
        self._lock = threading.Lock()

    @staticmethod
    def _room(per_minute: int) -> float:
        return max(1.0, per_minute / 60)

    def acquire(self, tokens: int) -> float:
        """Wait for room for one request of `tokens`; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = time.monotonic()
                elapsed, self.t = now - self.t, now
                need = float(min(tokens, self.tpm))
                self.requests = min(self._room(self.rpm), self.requests + elapsed * self.rpm / 60)
                self.tokens = min(max(self._room(self.tpm), need), self.tokens + elapsed * self.tpm / 60)
                short = max(
                    (1 - self.requests) * 60 / self.rpm if self.rpm else 0.0,
                    (need - self.tokens) * 60 / self.tpm if self.tpm else 0.0,
                )
                if short <= 0:
                    self.requests -= 1
                    self.tokens -= need
                    return waited
            time.sleep(short)
            waited += short


class Endpoints:
    """The base URLs of a stage: which are live, how many requests each has in flight, and until when one that
    failed or asked to wait is left out."""

    MAX_COOLDOWN = 60.0

    def __init__(self, urls: list[str], min_cooldown: float, give_up_seconds: float):
        self.urls = urls
        self.min_cooldown = min_cooldown
        # with every endpoint left out and none answering for this long, requests fail at once (the stage
        # then fails in bounded time; a re-run asks exactly those) instead of each waiting out the cooldowns
        self.give_up_seconds = give_up_seconds
        self.last_answer = time.monotonic()
        self.in_flight = dict.fromkeys(urls, 0)
        self.down_until = dict.fromkeys(urls, 0.0)
        self.failures = dict.fromkeys(urls, 0)
        self.sent = dict.fromkeys(urls, 0)
        self._lock = threading.Lock()

    def take(self) -> str:
        """The live endpoint with the fewest in flight; waits when every one is left out (the earliest back
        is tried again then)."""
        while True:
            with self._lock:
                now = time.monotonic()
                live = [u for u in self.urls if self.down_until[u] <= now]
                if live:
                    url = min(live, key=lambda u: (self.in_flight[u], self.sent[u]))
                    self.in_flight[url] += 1
                    self.sent[url] += 1
                    return url
                if now - self.last_answer > self.give_up_seconds:
                    raise TransientError(f"no endpoint answered for {now - self.last_answer:.0f} s", endpoint_down=True)
                wait_for = min(min(self.down_until.values()), self.last_answer + self.give_up_seconds + 0.01) - now
            time.sleep(max(0.01, wait_for))

    def give_back(self, url: str, ok: bool, down: bool = False, pause: float | None = None) -> None:
        with self._lock:
            self.in_flight[url] -= 1
            now = time.monotonic()
            if ok:
                self.failures[url] = 0
                self.last_answer = now
            elif down:
                self.failures[url] += 1
                self._leave_out(url, min(self.MAX_COOLDOWN, self.min_cooldown * 2 ** (self.failures[url] - 1)))
            if pause:
                self._leave_out(url, pause)

    def pause(self, url: str, seconds: float) -> None:
        with self._lock:
            self._leave_out(url, seconds)

    def _leave_out(self, url: str, seconds: float) -> None:
        """No request goes to `url` for `seconds` from now (a longer leave already set stands); under the lock."""
        self.down_until[url] = max(self.down_until[url], time.monotonic() + seconds)

    def live(self) -> int:
        now = time.monotonic()
        return sum(1 for u in self.urls if self.down_until[u] <= now)


class OpenAIEngine(LLMEngine):
    model: str = Field(description="the model name the server serves (`--served-model-name` of vllm serve)")
    base_url: str = Field(
        default="http://127.0.0.1:8000/v1",
        description="the endpoint, up to /v1; several separated by commas (requests are spread over the live ones)",
    )
    api_key_env: str = Field(
        default="OPENAI_API_KEY", description="name of the environment variable holding the key (not the key)"
    )
    concurrency: int = Field(default=32, ge=1, description="requests in flight at once, over all endpoints")
    requests_per_minute: int = Field(default=0, ge=0, description="client-side limit (0: none)")
    tokens_per_minute: int = Field(
        default=0, ge=0, description="client-side limit on prompt plus max_tokens per minute (0: none)"
    )
    mode: Literal["online", "batch"] = Field(
        default="online",
        description="online: chat completions as the stage runs; batch: the provider's Batch API (half price on "
        "OpenAI, answers within its completion window; engine/batch_api.py)",
    )
    batch_wait_seconds: float = Field(
        default=600.0,
        ge=0,
        description="batch mode: how long a step waits for its batches before it ends and leaves them to the "
        "llm_batch_sensor, which re-runs the partition when they are done",
    )
    batch_poll_seconds: float = Field(
        default=10.0, gt=0, description="batch mode: first wait between polls (doubling, up to 32x)"
    )
    batch_max_lines: int = Field(default=50_000, ge=1, description="batch mode: requests per batch (provider limit)")
    batch_max_bytes: int = Field(
        default=190 * 2**20, ge=1, description="batch mode: bytes of one batch's input file (provider limit: 200 MB)"
    )
    completion_window: str = Field(default="24h", description="batch mode: the provider's completion window")
    max_retries: int = Field(default=5, ge=0, description="attempts after the first, for transient failures")
    backoff_seconds: float = Field(default=1.0, ge=0, description="first retry delay; doubles each attempt")
    timeout_seconds: float = Field(default=120.0, gt=0, description="per read of the connection (httpx's timeout)")
    deadline_seconds: float = Field(
        default=300.0, gt=0, description="per attempt, in all, whatever the server's pace (a body trickling in)"
    )
    max_response_bytes: int = Field(
        default=8 * 2**20, gt=0, description="a response body larger than this is a failed attempt (never read whole)"
    )
    max_wait_seconds: float = Field(
        default=300.0, ge=0, description="the longest a Retry-After or rate-limit reset is waited for (clamped)"
    )
    structured: str = Field(
        default="json_schema",
        description="how answer constraints are sent: json_schema (response_format: OpenAI, vllm serve), vllm "
        "(vLLM's structured_outputs: JSON schema, choice, regex), none",
    )
    tokenizer: str | None = Field(
        default=None,
        description="a local tokenizer folder or hub id for exact token counts, cutting and the model's special "
        "tokens; 'smollm2' for the packaged one; unset: about 3.5 characters a token",
    )
    max_model_len: int | None = Field(default=None, description="the served model's context window, if known")

    @property
    def engine_name(self) -> str:
        return "openai"

    def model_id(self) -> str:
        return f"openai/{self.model}"

    def own_judge_rule(self) -> tuple[bool, str]:
        return True, "a served or hosted model (openai engine)"

    @property
    def uses_batch_api(self) -> bool:
        return self.mode == "batch"

    @property
    def urls(self) -> list[str]:
        return split_urls(self.base_url)

    def settings_metadata(self) -> dict[str, str]:
        shown = []
        for url in self.urls:  # never the query string or credentials a URL might carry
            host = urlparse(url)
            shown.append(f"{host.scheme}://{host.hostname}{':' + str(host.port) if host.port else ''}{host.path}")
        return {
            "engine": "openai",
            "endpoint": ", ".join(shown),
            "api_key_env": self.api_key_env,
            "structured_outputs": self.structured,
            "mode": self.mode,
            "concurrency": str(self.concurrency),
            "rate_limits": f"{self.requests_per_minute or '-'} requests/min, "
            f"{self.tokens_per_minute or '-'} tokens/min",
        }

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def context_window(self) -> int | None:
        return self.max_model_len

    @cached_property
    def _tok(self) -> Any:
        if not self.tokenizer:
            return None
        from transformers import AutoTokenizer

        if self.tokenizer == "smollm2":
            from arhn_pipeline.engine.prepare import prepare_smollm2

            return AutoTokenizer.from_pretrained(str(prepare_smollm2(settings.models_dir())))
        return AutoTokenizer.from_pretrained(self.tokenizer)

    @cached_property
    def _special_tokens(self) -> tuple[str, ...]:
        return () if self._tok is None else tokenizer.special_tokens(self._tok)

    def special_tokens(self) -> tuple[str, ...]:
        return self._special_tokens  # read for every request sent: taken from the tokenizer once

    def count_tokens(self, requests: list[LLMRequest]) -> list[int]:
        if self._tok is None:
            return [round(sum(len(c) for _, c in r.messages) / CHARS_PER_TOKEN) + 8 for r in requests]
        return tokenizer.count_tokens(self._tok, requests)

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        if self._tok is None:
            limit = int(max_tokens * CHARS_PER_TOKEN)
            return (text, False) if len(text) <= limit else (text[:limit], True)
        return tokenizer.truncate(self._tok, text, max_tokens)

    # --- requests ---

    def body(self, request: LLMRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.chat(),
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        constraint = request.structured
        if constraint is not None and self.structured == "vllm":
            body["structured_outputs"] = {constraint.kind: constraint.value}
        elif constraint is not None and self.structured == "json_schema" and constraint.kind == "json":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": constraint.value},
            }
        return body

    def generate(self, requests: list[LLMRequest]) -> list[LLMResult]:
        results: list[LLMResult | None] = [None] * len(requests)
        for answer in self.stream(requests, len(requests), lambda _: None):
            results[answer.index] = answer.result
        return [r for r in results if r is not None]

    def stream(
        self, requests: list[LLMRequest], batch_size: int, on_send: Callable[[list[int]], None]
    ) -> Iterator[Answered]:
        """A sliding window: `concurrency` requests in flight over the live endpoints and as many queued
        behind them, whatever `batch_size` says, so the server never waits for a batch to drain."""
        import httpx

        if not requests:
            return
        endpoints = Endpoints(
            self.urls,
            min_cooldown=self.backoff_seconds,
            give_up_seconds=self.backoff_seconds * (2 ** (self.max_retries + 1) - 1),
        )
        limiter = RateLimiter(self.requests_per_minute, self.tokens_per_minute)
        budgets = self._budgets(requests) if self.tokens_per_minute else [0] * len(requests)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        with (
            httpx.Client(timeout=self.timeout_seconds, limits=limits) as client,
            ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai") as pool,
        ):
            todo = iter(range(len(requests)))
            futures: dict[Future[tuple[LLMResult, float]], int] = {}

            def submit() -> None:
                i = next(todo, None)
                if i is not None:
                    futures[pool.submit(self._one, client, endpoints, limiter, requests[i], budgets[i], i, on_send)] = i

            for _ in range(2 * self.concurrency):
                submit()
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    i = futures.pop(future)
                    result, seconds = future.result()
                    submit()
                    yield Answered(i, result, seconds, self.concurrency)

    def _budgets(self, requests: list[LLMRequest]) -> list[int]:
        return [n + r.sampling.max_tokens for n, r in zip(self.count_tokens(requests), requests, strict=True)]

    def _one(
        self,
        client: Any,
        endpoints: Endpoints,
        limiter: RateLimiter,
        request: LLMRequest,
        tokens: int,
        index: int,
        on_send: Callable[[list[int]], None],
    ) -> tuple[LLMResult, float]:
        body = self.body(request)
        errors: list[str] = []
        t0 = time.perf_counter()
        attempt = 0
        while True:
            limiter.acquire(tokens)
            try:
                url = endpoints.take()
            except TransientError as exc:
                errors.append(str(exc))
                break
            try:
                on_send([index])
                result = self._post(client, url, body, endpoints)
            except TransientError as exc:
                endpoints.give_back(url, ok=False, down=exc.endpoint_down, pause=exc.retry_after)
                errors.append(str(exc))
                if attempt == self.max_retries:
                    break
                attempt += 1
                if exc.endpoint_down and endpoints.live() > 0:
                    continue  # another endpoint carries it at once
                if exc.retry_after is None:
                    time.sleep(self.backoff_seconds * 2 ** (attempt - 1) * (1 + 0.1 * random.random()))
                continue
            except BaseException:
                endpoints.give_back(url, ok=False)
                raise
            endpoints.give_back(url, ok=True)
            self.answered(1)
            return result, time.perf_counter() - t0
        self.answered(1)
        error = f"{len(errors)} attempts: {'; '.join(errors)}"
        return LLMResult("", "failed", prompt_tokens=0, completion_tokens=0, error=error), time.perf_counter() - t0

    def _post(self, client: Any, url: str, body: dict[str, Any], endpoints: Endpoints) -> LLMResult:
        import httpx

        try:
            with client.stream("POST", f"{url}/chat/completions", json=body, headers=self.headers()) as response:
                status, headers = response.status_code, response.headers
                raw = self._read_bounded(response)
        except httpx.TimeoutException:
            raise TransientError(f"timeout after {self.timeout_seconds:g} s", endpoint_down=True) from None
        except httpx.TransportError as exc:
            raise TransientError(f"connection failed ({type(exc).__name__})", endpoint_down=True) from None
        text = raw.decode("utf-8", errors="replace")
        pause = self._clamp(_rate_limit_pause(headers))
        if status == 429:
            raise TransientError(f"http {status}", self._clamp(_retry_after(headers)) or pause or None)
        if status >= 500:  # the server is up: this request is retried, the endpoint stays in
            raise TransientError(f"http {status}", self._clamp(_retry_after(headers)))
        if 300 <= status < 400:  # never followed: the key would go on to wherever it points
            raise TransientError(f"http {status}: redirect to {headers.get('location', '?')[:100]!r} not followed")
        if pause:  # answered, and said its budget is spent: the next requests to it wait for the reset
            endpoints.pause(url, pause)
        if status >= 400:  # the server's answer to this very request: stored, never retried
            return LLMResult("", f"rejected: http {status}: {text[:300]}", 0, 0)
        try:
            return parse_completion(json.loads(text))
        except (ValueError, KeyError, IndexError, TypeError):
            raise TransientError(f"malformed response ({text[:60]!r})") from None

    def _read_bounded(self, response: Any) -> bytes:
        """The body, or a TransientError once it passes `max_response_bytes` or the attempt passes
        `deadline_seconds` (each read is bounded by `timeout_seconds`; a body trickling in is not)."""
        deadline = time.monotonic() + self.deadline_seconds
        chunks, size = [], 0
        for chunk in response.iter_bytes():  # decoded: a compressed bomb counts at its real size
            size += len(chunk)
            if size > self.max_response_bytes:
                raise TransientError(f"response larger than {self.max_response_bytes:,} bytes: not read")
            if time.monotonic() > deadline:
                raise TransientError(f"response not complete after {self.deadline_seconds:g} s", endpoint_down=True)
            chunks.append(chunk)
        return b"".join(chunks)

    def _clamp(self, seconds: float | None) -> float | None:
        """A wait the server asked for, made safe: None when absent or not a finite number >= 0, at most
        `max_wait_seconds`."""
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            return None
        return min(seconds, self.max_wait_seconds)


def parse_completion(data: Any) -> LLMResult:
    """A chat completion's answer and usage (also one line of a Batch API output file's `response.body`)."""
    choice = data["choices"][0]
    text = choice["message"]["content"] or ""
    usage = data.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return LLMResult(
        text=text,
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_prompt_tokens=details.get("cached_tokens"),
    )


def _retry_after(headers: Any) -> float | None:
    """Retry-After-Ms, else Retry-After in seconds or as an HTTP date; unclamped (see OpenAIEngine._clamp)."""
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    value = headers.get("retry-after")
    seconds = _seconds(value)
    if seconds is None and value:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is not None:
            import datetime as dt

            seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    return seconds


def _rate_limit_pause(headers: Any) -> float:
    """Seconds to leave an endpoint alone when its x-ratelimit-remaining-* says the budget is spent."""
    pause = 0.0
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is not None and remaining.strip() in ("0", "0.0"):
            pause = max(pause, reset_seconds(headers.get(f"x-ratelimit-reset-{kind}")) or 1.0)
    return pause


def _seconds(value: str | None) -> float | None:
    """A number of seconds as a header gives it (any float, inf and nan included: see OpenAIEngine._clamp)."""
    try:
        return float(value) if value else None
    except ValueError:
        return None
