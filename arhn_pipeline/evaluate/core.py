"""Dense retrieval over a BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) and its scores
with ir-measures (nDCG@10, R@100; trec_eval's definitions through pytrec_eval)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

MEASURES = ("nDCG@10", "R@100")


def eval_set_path(folder: str) -> Path:
    """An eval set's folder as configured: absolute, or relative to the project."""
    from arhn_pipeline import settings

    path = Path(folder)
    return path if path.is_absolute() else settings.PROJECT_ROOT / path


def load_beir(folder: Path, split: str = "test") -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            corpus[str(d["_id"])] = (d.get("title") or "").strip() + (" " if d.get("title") else "") + d["text"]
    with (folder / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            q = json.loads(line)
            queries[str(q["_id"])] = q["text"]
    with (folder / "qrels" / f"{split}.tsv").open(encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        next(reader)
        for qid, did, score in reader:
            qrels.setdefault(qid, {})[did] = int(score)
    return corpus, {q: queries[q] for q in qrels if q in queries}, qrels


def retrieve(
    model: Any,
    corpus: dict[str, str],
    queries: dict[str, str],
    k: int = 100,
    query_prefix: str = "",
    passage_prefix: str = "",
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    def encode(texts: list[str]) -> Any:
        return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)

    doc_ids, qids = list(corpus), list(queries)
    docs = encode([passage_prefix + corpus[d] for d in doc_ids])
    qs = encode([query_prefix + queries[q] for q in qids])
    scores = qs @ docs.T
    run = {}
    for i, qid in enumerate(qids):
        # k + 1 so that dropping an identical id still leaves k results
        top = np.argsort(-scores[i])[: k + 1]
        run[qid] = {doc_ids[j]: float(scores[i, j]) for j in top}
    return run


def cached_retrieve(
    location: str,
    folder: Path,
    split: str,
    corpus: dict[str, str],
    queries: dict[str, str],
    k: int = 100,
    query_prefix: str = "",
    passage_prefix: str = "",
) -> dict[str, dict[str, float]]:
    """`retrieve` with a model that does not change (the untrained base model, a reranker's first stage),
    kept under var/first_stage/ keyed by the model, the eval set's files and the settings: encoding a corpus
    is the slow part of an evaluation, and the retriever and reranker evaluations need the same run."""
    import hashlib

    from sentence_transformers import SentenceTransformer

    from arhn_pipeline import settings

    files = [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"]
    key = json.dumps(
        [location, [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files], k, query_prefix, passage_prefix]
    )
    path = settings.var_dir() / "first_stage" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    model = SentenceTransformer(location, device="cpu")
    run = retrieve(model, corpus, queries, k=k, query_prefix=query_prefix, passage_prefix=passage_prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run), encoding="utf-8")
    tmp.replace(path)
    return run


def score(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], ignore_identical_ids: bool = True, k: int = 100
) -> dict[str, float]:
    """Mean nDCG@10 and R@100 over the queries with qrels. With `ignore_identical_ids` (BEIR's rule, for sets
    such as ArguAna where a query is also a corpus document) a retrieved document whose id equals the
    query's id is dropped."""
    import ir_measures

    cleaned = {}
    for qid, docs in run.items():
        kept = {d: s for d, s in docs.items() if not (ignore_identical_ids and d == qid)}
        cleaned[qid] = dict(sorted(kept.items(), key=lambda x: -x[1])[:k])
    qrel_rows = [ir_measures.Qrel(q, d, r) for q, docs in qrels.items() for d, r in docs.items()]
    run_rows = [ir_measures.ScoredDoc(q, d, s) for q, docs in cleaned.items() for d, s in docs.items()]
    agg = ir_measures.calc_aggregate([ir_measures.parse_measure(m) for m in MEASURES], qrel_rows, run_rows)
    return {str(m): float(v) for m, v in agg.items()}
