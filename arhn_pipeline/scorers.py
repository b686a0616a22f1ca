"""Relevance scorers: a number per (query, passage), higher = more relevant, without an LLM. They rank
candidates (`rankings` with ranker=scorer) and judge hard negatives (a `scorer` stage of the cascade).

A scorer is named by a string:
  - `all-MiniLM-L6-v2` (the packaged default) or any sentence-transformers model name or folder: a bi-encoder,
    score = cosine of the query's and the passage's embeddings (encode_query / encode_document, so models
    with prompts such as EmbeddingGemma get theirs);
  - `cross:<name or folder>`: a sentence-transformers CrossEncoder, score = its relevance logit;
  - `judge:<name>`: a trained false-negative judge (trained_judge/core.py), score = its decision value for a
    negative against the query's first positive; the positives score the judge's threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import polars as pl

from arhn_pipeline import embeddings
from arhn_pipeline.embeddings import encode_unique

CROSS = "cross:"
JUDGE = "judge:"
DEFAULT_SCORER = "judge:dl19_dl20"


@dataclass(frozen=True)
class Scorer:
    scorer_id: str
    model: Any
    kind: str  # bi | cross | judge

    def score_pairs(self, pairs: pl.DataFrame) -> list[float]:
        """One score per row of a partition's pairs (store.load_pairs: query_id, query, role, passage)."""
        if self.kind == "judge":
            return judge_scores(self.model, pairs)
        return self.score(pairs["query"].to_list(), pairs["passage"].to_list())

    def score(self, queries: list[str], passages: list[str]) -> list[float]:
        """One score per (queries[i], passages[i]); each distinct text is encoded once."""
        if self.kind == "judge":
            raise ValueError("a judge scores a candidate against the query's positive: use score_pairs")
        if self.kind == "cross":
            return [float(s) for s in self.model.predict(list(zip(queries, passages, strict=True)), batch_size=32)]
        q_index, q_vecs = encode_unique(self.model, queries, query=True)
        p_index, p_vecs = encode_unique(self.model, passages, query=False)
        return [float(q_vecs[q_index[q]] @ p_vecs[p_index[p]]) for q, p in zip(queries, passages, strict=True)]


def judge_scores(judge: Any, pairs: pl.DataFrame) -> list[float]:
    """A judge ranks a negative by its decision value against the query's first positive; the positives sit at
    the judge's threshold, so a negative ranks above them exactly when the judge calls it a false negative."""
    from arhn_pipeline.trained_judge.core import Triple

    positives = pairs.filter(pl.col("role") == "positive")
    first_positive = positives.group_by("query_id", maintain_order=True).agg(pl.col("passage").first())
    positive = dict(first_positive.iter_rows())
    rows = list(pairs.select("query_id", "query", "passage", "role").iter_rows())
    negatives = [Triple(q, positive[qid], p) for qid, q, p, role in rows if role != "positive"]
    decided = iter(judge.judge(negatives).value if negatives else [])
    return [judge.threshold if role == "positive" else float(next(decided)) for *_, role in rows]


@lru_cache(maxsize=4)
def load(name: str) -> Scorer:
    if name.startswith(CROSS):
        from sentence_transformers import CrossEncoder

        path = name[len(CROSS) :]
        return Scorer(name, CrossEncoder(embeddings.model_location(path), device=embeddings.device()), "cross")
    if name.startswith(JUDGE):
        from arhn_pipeline import settings
        from arhn_pipeline.trained_judge.core import JudgeModel, judge_path

        judge = JudgeModel.load(judge_path(name[len(JUDGE) :], settings.judges_dir()))
        return Scorer(f"{name}@{judge.identity}", judge, "judge")
    return Scorer(f"bi:{name}", embeddings.load(name), "bi")
