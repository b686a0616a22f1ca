"""Any OpenAI-compatible chat-completions endpoint as the pipeline's engine: a `vllm serve` that many runs
share, or a hosted API. The same call cache, audit rows and resume as the in-process engine.

    ARHN_ENGINE=openai ARHN_MODEL=<served model name> ARHN_OPENAI_BASE_URL=http://gpu-1:8000/v1 arhn run

The API key is read from the environment variable named by `api_key_env` at each request, never stored,
logged or shown in metadata. Requests go out `concurrency` at a time; 429, 5xx, timeouts, dropped
connections and malformed responses are retried with exponential backoff (honouring Retry-After). A
request that still fails is returned as a failure (`LLMResult.error`): the call cache does not store it,
records it in `llm_failures` and fails the stage once every other answer is stored, so a re-run asks
exactly the failed ones. A 4xx other than 429 is the server's answer to this request (a prompt too long,
say): recorded as the call's answer with finish_reason `rejected`, never retried.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any
from urllib.parse import urlparse

from pydantic import Field

from arhn_pipeline import settings
from arhn_pipeline.engine import tokenizer
from arhn_pipeline.engine.base import LLMEngine, LLMRequest, LLMResult

# Characters per token where no tokenizer is configured (counting and cutting passages): a cautious mean.
CHARS_PER_TOKEN = 3.5


class TransientError(Exception):
    """Worth another attempt: 429, 5xx, a timeout, a dropped connection, a malformed response."""

    def __init__(self, what: str, retry_after: float | None = None):
        super().__init__(what)
        self.retry_after = retry_after  # seconds the server asked to wait (Retry-After), if it said


class OpenAIEngine(LLMEngine):
    model: str = Field(description="the model name the server serves (`--served-model-name` of vllm serve)")
    base_url: str = Field(default="http://127.0.0.1:8000/v1", description="the endpoint, up to /v1")
    api_key_env: str = Field(
        default="OPENAI_API_KEY", description="name of the environment variable holding the key (not the key)"
    )
    concurrency: int = Field(default=8, ge=1, description="requests in flight at once")
    max_retries: int = Field(default=5, ge=0, description="attempts after the first, for transient failures")
    backoff_seconds: float = Field(default=1.0, ge=0, description="first retry delay; doubles each attempt")
    timeout_seconds: float = Field(default=120.0, gt=0, description="per request")
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

    def settings_metadata(self) -> dict[str, str]:
        host = urlparse(self.base_url)
        return {
            "engine": "openai",
            "endpoint": f"{host.scheme}://{host.hostname}{':' + str(host.port) if host.port else ''}{host.path}",
            "api_key_env": self.api_key_env,
            "structured_outputs": self.structured,
        }

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
        import httpx

        if not requests:
            return []
        with (
            httpx.Client(base_url=self.base_url.rstrip("/"), timeout=self.timeout_seconds) as client,
            ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai") as pool,
        ):
            return list(pool.map(lambda r: self._one(client, r), requests))

    def _one(self, client: Any, request: LLMRequest) -> LLMResult:
        body = self.body(request)
        errors: list[str] = []
        for attempt in range(self.max_retries + 1):
            try:
                result = self._post(client, body)
                self.answered(1)
                return result
            except TransientError as exc:
                errors.append(str(exc))
                if attempt == self.max_retries:
                    break
                delay = exc.retry_after if exc.retry_after is not None else self.backoff_seconds * 2**attempt
                time.sleep(delay * (1 + 0.1 * random.random()))
        self.answered(1)
        return LLMResult(
            "", "failed", prompt_tokens=0, completion_tokens=0, error=f"{len(errors)} attempts: {'; '.join(errors)}"
        )

    def _post(self, client: Any, body: dict[str, Any]) -> LLMResult:
        import httpx

        headers = {}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            response = client.post("/chat/completions", json=body, headers=headers)
        except httpx.TimeoutException:
            raise TransientError(f"timeout after {self.timeout_seconds:g} s") from None
        except httpx.TransportError as exc:
            raise TransientError(f"connection failed ({type(exc).__name__})") from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise TransientError(f"http {status}", _seconds(response.headers.get("retry-after")))
        if status >= 400:  # the server's answer to this very request: stored, never retried
            return LLMResult("", f"rejected: http {status}: {response.text[:300]}", 0, 0)
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise TransientError(f"malformed response ({response.text[:60]!r})") from None
        details = usage.get("prompt_tokens_details") or {}
        return LLMResult(
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_prompt_tokens=details.get("cached_tokens"),
        )


def _seconds(value: str | None) -> float | None:
    """A Retry-After in seconds (the HTTP-date form is not used by the servers this talks to)."""
    try:
        return float(value) if value else None
    except ValueError:
        return None
