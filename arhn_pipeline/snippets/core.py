"""Snippet requests, parsing and verification: plain functions, no Dagster."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from arhn_pipeline.engine.base import LLMRequest, Sampling, Structured
from arhn_pipeline.engine.prompts import PromptTemplate

TEMPLATE_PATH = Path(__file__).with_name("snippet.prompt.yaml")
TEMPLATE = PromptTemplate.load(TEMPLATE_PATH)
PARSER_VERSION = "snippet-parser-1"
NO_ANSWER = "NO_ANSWER"

SCHEMA = {
    "type": "object",
    "properties": {"snippet": {"type": "string"}},
    "required": ["snippet"],
    "additionalProperties": False,
}

# Statuses, in the order of how much they prove.
VERIFIED = "answer_verified"  # the snippet occurs in the passage (exactly, or up to whitespace and case)
UNVERIFIED = "answer_unverified"  # the model wrote text the passage does not contain
NO_ANSWER_STATUS = "no_answer"
UNPARSED = "unparsed"


def build_request(query: str, passage: str, max_tokens: int) -> LLMRequest:
    return LLMRequest(
        messages=TEMPLATE.render(query=query, passage=passage),
        template=TEMPLATE.name,
        template_version=TEMPLATE.version,
        sampling=Sampling(max_tokens=max_tokens, temperature=0.0),
        structured=Structured("json", SCHEMA),
    )


@dataclass(frozen=True)
class SnippetVerdict:
    status: str
    snippet: str | None
    match: str | None = None  # exact | normalized, for verified snippets
    detail: str | None = None  # why an answer is unparsed


def parse_snippet(response: str) -> str:
    """The snippet field of a JSON answer; raises ValueError on anything else."""
    text = response.strip()
    if text.startswith("```"):
        text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    value = json.loads(text)
    if not isinstance(value, dict) or not isinstance(value.get("snippet"), str):
        raise ValueError('expected {"snippet": "..."}')
    return value["snippet"]


_WS = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip().casefold()


def judge_snippet(response: str, passage: str) -> SnippetVerdict:
    """Read one answer: never throws, and an answer it cannot read is `unparsed`, never `no_answer`."""
    try:
        snippet = parse_snippet(response)
    except (ValueError, json.JSONDecodeError) as exc:
        return SnippetVerdict(UNPARSED, None, detail=str(exc)[:200])
    stripped = snippet.strip()
    if not stripped:
        return SnippetVerdict(UNPARSED, snippet, detail="empty snippet")
    if stripped.strip(". ").upper() == NO_ANSWER:
        return SnippetVerdict(NO_ANSWER_STATUS, None)
    if stripped in passage:
        return SnippetVerdict(VERIFIED, stripped, match="exact")
    if _norm(stripped) in _norm(passage):
        return SnippetVerdict(VERIFIED, stripped, match="normalized")
    return SnippetVerdict(UNVERIFIED, stripped)
