"""Cascade judging without Dagster: requests, a verdict parser that never reads failure as "nothing
flagged", and the margin stage's scoring."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from arhn_pipeline.engine.base import LLMRequest, Sampling, Structured
from arhn_pipeline.engine.prompts import PromptTemplate

PARSER_VERSION = "verdict-parser-1"
DEFAULT_PROMPT = Path(__file__).with_name("judge.prompt.yaml")

BETTER, WORSE, NONE, UNPARSED = "better", "worse", "none", "unparsed"


def schema(n: int) -> dict:
    ids = {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": n}, "maxItems": n}
    return {
        "type": "object",
        "properties": {"better": ids, "worse": ids},
        "required": ["better", "worse"],
        "additionalProperties": False,
    }


def answer_budget(n: int) -> int:
    return 24 + 4 * n


def build_request(template: PromptTemplate, query: str, positive: str, negatives: list[str]) -> LLMRequest:
    n = len(negatives)
    return LLMRequest(
        messages=template.render(query=query, positive=positive, negatives=negatives),
        template=template.name,
        template_version=template.version,
        sampling=Sampling(max_tokens=answer_budget(n), temperature=0.0),
        structured=Structured("json", schema(n)),
    )


@dataclass(frozen=True)
class Verdict:
    labels: list[str]  # per negative: better | worse | none, or unparsed for all when the answer is unreadable
    status: str  # parsed | repaired | unparsed
    notes: str = ""

    @property
    def flagged(self) -> bool:
        """Sent on to the next stage: flagged something, or could not be read (never "nothing flagged")."""
        return self.status == UNPARSED or any(label in (BETTER, WORSE) for label in self.labels)


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def parse_verdict(response: str, n: int) -> Verdict:
    """Read {"better": [...], "worse": [...]} over negatives 1..n; never throws."""
    text = _THINK.sub("", response).strip()
    if text.startswith("```"):
        text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    try:
        value = json.loads(text)
        lists = {k: value[k] for k in (BETTER, WORSE)}
        if not all(isinstance(v, list) for v in lists.values()):
            raise TypeError
    except (ValueError, TypeError, KeyError):
        return Verdict([UNPARSED] * n, UNPARSED, "answer is not {better: [...], worse: [...]}")
    labels = [NONE] * n
    notes = []
    for kind in (WORSE, BETTER):  # a number in both lists counts as better
        for ident in lists[kind]:
            if isinstance(ident, int) and 1 <= ident <= n:
                labels[ident - 1] = kind
            else:
                notes.append(f"dropped unknown id {ident!r} from {kind}")
    both = set(lists[BETTER]) & set(lists[WORSE])
    if both:
        notes.append(f"ids in both lists counted as better: {sorted(both)}")
    return Verdict(labels, "repaired" if notes else "parsed", "; ".join(notes))


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
    model, items: list[tuple[str, list[str], list[str]]], margin: float
) -> list[tuple[list[str], list[float]]]:
    """`margin_labels` for each (query, positives, negatives) of a set, with an embedding model: every distinct
    passage and every query encoded once, in batches."""
    texts = sorted({t for _, pos, neg in items for t in pos + neg})
    index = {t: i for i, t in enumerate(texts)}
    passage_vecs = model.encode(texts, normalize_embeddings=True, batch_size=64, convert_to_numpy=True)
    query_vecs = model.encode([q for q, _, _ in items], normalize_embeddings=True, convert_to_numpy=True)

    def vecs(passages: list[str]) -> np.ndarray:
        return np.stack([passage_vecs[index[t]] for t in passages])

    return [margin_labels(q, vecs(pos), vecs(neg), margin) for q, (_, pos, neg) in zip(query_vecs, items, strict=True)]


def margin_labels(
    query_vec: np.ndarray, pos_vecs: np.ndarray, neg_vecs: np.ndarray, margin: float
) -> tuple[list[str], list[float]]:
    """NV-Retriever's positive-aware rule: a negative whose cosine to the query is at least (1 - margin) x the
    positive's is suspicious ("worse"); at or above the positive's own score it is "better". Vectors are
    unit-normalized; with several positives the best one counts."""
    pos_score = float(np.max(pos_vecs @ query_vec))
    scores = (neg_vecs @ query_vec).astype(float).tolist()
    labels = [BETTER if s >= pos_score else WORSE if s >= (1 - margin) * pos_score else NONE for s in scores]
    return labels, scores
