"""Which features make a CPU false-negative judge: every single similarity and a few learners, on TREC DL's
judged hard negatives, trained on one year and scored on the other (the threshold is the kappa-best on the
training year). Prints AUC and Cohen's kappa per candidate; the shipped judge is `logreg, all three`
(EmbeddingGemma-300M, all-MiniLM-L6-v2, SPLADE-tiny).

    .venv/bin/python bench/judge_features.py        # needs ../shared/data; about 15 minutes on 2 cores
"""

from __future__ import annotations

import json
import time

import numpy as np

from arhn_pipeline import embeddings, settings
from arhn_pipeline.trained_judge import core


def judged(name: str) -> tuple[list[core.Triple], np.ndarray]:
    """A TREC DL year's graded hard negatives: (query, first positive, negative) and grade >= 2."""
    path = settings.shared_data_dir() / "judged" / f"trec_{name}_bm25_hardneg_human_grades.jsonl"
    triples, labels = [], []
    for line in path.open(encoding="utf-8"):
        row = json.loads(line)
        for neg, grade in zip(row["neg"], row["neg_human_grades"], strict=True):
            if grade is not None:
                triples.append(core.Triple(row["query"], row["pos"][0], neg))
                labels.append(grade >= 2)
    return triples, np.asarray(labels)


def year(name: str) -> tuple[np.ndarray, np.ndarray]:
    triples, labels = judged(name)
    return core.features(triples, core.DEFAULT_EMBEDDERS), labels


def auc(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(s)
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    pos = y.sum()
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def main() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import PolynomialFeatures

    t0 = time.perf_counter()
    data = {name: year(name) for name in ("dl19", "dl20")}
    seconds = time.perf_counter() - t0
    pairs = sum(len(y) for _, y in data.values())
    print(f"features of {pairs} judged negatives (all embedders) in {seconds:.0f} s: {pairs / seconds:.2f} pairs/s")
    names = [f"{e}:{f}" for e in core.DEFAULT_EMBEDDERS for f in core.FEATURES]

    def scored(fit_score) -> str:
        out = []
        for train, test in (("dl20", "dl19"), ("dl19", "dl20")):
            (x_tr, y_tr), (x_te, y_te) = data[train], data[test]
            s_tr, s_te = fit_score(x_tr, y_tr, x_te)
            t = core.best_threshold(s_tr, y_tr)
            out.append(f"{test}: AUC {auc(y_te, s_te):.3f} kappa {core.kappa(y_te, s_te >= t):.3f}")
        return " | ".join(out)

    for i, name in enumerate(names):
        print(f"{name:38} {scored(lambda a, y, b, i=i: (a[:, i], b[:, i]))}")

    def logreg(cols, poly=False):
        def fit_score(a, y, b):
            mu, sd = a[:, cols].mean(0), a[:, cols].std(0)
            za, zb = (a[:, cols] - mu) / sd, (b[:, cols] - mu) / sd
            if poly:
                p = PolynomialFeatures(2, include_bias=False)
                za, zb = p.fit_transform(za), p.transform(zb)
            m = LogisticRegression(C=0.1 if poly else 1.0, max_iter=5000).fit(za, y)
            return m.decision_function(za), m.decision_function(zb)

        return fit_score

    def trees(a, y, b):
        m = HistGradientBoostingClassifier(max_depth=3, learning_rate=0.05, max_iter=200, random_state=0).fit(a, y)
        return m.predict_proba(a)[:, 1], m.predict_proba(b)[:, 1]

    k = len(core.FEATURES)
    every = list(range(len(names)))
    print(f"{'logreg, EmbeddingGemma only':38} {scored(logreg(every[:k]))}")
    print(f"{'logreg, EmbeddingGemma + MiniLM':38} {scored(logreg(every[: 2 * k]))}")
    print(f"{'logreg, all three (shipped)':38} {scored(logreg(every))}")
    print(f"{'logreg, all three, degree-2':38} {scored(logreg(every, poly=True))}")
    print(f"{'gradient-boosted trees, all three':38} {scored(trees)}")
    print(f"embedders: {', '.join(embeddings.model_location(e) for e in core.DEFAULT_EMBEDDERS)}")


if __name__ == "__main__":
    main()
