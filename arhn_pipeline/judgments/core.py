"""RLHN's cascade without Dagster: the stages (embedding margin, scorer, LLM judge), a verdict parser that
never reads failure as "nothing flagged", and the cascade that sends each stage only what the stage before it
flagged."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import polars as pl

from arhn_pipeline import embeddings
from arhn_pipeline.engine.base import LLMEngine, LLMRequest, Sampling, Structured
from arhn_pipeline.engine.cache import CallStats, CallStore, cached_generate
from arhn_pipeline.engine.prompts import PromptTemplate, answer_value, passage_labels, planted, shown_labels
from arhn_pipeline.schema import frame_schema
from arhn_pipeline.vocab import Label, ParseStatus

PARSER_VERSION = "verdict-parser-3"
DEFAULT_PROMPT = Path(__file__).with_name("judge.prompt.yaml")
DEFAULT_TEMPLATE = PromptTemplate.load(DEFAULT_PROMPT)

BETTER, WORSE, NONE, UNPARSED = Label.BETTER, Label.WORSE, Label.NONE, Label.UNPARSED
# One identical answer to this many requests or more is no reading of the passages.
DEGENERATE_MIN_REQUESTS = 8


def schema(labels: tuple[str, ...]) -> dict[str, Any]:
    ids = {"type": "array", "items": {"enum": list(labels)}, "maxItems": len(labels)}
    return {
        "type": "object",
        "properties": {"better": ids, "worse": ids},
        "required": ["better", "worse"],
        "additionalProperties": False,
    }


def answer_budget(n: int) -> int:
    return 24 + 7 * n  # a 4-character label in JSON takes up to 6 tokens


def build_request(template: PromptTemplate, query: str, positive: str, negatives: list[str]) -> LLMRequest:
    labels = passage_labels([query, positive, *negatives], len(negatives))
    messages = template.render(query=query, positive=positive, negatives=negatives, labels=labels)
    text = messages[-1][1]
    # every window of the labels' lengths, in one pass over the prompt (not one pass per label: 5,000 negatives)
    shown = {text[i : i + n] for n in {len(label) for label in labels} for i in range(len(text) - n + 1)}
    if not all(label in shown for label in labels):
        raise ValueError(
            f"prompt template {template.name} does not show the passages' identifiers: name negative i with "
            "{{ labels[loop.index0] }} (see judgments/judge.prompt.yaml)"
        )
    return LLMRequest(
        messages=messages,
        template=template.name,
        template_version=template.version,
        sampling=Sampling(max_tokens=answer_budget(len(negatives)), temperature=0.0),
        structured=Structured("json", schema(labels)),
        labels=labels,
        data=(query, positive, *negatives),
    )


@dataclass(frozen=True)
class Verdict:
    labels: list[Label]  # per negative: better | worse | none; unparsed for all when the answer is no evidence
    status: ParseStatus  # parsed | repaired | degenerate | unparsed
    notes: str = ""

    @property
    def flagged(self) -> bool:
        """Sent on to the next stage: flagged something, or is no evidence (never "nothing flagged")."""
        return not self.status.is_evidence or any(label in (BETTER, WORSE) for label in self.labels)


def no_evidence(n: int, status: ParseStatus, notes: str) -> Verdict:
    return Verdict([UNPARSED] * n, status, notes)


def parse_verdict(response: str, ids: int | tuple[str, ...], data: tuple[str, ...] = ()) -> Verdict:
    """Read {"better": [...], "worse": [...]} over the negatives (`ids`: their labels in the order shown, or n
    for the numbers 1..n); never throws. An answer repeating a verdict written into the data is `planted`."""
    labels_shown = shown_labels(ids)
    numeric = isinstance(ids, int)
    n = len(labels_shown)
    if planted(response, data):
        return no_evidence(n, ParseStatus.PLANTED, "the answer repeats a verdict planted in the data")
    value = answer_value(response)
    try:
        assert isinstance(value, dict)
        lists = {k: value[k] for k in (BETTER, WORSE)}
        if not all(isinstance(v, list) for v in lists.values()):
            raise TypeError
    except (AssertionError, TypeError, KeyError):
        return no_evidence(n, ParseStatus.UNPARSED, "answer is not {better: [...], worse: [...]}")
    position = {label: i for i, label in enumerate(labels_shown)}
    labels: list[Label] = [NONE] * n
    notes = []
    for kind in (WORSE, BETTER):  # an id in both lists counts as better
        for ident in lists[kind]:
            key = _identifier(ident, numeric)
            if key in position:
                labels[position[key]] = kind
            else:
                notes.append(f"dropped unknown id {ident!r} from {kind}")
    both = {str(i) for i in lists[BETTER] if isinstance(i, int | str)} & {
        str(i) for i in lists[WORSE] if isinstance(i, int | str)
    }
    if both:
        notes.append(f"ids in both lists counted as better: {sorted(both)}")
    if n >= 2 and all(label != NONE for label in labels):
        return no_evidence(n, ParseStatus.DEGENERATE, f"flags all {n} negatives: {response[:80]!r}")
    return Verdict(labels, ParseStatus.REPAIRED if notes else ParseStatus.PARSED, "; ".join(notes))


def _identifier(ident: object, numeric: bool) -> str | None:
    """An answer's identifier as the prompt wrote it: an integer under 1..n numbering, a string under labels."""
    if numeric:
        return str(ident) if type(ident) is int else None
    return ident if isinstance(ident, str) else None


def mark_degenerate(responses: list[str], verdicts: list[Verdict]) -> list[Verdict]:
    """When every request got one identical answer (at least DEGENERATE_MIN_REQUESTS), none is evidence."""
    if len(responses) < DEGENERATE_MIN_REQUESTS or len(set(responses)) != 1:
        return verdicts
    note = f"the same answer to all {len(responses)} requests: {responses[0][:80]!r}"
    return [
        v if v.status == ParseStatus.UNPARSED else no_evidence(len(v.labels), ParseStatus.DEGENERATE, note)
        for v in verdicts
    ]


class QuerySet:
    """A partition's queries with their first positive and their negatives, in source order."""

    def __init__(self, pairs: pl.DataFrame):
        self.query: dict[str, str] = {}
        self.positive: dict[str, str] = {}
        self.positives: dict[str, list[str]] = {}
        self.negatives: dict[str, list[tuple[str, str]]] = {}
        for row in pairs.iter_rows(named=True):
            qid = row["query_id"]
            self.query[qid] = row["query"]
            if row["role"] == "positive":
                self.positive.setdefault(qid, row["passage"])
                self.positives.setdefault(qid, []).append(row["passage"])
            else:
                self.negatives.setdefault(qid, []).append((row["passage_id"], row["passage"]))


def margin_label_sets(
    model: Any, items: list[tuple[str, list[str], list[str]]], margin: float
) -> list[tuple[list[Label], list[float]]]:
    """`margin_labels` for each (query, positives, negatives) of a set, with an embedding model: every distinct
    passage and every query encoded once, in batches."""
    from arhn_pipeline.embeddings import encode_unique

    index, passage_vecs = encode_unique(model, [t for _, pos, neg in items for t in pos + neg], query=False)
    q_index, query_vecs = encode_unique(model, [q for q, _, _ in items], query=True)

    def vecs(passages: list[str]) -> np.ndarray:
        return np.stack([passage_vecs[index[t]] for t in passages])

    return [margin_labels(query_vecs[q_index[q]], vecs(pos), vecs(neg), margin) for q, pos, neg in items]


def margin_labels(
    query_vec: np.ndarray, pos_vecs: np.ndarray, neg_vecs: np.ndarray, margin: float
) -> tuple[list[Label], list[float]]:
    """NV-Retriever's positive-aware rule: a negative whose cosine to the query is at least (1 - margin) x the
    positive's is suspicious ("worse"); at or above the positive's own score it is "better". Vectors are
    unit-normalized; with several positives the best one counts."""
    pos_score = float(np.max(pos_vecs @ query_vec))
    scores = (neg_vecs @ query_vec).astype(float).tolist()
    labels = [BETTER if s >= pos_score else WORSE if s >= (1 - margin) * pos_score else NONE for s in scores]
    return labels, scores


@dataclass(frozen=True)
class StageResult:
    """One stage's verdict on one query's negatives, and what it rests on."""

    verdict: Verdict
    scores: list[float] | None = None  # margin and scorer stages: each negative's score
    call_id: str | None = None  # LLM stages -> llm_calls (with several samples: the first; notes name the rest)
    template_version: str | None = None
    vote_margins: list[float] | None = None  # several samples: per negative, (top votes - runner-up) / samples


class StageSpec(Protocol):
    """What the cascade reads of a stage's configuration (judgments.assets.CascadeStage)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


S = TypeVar("S", bound=StageSpec)


def run_margin_stage(qs: QuerySet, active: list[str], model_name: str | None, margin: float) -> dict[str, StageResult]:
    model = embeddings.load(model_name or embeddings.DEFAULT_EMBEDDER)
    items = [(qs.query[q], qs.positives[q], [t for _, t in qs.negatives[q]]) for q in active]
    return {
        qid: StageResult(Verdict(labels, ParseStatus.PARSED), scores=scores)
        for qid, (labels, scores) in zip(active, margin_label_sets(model, items, margin), strict=True)
    }


def run_trained_stage(
    qs: QuerySet, active: list[str], judge: Any, notes: dict[str, Any] | None = None
) -> dict[str, StageResult]:
    """A trained judge (trained_judge/core.py) on each negative with the query's first positive: flagged at or
    above its threshold; `better` when the negative is closer to the query than the positive, else `worse`.
    `notes` (when given) gets the pairs judged and the share the whole judge saw (below 1 for a cascaded judge)."""
    from arhn_pipeline.trained_judge.core import Triple

    triples = [Triple(qs.query[q], qs.positive[q], t) for q in active for _, t in qs.negatives[q]]
    judged = judge.judge(triples) if triples else None
    if notes is not None:
        notes["trained_judge_pairs"] = len(triples)
        notes["trained_judge_whole_share"] = round(float(judged.whole.mean()), 4) if judged is not None else 0.0
    decision = judged.value if judged is not None else []
    out, i = {}, 0
    for qid in active:
        labels, scores = [], []
        for _ in qs.negatives[qid]:
            flagged = decision[i] >= judge.threshold
            margin = judged.margin[i] if judged is not None else 0.0  # the first embedder's that saw it
            labels.append(BETTER if flagged and margin >= 0 else WORSE if flagged else NONE)
            scores.append(float(decision[i]))
            i += 1
        out[qid] = StageResult(Verdict(labels, ParseStatus.PARSED), scores=scores)
    return out


def judge_requests(
    qs: QuerySet, active: list[str], template: PromptTemplate, llm: LLMEngine, passage_max_tokens: int
) -> list[LLMRequest]:
    """One request per query: its query, first positive and every negative, each cut to fit."""
    requests = []
    for qid in active:
        n = len(qs.negatives[qid])
        budget = llm.passage_budget(passage_max_tokens, n + 1, answer_budget(n))
        cut = [llm.truncate(t, budget)[0] for _, t in qs.negatives[qid]]
        positive = llm.truncate(qs.positive[qid], budget)[0]
        requests.append(build_request(template, qs.query[qid], positive, cut))
    return requests


def sampled(requests: list[LLMRequest], samples: int, temperature: float) -> list[LLMRequest]:
    """Each request `samples` times in a row (seeds 0..samples-1 at `temperature`); as they are when 1."""
    if samples == 1:
        return requests
    return [
        replace(r, sampling=replace(r.sampling, temperature=temperature, seed=k))
        for r in requests
        for k in range(samples)
    ]


def vote(verdicts: list[Verdict]) -> tuple[Verdict, list[float]]:
    """The majority verdict of several samples, per negative, and each negative's vote margin: (votes for the
    winner - votes for the runner-up) / samples; a sample that is no evidence votes for nothing. A tie is no
    majority: `none` when a flag ties with `none` (no relabel without a majority), `worse` between the flags.
    No evidence in any sample: the stage has no verdict (unparsed, margin 0)."""
    samples = len(verdicts)
    evidence = [v for v in verdicts if v.status.is_evidence]
    n = len(verdicts[0].labels)
    if not evidence:
        return verdicts[0], [0.0] * n
    labels: list[Label] = []
    margins: list[float] = []
    for i in range(n):
        counts = Counter(v.labels[i] for v in evidence)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], (NONE, WORSE, BETTER).index(kv[0])))
        top, first = ranked[0]
        second = ranked[1][1] if len(ranked) > 1 else 0
        labels.append(top)
        margins.append((first - second) / samples)
    status = ParseStatus.PARSED if all(v.status == ParseStatus.PARSED for v in evidence) else ParseStatus.REPAIRED
    note = f"majority of {samples} samples ({len(evidence)} with evidence)"
    return Verdict(labels, status, note), margins


def run_llm_stage(
    qs: QuerySet,
    active: list[str],
    template: PromptTemplate,
    llm: LLMEngine,
    store: CallStore,
    batch_size: int,
    passage_max_tokens: int,
    log: Callable[[str], None] | None = None,
    samples: int = 1,
    temperature: float = 0.7,
) -> tuple[dict[str, StageResult], CallStats]:
    """The LLM judge on each active query; with `samples` > 1 each query is asked that many times (at
    `temperature`, seeds 0..samples-1) and the majority verdict stands, with its vote margins."""
    requests = sampled(judge_requests(qs, active, template, llm, passage_max_tokens), samples, temperature)
    calls, stats = cached_generate(store, llm, requests, batch_size, log=log)
    verdicts = [parse_verdict(c.response, r.labels, r.data) for c, r in zip(calls, requests, strict=True)]
    verdicts = mark_degenerate([c.response for c in calls], verdicts)
    out = {}
    for j, qid in enumerate(active):
        mine = slice(j * samples, (j + 1) * samples)
        if samples == 1:
            out[qid] = StageResult(verdicts[j], call_id=calls[j].call_id, template_version=template.version)
            continue
        verdict, margins = vote(verdicts[mine])
        ids = [c.call_id for c in calls[mine]]
        verdict = replace(verdict, notes=f"{verdict.notes}; calls {', '.join(ids)}")
        out[qid] = StageResult(verdict, call_id=ids[0], template_version=template.version, vote_margins=margins)
    return out, stats


@dataclass
class CascadeResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # verdict rows, as the `verdicts` table has them
    summary: list[tuple[Any, ...]] = field(default_factory=list)  # per stage: what it saw, flagged, said
    stats: CallStats = field(default_factory=CallStats)


def run_cascade(
    qs: QuerySet,
    stages: Sequence[S],
    run_stage: Callable[[S, list[str]], tuple[dict[str, StageResult], str, CallStats | None]],
    subset: str,
) -> CascadeResult:
    """Stage 1 sees every query; stage k+1 sees only what stage k flagged (or could not read), and its
    verdict replaces stage k's. `run_stage(stage, active)` returns each query's result, the model id, and the
    call statistics of an LLM stage."""
    out = CascadeResult()
    active = list(qs.query)
    for k, stage in enumerate(stages):
        if not active:
            break
        results, model_id, stats = run_stage(stage, active)
        if stats is not None:
            out.stats.add(stats)
        forwarded = [q for q in active if results[q].verdict.flagged]
        last = k == len(stages) - 1
        for qid in active:
            r = results[qid]
            for i, (pid, _) in enumerate(qs.negatives[qid]):
                out.rows.append(
                    dict(
                        subset=subset,
                        stage_index=k,
                        stage=stage.name,
                        query_id=qid,
                        passage_id=pid,
                        verdict=str(r.verdict.labels[i]),
                        score=r.scores[i] if r.scores else None,
                        status=str(r.verdict.status),
                        notes=r.verdict.notes or None,
                        call_id=r.call_id,
                        model=model_id,
                        template_version=r.template_version,
                        final=last or qid not in forwarded,
                        vote_margin=r.vote_margins[i] if r.vote_margins else None,
                    )
                )
        labels = [lab for q in active for lab in results[q].verdict.labels]
        out.summary.append(
            (
                stage.name,
                stage.kind,
                len(active),
                len(forwarded),
                *(labels.count(v) for v in (BETTER, WORSE, NONE, UNPARSED)),
            )
        )
        active = forwarded
    return out


VERDICT_SCHEMA = frame_schema("verdicts")  # schema.py declares the columns
