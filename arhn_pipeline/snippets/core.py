"""ARHN stage 1 without Dagster: one request per (query, candidate), and a reader of each answer that checks
the snippet against its passage."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from arhn_pipeline.engine.base import LLMEngine, LLMRequest, Sampling, Structured
from arhn_pipeline.engine.prompts import PromptTemplate, planted
from arhn_pipeline.vocab import SnippetStatus

TEMPLATE_PATH = Path(__file__).with_name("snippet.prompt.yaml")
TEMPLATE = PromptTemplate.load(TEMPLATE_PATH)
PARSER_VERSION = "snippet-parser-2"
NO_ANSWER = "NO_ANSWER"

SCHEMA = {
    "type": "object",
    "properties": {"snippet": {"type": "string"}},
    "required": ["snippet"],
    "additionalProperties": False,
}

VERIFIED = SnippetStatus.VERIFIED
TRIVIAL = SnippetStatus.TRIVIAL
UNVERIFIED = SnippetStatus.UNVERIFIED
NO_ANSWER_STATUS = SnippetStatus.NO_ANSWER
DEGENERATE = SnippetStatus.DEGENERATE
PLANTED = SnippetStatus.PLANTED
UNPARSED = SnippetStatus.UNPARSED

# Defaults of the stage's settings (SnippetsConfig), here so that `arhn estimate` plans with the same ones.
PASSAGE_MAX_TOKENS = 384
SNIPPET_MAX_TOKENS = 96

# A verified snippet shorter than this (in letters and digits) answers nothing: a letter, a word piece.
MIN_SNIPPET_CHARS = 3

# One identical answer to this many requests or more (of at least two passages) is no reading of the passages.
DEGENERATE_MIN_REQUESTS = 8


def build_request(query: str, passage: str, max_tokens: int) -> LLMRequest:
    return LLMRequest(
        messages=TEMPLATE.render(query=query, passage=passage),
        template=TEMPLATE.name,
        template_version=TEMPLATE.version,
        sampling=Sampling(max_tokens=max_tokens, temperature=0.0),
        structured=Structured("json", SCHEMA),
        data=(query, passage),
    )


@dataclass(frozen=True)
class ShownPassage:
    text: str  # as the prompt shows it
    truncated: bool  # cut to the token budget


def snippet_requests(
    pairs: pl.DataFrame, llm: LLMEngine, passage_max_tokens: int, snippet_max_tokens: int
) -> tuple[list[LLMRequest], dict[str, ShownPassage]]:
    """One request per pair (in the pairs' order), and each passage as shown."""
    shown: dict[str, ShownPassage] = {}
    requests = []
    for row in pairs.iter_rows(named=True):
        if row["passage_id"] not in shown:
            shown[row["passage_id"]] = ShownPassage(*llm.truncate(row["passage"], passage_max_tokens))
        requests.append(build_request(row["query"], shown[row["passage_id"]].text, snippet_max_tokens))
    return requests, shown


@dataclass(frozen=True)
class SnippetVerdict:
    status: SnippetStatus
    snippet: str | None
    match: str | None = None  # exact | normalized, for verified snippets
    detail: str | None = None  # why an answer is unparsed or no evidence


NOT_ASKED_VERDICT = SnippetVerdict(SnippetStatus.NOT_ASKED, None, detail="snippets skipped by config")


def parse_snippet(response: str) -> str:
    """The snippet field of a JSON answer; raises ValueError on anything else."""
    text = response.strip()
    if text.startswith("```"):
        text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    value = json.loads(text)
    if not isinstance(value, dict) or not isinstance(value.get("snippet"), str):
        raise ValueError('expected {"snippet": "..."}')
    return str(value["snippet"])


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
    if planted(response, (passage,)):
        return SnippetVerdict(PLANTED, stripped, detail="the answer repeats one written into the passage")
    if stripped.strip(". ").upper() == NO_ANSWER:
        return SnippetVerdict(NO_ANSWER_STATUS, None)
    match = "exact" if stripped in passage else "normalized" if _norm(stripped) in _norm(passage) else None
    if match is None:
        return SnippetVerdict(UNVERIFIED, stripped)
    if sum(ch.isalnum() for ch in stripped) < MIN_SNIPPET_CHARS:
        return SnippetVerdict(TRIVIAL, stripped, match, detail=f"fewer than {MIN_SNIPPET_CHARS} letters or digits")
    return SnippetVerdict(VERIFIED, stripped, match=match)


def judge_snippets(responses: list[str], passages: list[str]) -> list[SnippetVerdict]:
    """Read every answer of a partition. When one identical readable answer came back for every request (at
    least DEGENERATE_MIN_REQUESTS, over more than one passage), the model read none of them: each is
    `degenerate` (an unreadable answer stays `unparsed`)."""
    verdicts = [judge_snippet(r, p) for r, p in zip(responses, passages, strict=True)]
    if len(responses) >= DEGENERATE_MIN_REQUESTS and len(set(responses)) == 1 and len(set(passages)) > 1:
        detail = f"the same answer to all {len(responses)} requests: {responses[0][:80]!r}"
        return [v if v.status == UNPARSED else SnippetVerdict(DEGENERATE, v.snippet, v.match, detail) for v in verdicts]
    return verdicts
