"""Listwise ranking: requests, a permutation parser that never throws, and sliding windows.

No Dagster here. The sliding window runs back to front (RankGPT): the last `window` candidates are ranked
first, the window moves up by `stride`, and the best candidates bubble to the top.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from arhn_pipeline.engine.base import LLMEngine, LLMRequest, Sampling, Structured
from arhn_pipeline.engine.cache import CallSession, CallStats, CallStore, cached_generate
from arhn_pipeline.engine.prompts import PromptTemplate, passage_labels, planted, shown_labels
from arhn_pipeline.schema import frame_schema
from arhn_pipeline.vocab import ParseStatus, Role

TEMPLATE = PromptTemplate.load(Path(__file__).with_name("ranking.prompt.yaml"))
PARSER_VERSION = "permutation-parser-3"

PARSED, REPAIRED, ECHOED, DEGENERATE, PLANTED, UNPARSED = (
    ParseStatus.PARSED,
    ParseStatus.REPAIRED,
    ParseStatus.ECHOED,
    ParseStatus.DEGENERATE,
    ParseStatus.PLANTED,
    ParseStatus.UNPARSED,
)
T = TypeVar("T")

# Defaults of the stage's settings (RankingsConfig), here so that `arhn estimate` plans with the same ones.
WINDOW_SIZE = 20
STRIDE = 10
PASSAGE_MAX_TOKENS = 128

# A ranking of fewer candidates than this is not tested for echo: with 3, a third of all orders would be one.
ECHO_MIN_CANDIDATES = 4
# One identical answer to this many windows or more is no reading of the passages.
DEGENERATE_MIN_WINDOWS = 8


def schema(labels: tuple[str, ...]) -> dict[str, Any]:
    ranking = {"type": "array", "items": {"enum": list(labels)}, "maxItems": len(labels)}
    return {
        "type": "object",
        "properties": {"ranking": ranking},
        "required": ["ranking"],
        "additionalProperties": False,
    }


def answer_budget(n: int) -> int:
    return 16 + 7 * n  # a 4-character label in JSON takes up to 6 tokens


def build_request(query: str, passages: list[str]) -> LLMRequest:
    labels = passage_labels([query, *passages], len(passages))
    return LLMRequest(
        messages=TEMPLATE.render(query=query, passages=passages, labels=labels),
        template=TEMPLATE.name,
        template_version=TEMPLATE.version,
        sampling=Sampling(max_tokens=answer_budget(len(passages)), temperature=0.0),
        structured=Structured("json", schema(labels)),
        labels=labels,
        data=(query, *passages),
    )


@dataclass(frozen=True)
class Permutation:
    order: list[int]  # 0-based positions of the window, best first; always a full permutation
    placed: frozenset[int]  # positions the model itself put in the order (not appended by repair); empty
    #                         when the answer is no evidence (unparsed, echoed, degenerate)
    status: ParseStatus
    repairs: str = ""  # what the parser changed, or why the answer is no evidence, for the audit


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def parse_permutation(response: str, ids: int | tuple[str, ...], data: tuple[str, ...] = ()) -> Permutation:
    """Read a ranking of the window's passages (`ids`: their labels in the order shown, or n for 1..n); never
    throws. Keeps the identifiers in the model's order, drops duplicates and unknown ones, and appends what is
    missing in the original order. A ranking that repeats the order shown (or its reverse) is `echoed`, one
    that repeats a ranking written into the passages (`data`) is `planted`: neither says anything about the
    passages, so nothing is placed."""
    labels = shown_labels(ids)
    n = len(labels)
    position = {label: i for i, label in enumerate(labels)}
    if planted(response, data):
        return Permutation(list(range(n)), frozenset(), PLANTED, "the answer repeats a ranking planted in the data")
    text = _THINK.sub("", response).strip()
    notes = []
    try:
        value = json.loads(text)
        items = value["ranking"] if isinstance(value, dict) else value
        if not isinstance(items, list):
            raise TypeError
        raw = [str(x).strip() for x in items if isinstance(x, int | str) and not isinstance(x, bool)]
        if len(raw) != len(items):
            notes.append("dropped entries that are not identifiers")
    except (ValueError, TypeError, KeyError):
        numeric = all(label.isdigit() for label in labels)
        found = r"\d+" if numeric else r"\b[a-z0-9]{4}\b"
        raw = re.findall(found, text)
        if raw:
            notes.append("not JSON: read the identifiers in the text")
    seen: list[int] = []
    unknown, duplicates = [], []
    for ident in raw:
        if ident not in position:
            unknown.append(ident)
        elif position[ident] in seen:
            duplicates.append(ident)
        else:
            seen.append(position[ident])
    missing = [i for i in range(n) if i not in seen]
    if unknown:
        notes.append(f"dropped unknown ids {_shown(unknown)}")
    if duplicates:
        notes.append(f"dropped duplicate ids {_shown(duplicates)}")
    if missing and seen:
        notes.append(f"appended missing ids {_shown([labels[i] for i in missing])}")
    if not seen:
        return Permutation(list(range(n)), frozenset(), UNPARSED, "no usable identifier; original order kept")
    if is_echo(seen, n):
        return Permutation(list(range(n)), frozenset(), ECHOED, "the order shown (or its reverse) repeated")
    return Permutation(seen + missing, frozenset(seen), REPAIRED if notes else PARSED, "; ".join(notes))


def _shown(ids: list[str]) -> str:
    """[3, 7] for numeric ids (as the audit has always shown them), ['k7mq'] for labels."""
    return str([int(i) if i.isdigit() else i for i in ids])


def is_echo(seen: list[int], n: int) -> bool:
    """The identifiers the model gave are the shown order, or its reverse, from one end (at least two)."""
    k = len(seen)
    if n < ECHO_MIN_CANDIDATES or k < 2:
        return False
    return seen == list(range(k)) or seen == list(range(n - 1, n - 1 - k, -1))


def mark_degenerate(responses: list[str], perms: list[Permutation]) -> list[Permutation]:
    """When every window got one identical answer (at least DEGENERATE_MIN_WINDOWS), none is evidence (an
    answer that already is none, unparsed or echoed, keeps its status)."""
    if len(responses) < DEGENERATE_MIN_WINDOWS or len(set(responses)) != 1:
        return perms
    note = f"the same answer to all {len(responses)} windows"
    return [
        p if not p.status.is_evidence else Permutation(list(range(len(p.order))), frozenset(), DEGENERATE, note)
        for p in perms
    ]


def shuffled(items: list[T], query_id: str) -> list[T]:
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
    window_log: list[dict[str, Any]] = field(default_factory=list)

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


class RankingPlan:
    """Each query's candidates in their starting order and its window spans. Window k's content depends on
    the answers to windows before it, so requests are built one step at a time."""

    def __init__(
        self,
        pairs: pl.DataFrame,
        llm: LLMEngine,
        *,
        window_size: int = WINDOW_SIZE,
        stride: int = STRIDE,
        shuffle: bool = True,
        passage_max_tokens: int = PASSAGE_MAX_TOKENS,
    ):
        self.shown: dict[str, str] = {}
        self.states: dict[str, QueryRanking] = {}
        self.query_text: dict[str, str] = {}
        largest = pairs.group_by("query_id").len()["len"].max()
        size = min(window_size, int(largest) if isinstance(largest, int) else 1)
        budget = llm.passage_budget(passage_max_tokens, size, answer_budget(size))
        for (qid,), group in pairs.group_by("query_id", maintain_order=True):
            keys = group["passage_id"].to_list()
            self.query_text[qid] = group["query"][0]
            for key, text in zip(keys, group["passage"], strict=True):
                if key not in self.shown:
                    self.shown[key] = llm.truncate(text, budget)[0]
            self.states[qid] = QueryRanking(order=shuffled(keys, qid) if shuffle else keys)
        self.spans = {q: windows(len(s.order), window_size, stride) for q, s in self.states.items()}
        self.steps = max((len(s) for s in self.spans.values()), default=0)

    def requests(self, step: int) -> tuple[list[str], list[LLMRequest]]:
        active = [qid for qid in self.states if step < len(self.spans[qid])]
        out = []
        for qid in active:
            start, end = self.spans[qid][step]
            passages = [self.shown[k] for k in self.states[qid].order[start:end]]
            out.append(build_request(self.query_text[qid], passages))
        return active, out


def rank_partition(
    plan: RankingPlan, llm: LLMEngine, store: CallStore, batch_size: int, log: Callable[[str], None] | None = None
) -> tuple[dict[str, QueryRanking], CallStats]:
    """Rank every query's candidate set; window k of every query goes to the engine in one batch. One call
    session spans the steps: a wide query's hundreds of window steps cost no database round trip each."""
    states = plan.states
    total = CallStats()
    with CallSession() as session:
        for step in range(plan.steps):
            active, requests = plan.requests(step)
            calls, stats = cached_generate(store, llm, requests, batch_size, log=log, session=session)
            total.add(stats)
            spans = [plan.spans[qid][step] for qid in active]
            perms = [parse_permutation(c.response, r.labels, r.data) for c, r in zip(calls, requests, strict=True)]
            perms = mark_degenerate([c.response for c in calls], perms)
            for qid, call, span, perm in zip(active, calls, spans, perms, strict=True):
                states[qid].apply(span, perm, call.call_id)
    return states, total


def rank_by_scores(pairs: pl.DataFrame, scores: list[float], scorer_id: str) -> dict[str, QueryRanking]:
    """Each query's candidates ordered by a scorer's relevance scores (highest first; ties keep source order).
    Every candidate is placed: the scorer ranked them all."""
    states: dict[str, QueryRanking] = {}
    frame = pairs.select("query_id", "passage_id").with_columns(score=pl.Series(scores, dtype=pl.Float64))
    for (qid,), group in frame.group_by("query_id", maintain_order=True):
        keys = group["passage_id"].to_list()
        order = sorted(range(len(keys)), key=lambda i: -group["score"][i])
        state = QueryRanking(order=list(keys))
        note = "scores " + ", ".join(f"{group['score'][i]:.4f}" for i in order)
        state.apply((0, len(keys)), Permutation(order, frozenset(order), PARSED, note), call_id=scorer_id)
        states[qid] = state
    return states


RANK_ROWS = frame_schema("rankings")  # schema.py declares the columns
WINDOW_ROWS = frame_schema("ranking_windows")


def ranking_rows(
    subset: str, pairs: pl.DataFrame, states: dict[str, QueryRanking], model: str, version: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The `rankings` rows (every candidate's rank, whether the ranker placed it, the positive's best rank) and
    the `ranking_windows` rows (each request, what its parser repaired) of a partition's rankings."""
    rank_rows: list[dict[str, Any]] = []
    window_rows: list[dict[str, Any]] = []
    roles = dict(zip(zip(pairs["query_id"], pairs["passage_id"], strict=True), pairs["role"], strict=True))
    for qid, state in states.items():
        position = {key: i for i, key in enumerate(state.order)}
        positive_rank = min(r for key, r in position.items() if roles[(qid, key)] == Role.POSITIVE)
        for key, r in position.items():
            rank_rows.append(
                dict(
                    subset=subset,
                    query_id=qid,
                    passage_id=key,
                    role=roles[(qid, key)],
                    rank=r,
                    placed=key in state.placed,
                    positive_rank=positive_rank,
                    call_ids=state.call_ids[key],
                )
            )
        for i, w in enumerate(state.window_log):
            window_rows.append(
                dict(
                    subset=subset,
                    query_id=qid,
                    window_index=i,
                    span_start=w["span"][0],
                    span_end=w["span"][1],
                    shown=w["shown"],
                    status=str(w["status"]),
                    repairs=w["repairs"],
                    call_id=w["call_id"],
                    template_version=version,
                    model=model,
                )
            )
    ranks = pl.DataFrame(rank_rows, schema=RANK_ROWS)  # the schema holds for an empty partition too
    return ranks, pl.DataFrame(window_rows, schema=WINDOW_ROWS)
