"""A false-negative judge trained on labelled hard negatives, without Dagster.

For each (query, its positive, a hard negative) and each embedder, four numbers: cos(query, negative),
cos(query, positive), cos(negative, positive) and the margin cos(q, neg) - cos(q, pos) (for a sparse model the dot
products of its term weights instead of cosines). A logistic regression over
them, standardized, gives P(false negative); the decision threshold is the one with the best Cohen's kappa on
the training labels. Weights, threshold and what they were fitted on are one small JSON file, whose hash is the
judge's identity in the qualification gate; a judge never qualifies on an entry it was trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arhn_pipeline import embeddings
from arhn_pipeline.embeddings import encode_unique

FEATURES = ("q_neg", "q_pos", "neg_pos", "margin")
DEFAULT_EMBEDDERS = (embeddings.EMBEDDINGGEMMA, embeddings.DEFAULT_EMBEDDER, embeddings.SPLADE_TINY)
SHIPPED = Path(__file__).with_name("judges")  # judges fitted by the team, shipped with the package
DEFAULT_JUDGE = "dl19_dl20"


@dataclass(frozen=True)
class Triple:
    query: str
    positive: str
    negative: str


@dataclass
class JudgeModel:
    embedders: list[str]
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    threshold: float  # on the decision function; at or above = false negative
    trained_on: dict[str, str] = field(default_factory=dict)  # registry entry -> sha256 of its reference file
    labelled: int = 0
    positives: int = 0
    regularization: float = 1.0
    max_length: int = 256
    # A cascade inside the judge (fit_cascade): a cheap judge over the cheap embedders' features scores every
    # pair; below `low` it is kept and at or above `high` flagged without the other embedders; in between
    # the whole judge decides. None: every pair gets the whole judge.
    cheap: dict[str, Any] | None = None

    @property
    def identity(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> JudgeModel:
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def decision(self, x: np.ndarray) -> np.ndarray:
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return np.asarray(z @ np.asarray(self.weights) + self.bias, dtype=float)

    def judge(self, triples: Sequence[Triple]) -> Judged:
        """Each triple's decision value (>= threshold: a false negative) and margin (cos(q, neg) - cos(q, pos)
        of the first embedder that saw it), through the cascade when the judge has one. JUDGE_CHUNK triples at
        a time: the vectors held stay bounded whatever the partition's size (each text is embedded once all the
        same: the store and the memo keep what earlier chunks embedded)."""
        if len(triples) > JUDGE_CHUNK:
            parts = [self.judge(triples[i : i + JUDGE_CHUNK]) for i in range(0, len(triples), JUDGE_CHUNK)]
            return Judged(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("value", "margin", "whole")))
        if self.cheap is None:
            x = features(triples, self.embedders, self.max_length)
            return Judged(self.decision(x), x[:, FEATURES.index("margin")], np.ones(len(triples), dtype=bool))
        cheap = JudgeModel(**{k: v for k, v in self.cheap.items() if k in _MODEL_FIELDS})
        xc = features(triples, cheap.embedders, self.max_length)
        sc = cheap.decision(xc)
        low, high = float(self.cheap["low"]), float(self.cheap["high"])
        passed = (sc >= low) & (sc < high)
        # decided by the cheap judge: a value on the whole judge's side of its threshold, ordered by the cheap score
        value = np.where(sc >= high, self.threshold + 1.0 + (sc - high), self.threshold - 1.0 - (low - sc))
        margin = xc[:, FEATURES.index("margin")].copy()
        chosen = np.flatnonzero(passed)
        if len(chosen):
            x = features([triples[i] for i in chosen], self.embedders, self.max_length)
            value[chosen] = self.decision(x)
            margin[chosen] = x[:, FEATURES.index("margin")]
        return Judged(value, margin, passed)


@dataclass(frozen=True)
class Judged:
    value: np.ndarray  # the decision value per triple
    margin: np.ndarray
    whole: np.ndarray  # whether the whole judge saw the triple (always, without a cascade)


JUDGE_CHUNK = 50_000  # triples judged at once (about 150 MB of float32 vectors per 768-d embedder)
_MODEL_FIELDS = ("embedders", "mean", "scale", "weights", "bias", "threshold", "max_length")


def judge_path(name: str, trained_dir: Path) -> Path:
    """A judge by name: one trained by the pipeline (trained_dir/NAME.json), a shipped one, or a file path."""
    for candidate in (trained_dir / f"{name}.json", SHIPPED / f"{name}.json", Path(name)):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for d in (trained_dir, SHIPPED) if d.is_dir() for p in d.glob("*.json"))
    raise FileNotFoundError(f"no judge named {name!r}; known: {known} (or give a path to a judge file)")


def features(triples: Sequence[Triple], embedder_names: Sequence[str], max_length: int = 256) -> np.ndarray:
    """The feature matrix: one row per triple, FEATURES for each embedder in turn."""
    columns = []
    for name in embedder_names:
        model = embeddings.load(name)
        model.max_seq_length = max_length
        q_index, q_vecs = encode_unique(model, [t.query for t in triples], query=True)
        p_index, p_vecs = encode_unique(
            model, [t.positive for t in triples] + [t.negative for t in triples], query=False
        )
        q = q_vecs[[q_index[t.query] for t in triples]]
        pos = p_vecs[[p_index[t.positive] for t in triples]]
        neg = p_vecs[[p_index[t.negative] for t in triples]]
        q_neg, q_pos, neg_pos = _dot(q, neg), _dot(q, pos), _dot(neg, pos)
        columns += [q_neg, q_pos, neg_pos, q_neg - q_pos]
    return np.stack(columns, axis=1)


def _dot(a: Any, b: Any) -> np.ndarray:
    """Row-wise dot products: cosines of unit vectors, or a sparse model's term-weight overlap (scipy CSR rows)."""
    if isinstance(a, np.ndarray):
        return np.asarray((a * b).sum(1), dtype=float)
    return np.asarray(a.multiply(b).sum(1), dtype=float).ravel()


def kappa(y: np.ndarray, flagged: np.ndarray) -> float:
    n = len(y)
    tp = float(np.sum(flagged & y))
    tn = float(np.sum(~flagged & ~y))
    observed = (tp + tn) / n
    expected = (flagged.sum() * y.sum() + (~flagged).sum() * (~y).sum()) / (n * n)
    return float((observed - expected) / (1 - expected)) if expected < 1 else 0.0


def best_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The threshold (among score quantiles) with the best kappa on these labels."""
    candidates = np.quantile(scores, np.linspace(0.02, 0.98, 97))
    return float(max(candidates, key=lambda t: kappa(y, scores >= t)))


def fit(
    x: np.ndarray,
    y: np.ndarray,
    embedder_names: Sequence[str],
    trained_on: dict[str, str],
    regularization: float = 1.0,
    max_length: int = 256,
) -> JudgeModel:
    from sklearn.linear_model import LogisticRegression

    if y.all() or not y.any():
        raise ValueError("the training labels need both false negatives and true negatives")
    mean, scale = x.mean(0), x.std(0) + 1e-9
    model = LogisticRegression(C=regularization, max_iter=5000).fit((x - mean) / scale, y)
    judge = JudgeModel(
        embedders=list(embedder_names),
        mean=mean.tolist(),
        scale=scale.tolist(),
        weights=model.coef_[0].tolist(),
        bias=float(model.intercept_[0]),
        threshold=0.0,
        trained_on=trained_on,
        labelled=len(y),
        positives=int(y.sum()),
        regularization=regularization,
        max_length=max_length,
    )
    judge.threshold = best_threshold(judge.decision(x), y)
    return judge


def fit_cascade(
    x: np.ndarray,
    y: np.ndarray,
    judge: JudgeModel,
    cheap_embedders: Sequence[str],
    keep: float = 0.98,
) -> JudgeModel:
    """`judge` (fitted on `x`, `y`) with a cheap judge in front: a logistic regression over the columns of
    `cheap_embedders` (a subset of the judge's), and two thresholds on its score fitted on these pairs for the
    whole judge's flags: below `low` at most 1 - `keep` of them are lost, and at or above `high` at least `keep`
    of what the cheap judge flags the whole judge flags too."""
    from sklearn.linear_model import LogisticRegression

    missing = [e for e in cheap_embedders if e not in judge.embedders]
    if missing:
        raise ValueError(f"cheap embedders must be the judge's own: {missing} are not in {judge.embedders}")
    cols = [judge.embedders.index(e) * len(FEATURES) + k for e in cheap_embedders for k in range(len(FEATURES))]
    xc = x[:, cols]
    mean, scale = xc.mean(0), xc.std(0) + 1e-9
    model = LogisticRegression(C=judge.regularization, max_iter=5000).fit((xc - mean) / scale, y)
    cheap = JudgeModel(list(cheap_embedders), mean.tolist(), scale.tolist(), model.coef_[0].tolist(),
                       float(model.intercept_[0]), 0.0, max_length=judge.max_length)  # fmt: skip
    sc = cheap.decision(xc)
    flags = judge.decision(x) >= judge.threshold
    low = float(np.quantile(sc[flags], 1 - keep)) if flags.any() else float(sc.max())
    order = np.argsort(-sc)
    agree = np.cumsum(flags[order]) / np.arange(1, len(sc) + 1)  # share of the whole judge's flags above each cut
    ok = np.flatnonzero(agree >= keep)
    high = float(sc[order][ok[-1]]) if len(ok) else float("inf")
    high = max(high, low)
    passed = (sc >= low) & (sc < high)
    kept_flags = float(((sc >= low) & flags).sum() / max(1, flags.sum()))
    judge.cheap = {
        **{k: getattr(cheap, k) for k in _MODEL_FIELDS},
        "low": low,
        "high": high,
        "keep": keep,
        "passed_on_share": round(float(passed.mean()), 4),  # on the training pairs
        "flags_kept": round(kept_flags, 4),
    }
    return judge


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe(judge: JudgeModel) -> dict[str, Any]:
    return {
        "identity": judge.identity,
        "embedders": ", ".join(judge.embedders),
        "trained_on": ", ".join(judge.trained_on) or "-",
        "labelled_negatives": judge.labelled,
        "false_negatives": judge.positives,
        "threshold": round(judge.threshold, 4),
        "cascade": "none"
        if judge.cheap is None
        else f"{', '.join(judge.cheap['embedders'])} first; {judge.cheap['passed_on_share']:.0%} of the training "
        f"pairs passed on, {judge.cheap['flags_kept']:.1%} of the whole judge's flags kept",
    }


def labelled_triples(pairs: Any, reference: dict[tuple[str, str], bool]) -> tuple[list[Triple], np.ndarray]:
    """The labelled negatives of a partition's pairs (store.load_pairs): each with its query and first
    positive, and its label."""
    positive: dict[str, str] = {}
    for qid, role, text in pairs.select("query_id", "role", "passage").iter_rows():
        if role == "positive":
            positive.setdefault(qid, text)
    triples, labels = [], []
    for qid, query, pid, role, text in pairs.select("query_id", "query", "passage_id", "role", "passage").iter_rows():
        if role == "negative" and (qid, pid) in reference:
            triples.append(Triple(query, positive[qid], text))
            labels.append(reference[(qid, pid)])
    return triples, np.asarray(labels, dtype=bool)
