"""Relevance scorers: a number per (query, passage), higher = more relevant, without an LLM. They rank
candidates (`rankings` with ranker=scorer) and judge hard negatives (a `scorer` stage of the cascade).

A scorer is named by a string:
  - `all-MiniLM-L6-v2` (the packaged default) or any sentence-transformers model name or folder: a bi-encoder,
    score = cosine of the query's and the passage's embeddings (encode_query / encode_document, so models
    with prompts such as EmbeddingGemma get theirs);
  - `cross:<name or folder>`: a sentence-transformers CrossEncoder, score = its relevance logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from arhn_pipeline import embeddings

DEFAULT_SCORER = embeddings.DEFAULT_EMBEDDER
CROSS = "cross:"


@dataclass(frozen=True)
class Scorer:
    scorer_id: str
    model: Any
    cross: bool

    def score(self, queries: list[str], passages: list[str]) -> list[float]:
        """One score per (queries[i], passages[i]); each distinct text is encoded once."""
        if self.cross:
            return [float(s) for s in self.model.predict(list(zip(queries, passages, strict=True)), batch_size=32)]
        q_index, q_vecs = encode_unique(self.model, queries, query=True)
        p_index, p_vecs = encode_unique(self.model, passages, query=False)
        return [float(q_vecs[q_index[q]] @ p_vecs[p_index[p]]) for q, p in zip(queries, passages, strict=True)]


def encode_unique(model: Any, texts: list[str], query: bool) -> tuple[dict[str, int], np.ndarray]:
    """Unit vectors of the distinct texts, and each text's row."""
    unique = list(dict.fromkeys(texts))
    encode = model.encode_query if query and hasattr(model, "encode_query") else model.encode
    if not query and hasattr(model, "encode_document"):
        encode = model.encode_document
    vecs = encode(unique, normalize_embeddings=True, batch_size=32, convert_to_numpy=True)
    return {t: i for i, t in enumerate(unique)}, np.asarray(vecs)


@lru_cache(maxsize=4)
def load(name: str) -> Scorer:
    if name.startswith(CROSS):
        from sentence_transformers import CrossEncoder

        path = name[len(CROSS) :]
        return Scorer(name, CrossEncoder(embeddings.model_location(path), device=embeddings.device()), cross=True)
    return Scorer(f"bi:{name}", embeddings.load(name), cross=False)
