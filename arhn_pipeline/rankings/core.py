"""Listwise ranking: requests, a permutation parser that never throws, and sliding windows.

No Dagster here. The sliding window runs back to front (RankGPT): the last `window` candidates are ranked
first, the window moves up by `stride`, and the best candidates bubble to the top.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from arhn_pipeline.engine.base import LLMRequest, Sampling, Structured
from arhn_pipeline.engine.prompts import PromptTemplate

TEMPLATE = PromptTemplate.load(Path(__file__).with_name("ranking.prompt.yaml"))
PARSER_VERSION = "permutation-parser-1"

PARSED, REPAIRED, UNPARSED = "parsed", "repaired", "unparsed"


def schema(n: int) -> dict:
    return {
        "type": "object",
        "properties": {
            "ranking": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": n}, "maxItems": n}
        },
        "required": ["ranking"],
        "additionalProperties": False,
    }


def answer_budget(n: int) -> int:
    return 16 + 4 * n


def build_request(query: str, passages: list[str]) -> LLMRequest:
    n = len(passages)
    return LLMRequest(
        messages=TEMPLATE.render(query=query, passages=passages),
        template=TEMPLATE.name,
        template_version=TEMPLATE.version,
        sampling=Sampling(max_tokens=answer_budget(n), temperature=0.0),
        structured=Structured("json", schema(n)),
    )


@dataclass(frozen=True)
class Permutation:
    order: list[int]  # 0-based positions of the window, best first; always a full permutation
    placed: frozenset[int]  # positions the model itself put in the order (not appended by repair)
    status: str  # parsed | repaired | unparsed
    repairs: str = ""  # what the parser changed, for the audit


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def parse_permutation(response: str, n: int) -> Permutation:
    """Read a ranking of n items; never throws. Keeps the identifiers in the model's order, drops
    duplicates and unknown ids, and appends what is missing in the original order."""
    text = _THINK.sub("", response).strip()
    notes = []
    try:
        value = json.loads(text)
        ids = value["ranking"] if isinstance(value, dict) else value
        if not isinstance(ids, list):
            raise TypeError
        raw = [int(x) for x in ids if isinstance(x, int | str) and str(x).strip().lstrip("-").isdigit()]
        if len(raw) != len(ids):
            notes.append("dropped non-numeric entries")
    except (ValueError, TypeError, KeyError):
        raw = [int(x) for x in re.findall(r"\d+", text)]
        if raw:
            notes.append("not JSON: read the numbers in the text")
    seen: list[int] = []
    unknown, duplicates = [], []
    for ident in raw:
        if not 1 <= ident <= n:
            unknown.append(ident)
        elif ident - 1 in seen:
            duplicates.append(ident)
        else:
            seen.append(ident - 1)
    missing = [i for i in range(n) if i not in seen]
    if unknown:
        notes.append(f"dropped unknown ids {unknown}")
    if duplicates:
        notes.append(f"dropped duplicate ids {duplicates}")
    if missing and seen:
        notes.append(f"appended missing ids {[i + 1 for i in missing]}")
    if not seen:
        return Permutation(list(range(n)), frozenset(), UNPARSED, "no usable identifier; original order kept")
    return Permutation(seen + missing, frozenset(seen), REPAIRED if notes else PARSED, "; ".join(notes))


def shuffled(items: list, query_id: str) -> list:
    """A fixed shuffle per query (so prompts, and their cache keys, are stable across runs)."""
    rng = random.Random(int(hashlib.sha256(query_id.encode()).hexdigest()[:16], 16))
    out = list(items)
    rng.shuffle(out)
    return out


def windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) spans, back to front, covering every position."""
    if n <= size:
        return [(0, n)]
    spans, end = [], n
    while True:
        start = max(0, end - size)
        spans.append((start, end))
        if start == 0:
            return spans
        end -= stride


@dataclass
class QueryRanking:
    """The state of one query's sliding-window ranking: candidate keys in the current order."""

    order: list[str]
    placed: set[str] = field(default_factory=set)
    call_ids: dict[str, list[str]] = field(default_factory=dict)  # candidate -> calls of windows it was in
    window_log: list[dict] = field(default_factory=list)

    def apply(self, span: tuple[int, int], perm: Permutation, call_id: str) -> None:
        start, end = span
        shown = self.order[start:end]
        self.order[start:end] = [shown[i] for i in perm.order]
        self.placed.update(shown[i] for i in perm.placed)
        for key in shown:
            self.call_ids.setdefault(key, []).append(call_id)
        self.window_log.append(
            {"span": span, "shown": shown, "call_id": call_id, "status": perm.status, "repairs": perm.repairs}
        )
