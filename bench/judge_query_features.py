"""Features of a hard negative relative to the other negatives of its query, as candidates for the trained judge:
on TREC DL's judged hard negatives, trained on one year and scored on the other (threshold: the kappa-best on the
training year), each added to the two dense embedders' eight similarities. Also the kappa that the threshold
chosen on the year scored would give (the ceiling of the features, not of the threshold).

    .venv/bin/python bench/judge_query_features.py    # needs ../shared/data; about 20 minutes on 2 cores

Every negative of a query (judged or not: 30 per query) is embedded, so per-query statistics see them all; the
vectors are kept in var/bench/judge_query_vectors.npz for the next run.
"""

from __future__ import annotations

import json

import numpy as np

from arhn_pipeline import embeddings, settings
from arhn_pipeline.embeddings import encode_unique
from arhn_pipeline.trained_judge import core

DENSE = (embeddings.EMBEDDINGGEMMA, embeddings.DEFAULT_EMBEDDER)


def vectors() -> dict[str, np.ndarray]:
    cache = settings.var_dir() / "bench" / "judge_query_vectors.npz"
    if cache.is_file():
        return dict(np.load(cache))
    out = {}
    for y in ("dl19", "dl20"):
        path = settings.shared_data_dir() / "judged" / f"trec_{y}_bm25_hardneg_human_grades.jsonl"
        rows = [json.loads(line) for line in path.open(encoding="utf-8")]
        qi, negs, ranks, grades = [], [], [], []
        for i, r in enumerate(rows):
            for n, g, rank in zip(r["neg"], r["neg_human_grades"], r["neg_bm25_ranks"], strict=True):
                qi.append(i), negs.append(n), ranks.append(rank), grades.append(-1 if g is None else g)
        out[f"{y}_qi"], out[f"{y}_rank"], out[f"{y}_grade"] = np.array(qi), np.array(ranks), np.array(grades)
        for e in DENSE:
            model = embeddings.load(e)
            model.max_seq_length = 256
            q_index, q = encode_unique(model, [r["query"] for r in rows], query=True)
            p_index, p = encode_unique(model, [r["pos"][0] for r in rows] + negs, query=False)
            out[f"{y}_{e}_q"] = q[[q_index[r["query"]] for r in rows]]
            out[f"{y}_{e}_pos"] = p[[p_index[r["pos"][0]] for r in rows]]
            out[f"{y}_{e}_neg"] = p[[p_index[n] for n in negs]]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def features(d: dict[str, np.ndarray], y: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    qi, rank, grade = d[f"{y}_qi"], d[f"{y}_rank"], d[f"{y}_grade"]
    counts = np.bincount(qi)
    f: dict[str, np.ndarray] = {}
    for e in DENSE:
        q, pos, neg = d[f"{y}_{e}_q"][qi], d[f"{y}_{e}_pos"][qi], d[f"{y}_{e}_neg"]
        q_neg, q_pos, neg_pos = (q * neg).sum(1), (q * pos).sum(1), (neg * pos).sum(1)
        k = e[:5]
        f[f"{k}:q_neg"], f[f"{k}:q_pos"], f[f"{k}:neg_pos"], f[f"{k}:margin"] = q_neg, q_pos, neg_pos, q_neg - q_pos
        for name, v in (("q_neg", q_neg), ("neg_pos", neg_pos)):
            mean = np.bincount(qi, v) / counts
            sd = np.sqrt(np.maximum(np.bincount(qi, v * v) / counts - mean**2, 1e-9))
            top = np.full(qi.max() + 1, -9.0)
            np.maximum.at(top, qi, v)
            pct = np.zeros(len(v))
            for i in np.unique(qi):
                m = qi == i
                pct[m] = v[m].argsort().argsort() / (m.sum() - 1)
            f[f"{k}:{name}_z"], f[f"{k}:{name}_qmean"] = (v - mean[qi]) / sd[qi], mean[qi]
            f[f"{k}:{name}_tomax"], f[f"{k}:{name}_pct"] = v - top[qi], pct
        others = np.zeros(len(neg))
        for i in np.unique(qi):
            m = np.where(qi == i)[0]
            others[m] = ((neg[m] @ neg[m].T).sum(1) - 1) / (len(m) - 1)
        f[f"{k}:neg_negs"] = others
    f["logrank"] = np.log(rank)
    judged = grade >= 0
    return {k: v[judged] for k, v in f.items()}, grade[judged] >= 2


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    d = vectors()
    data = {y: features(d, y) for y in ("dl19", "dl20")}

    def kappas(names: list[str], oracle: bool = False) -> list[float]:
        out = []
        for train, test in (("dl20", "dl19"), ("dl19", "dl20")):
            (f_tr, y_tr), (f_te, y_te) = data[train], data[test]
            x_tr, x_te = np.stack([f_tr[n] for n in names], 1), np.stack([f_te[n] for n in names], 1)
            mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-9
            m = LogisticRegression(C=1.0, max_iter=5000).fit((x_tr - mu) / sd, y_tr)
            s_tr, s_te = m.decision_function((x_tr - mu) / sd), m.decision_function((x_te - mu) / sd)
            t = core.best_threshold(s_te, y_te) if oracle else core.best_threshold(s_tr, y_tr)
            out.append(core.kappa(y_te, s_te >= t))
        return out

    base = [f"{e[:5]}:{f}" for e in DENSE for f in core.FEATURES]
    print(f"{'the eight similarities':38} DL19 {kappas(base)[0]:.3f}  DL20 {kappas(base)[1]:.3f}")
    ceiling = kappas(base, oracle=True)
    print(f"{'  threshold chosen on the year scored':38} DL19 {ceiling[0]:.3f}  DL20 {ceiling[1]:.3f}")
    for name in data["dl19"][0]:
        if name not in base:
            k19, k20 = kappas([*base, name])
            print(f"{'  + ' + name:38} DL19 {k19:.3f}  DL20 {k20:.3f}")


if __name__ == "__main__":
    main()
