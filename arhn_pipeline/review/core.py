"""A person's reviews as a reference for their own partition, without Dagster.

The sample: a partition's negatives are split into strata by what matters to the estimate (which methods
change the negative, and the band of the cascade's first-stage score), and each stratum gets a simple random
sample of known size: half the budget spread evenly over the strata (so a rare stratum such as "changed by
every method" is reviewed at all), the rest in proportion to their sizes. The drawn items are shown in one
seeded random order, so a reviewer who stops after any number of items has reviewed a random part of each
stratum.

The estimate: a reviewed item of stratum h stands for N_h / m_h negatives of the partition (N_h: the
stratum's negatives, m_h: its reviewed items with an answer and a prediction: within a stratum the reviewed
items are a simple random sample). Confusion counts are summed with those weights, and precision, recall, F1
and Cohen's kappa computed from them estimate the figures on every negative of the partition (of the strata
reviewed at all: `covered` says which share that is). The 95% interval (`kappa_interval`): within each stratum
and prediction, the rate of false negatives is drawn from its Jeffreys posterior, the partition's table made
from the strata's sizes, and kappa's 2.5 / 97.5 percentiles taken over 1,000 draws. A stratum's items share
one decision of each method (the strata are made of the methods' decisions), so for a method the only unknown
is that rate. Unlike a bootstrap over items, the interval is not zero-width when every reviewed item agreed.

Answers: `as_well` (answers the query as well as the positive) and `less_well` (answers it, less well) are
false negatives, as RLHN counts both its "better" and "worse"; `no` is a true negative; `cannot_tell` is
counted and never scored.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

Key = tuple[str, str]  # (query_id, passage_id)

ANSWERS: dict[str, tuple[str, bool | None]] = {
    "as_well": ("answers the query as well as the positive", True),
    "less_well": ("answers it, less well", True),
    "no": ("does not answer", False),
    "cannot_tell": ("cannot tell", None),
}
BOOTSTRAP = 1000
BOOTSTRAP_SEED = 20261207


class ReviewFileError(ValueError):
    """A reviews file that cannot be read: names the file, the line and the field."""


def is_false_negative(answer: str) -> bool | None:
    return ANSWERS[answer][1]


def train_half(query_id: str) -> bool:
    """Whether a query's reviews may train a judge (`arhn train-judge --train-on NAME:reviews`); the other
    half qualifies it. Split by query, so that no query's candidates are on both sides."""
    return hashlib.sha256(f"split|{query_id}".encode()).digest()[0] % 2 == 0


# --- the sample ---


def strata(negatives: pl.DataFrame, changed: Mapping[Key, list[str]], scores: Mapping[Key, float]) -> list[str]:
    """Each negative's stratum: the methods that change it ("kept by all" when none does), and the tertile band
    of its first-stage score when the cascade's first stage scores (a margin or trained judge)."""
    cuts: list[float] = []
    known = sorted(scores.values())
    if len(known) >= 3:
        cuts = [known[len(known) // 3], known[2 * len(known) // 3]]
    out = []
    for key in zip(negatives["query_id"].to_list(), negatives["passage_id"].to_list(), strict=True):
        methods = changed.get(key) or []
        name = "changed by " + ",".join(sorted(methods)) if methods else "kept by all"
        if cuts and key in scores:
            band = "low" if scores[key] < cuts[0] else "mid" if scores[key] < cuts[1] else "high"
            name += f" | score {band}"
        out.append(name)
    return out


def allocate(sizes: Mapping[str, int], budget: int) -> dict[str, int]:
    """Items to draw per stratum: half the budget evenly over the strata, the rest in proportion to size;
    never more than a stratum holds, and what a full stratum cannot take goes to the others."""
    take = {h: 0 for h in sizes}
    budget = min(budget, sum(sizes.values()))
    even = budget // 2
    open_ = [h for h in sorted(sizes) if sizes[h] > 0]
    while even > 0 and open_:
        share = max(1, even // len(open_))
        for h in list(open_):
            add = min(share, sizes[h] - take[h], even)
            take[h] += add
            even -= add
            if take[h] >= sizes[h]:
                open_.remove(h)
            if even <= 0:
                break
    left = budget - sum(take.values())
    while left > 0:
        room = {h: sizes[h] - take[h] for h in sizes if sizes[h] > take[h]}
        if not room:
            break
        total = sum(sizes[h] for h in room)
        for h in sorted(room, key=lambda h: -sizes[h]):
            add = min(room[h], max(1, math.floor(left * sizes[h] / total)), left)
            take[h] += add
            left -= add
            if left <= 0:
                break
    return take


def draw(population: pl.DataFrame, budget: int, seed: int) -> pl.DataFrame:
    """A stratified random sample of `population` (query_id, passage_id, stratum), in one seeded random
    order, with each stratum's size, the number drawn from it and the inclusion probability."""
    sizes = dict(population.group_by("stratum").len().iter_rows())
    take = allocate(sizes, budget)
    rng = random.Random(seed)
    rows = []
    for h in sorted(sizes):
        members = population.filter(pl.col("stratum") == h).sort("query_id", "passage_id").rows()
        for qid, pid, stratum in rng.sample(members, take[h]):
            rows.append((qid, pid, stratum, sizes[h], take[h], take[h] / sizes[h]))
    rng.shuffle(rows)
    return pl.DataFrame(
        [(i, *r) for i, r in enumerate(rows)],
        schema={
            "item": pl.Int64,
            "query_id": pl.String,
            "passage_id": pl.String,
            "stratum": pl.String,
            "stratum_size": pl.Int64,
            "stratum_drawn": pl.Int64,
            "inclusion_probability": pl.Float64,
        },
        orient="row",
    )


def sample_id(subset: str, seed: int, budget: int) -> str:
    return hashlib.sha256(f"{subset}|{seed}|{budget}".encode()).hexdigest()[:12]


# --- the reviews ---


def labels(reviews: pl.DataFrame) -> dict[Key, str]:
    """Each reviewed item's answer: a reviewer's latest answer stands for that reviewer, and the item's answer
    is the one of the reviewer who answered it first (a second reviewer's answer serves their agreement)."""
    latest = latest_answers(reviews)
    out: dict[Key, str] = {}
    for qid, pid, answer in latest.sort("first_answered_at").select("query_id", "passage_id", "answer").iter_rows():
        out.setdefault((qid, pid), answer)
    return out


def latest_answers(reviews: pl.DataFrame) -> pl.DataFrame:
    """(query_id, passage_id, reviewer, answer) of each reviewer's latest answer, with when they first
    answered the item."""
    return (
        reviews.sort("answered_at", "review_id")
        .group_by("query_id", "passage_id", "reviewer", maintain_order=True)
        .agg(answer=pl.col("answer").last(), first_answered_at=pl.col("answered_at").first())
        .select("query_id", "passage_id", "reviewer", "answer", "first_answered_at")
    )


@dataclass(frozen=True)
class ReviewerAgreement:
    items: int  # items two reviewers answered (neither "cannot tell")
    kappa: float | None  # Cohen's kappa of "false negative" between the first two reviewers of each item
    same_answer: float | None  # share of those items with the same one of the four answers


def reviewer_agreement(reviews: pl.DataFrame) -> ReviewerAgreement:
    latest = latest_answers(reviews).sort("first_answered_at")
    pairs = []
    for (_, _), group in latest.group_by("query_id", "passage_id", maintain_order=True):
        answers = [a for a in group["answer"].to_list() if is_false_negative(a) is not None]
        if len(answers) >= 2:
            pairs.append((answers[0], answers[1]))
    if not pairs:
        return ReviewerAgreement(0, None, None)
    a = np.array([is_false_negative(x) for x, _ in pairs], dtype=float)
    b = np.array([is_false_negative(y) for _, y in pairs], dtype=float)
    kappa = _kappa(np.ones(len(pairs)), a, b)
    return ReviewerAgreement(len(pairs), float(kappa), sum(x == y for x, y in pairs) / len(pairs))


# --- the estimate ---


@dataclass(frozen=True)
class Estimate:
    reviewed: int  # reviewed items with an answer (not "cannot tell") and a prediction
    cannot_tell: int
    no_prediction: int
    counts: dict[str, int]  # raw tp, fp, fn, tn of the reviewed items
    precision: float
    recall: float
    f1: float
    kappa: float
    kappa_low: float | None
    kappa_high: float | None
    covered: float  # share of the partition's negatives in strata with a reviewed item

    def needs(self, min_kappa: float) -> int | None:
        """About how many more reviews would bring the interval's lower end to `min_kappa`, when the interval
        straddles it and the point estimate is above it (the half-width shrinks as 1 / sqrt(items))."""
        return more_reviews(self.kappa, self.kappa_low, self.reviewed, min_kappa)


def more_reviews(kappa: float, low: float | None, reviewed: int, min_kappa: float) -> int | None:
    if low is None or low >= min_kappa or kappa <= min_kappa or reviewed == 0:
        return None
    half, wanted = kappa - low, kappa - min_kappa
    return max(1, math.ceil(reviewed * (half / wanted) ** 2) - reviewed)


def _kappa(w: np.ndarray, p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cohen's kappa from weighted predictions and labels (0/1, or label probabilities), along the last axis."""
    n = w.sum(axis=-1)
    tp = (w * p * y).sum(axis=-1)
    tn = (w * (1 - p) * (1 - y)).sum(axis=-1)
    pp, py = (w * p).sum(axis=-1), (w * y).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = (tp + tn) / n
        expected = (pp * py + (n - pp) * (n - py)) / (n * n)
        kappa = np.where(expected < 1, (observed - expected) / (1 - expected), 0.0)
    return np.nan_to_num(kappa)


def kappa_interval(
    groups: list[tuple[float, float, int, int]], draws: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float] | None:
    """A 95% interval for kappa on a population made of groups (share of the population, the detector's
    prediction 0/1, false negatives among the group's labelled items, labelled items): each group's rate of
    false negatives is drawn from its Jeffreys posterior Beta(k + 1/2, m - k + 1/2), and kappa computed on the
    population's table, `draws` times; the 2.5 / 97.5 percentiles. Never zero-width because every labelled
    item agreed (two false negatives among 150 say little), and it reads a stratified sample as what it is."""
    groups = [g for g in groups if g[0] > 0]
    if not any(g[3] for g in groups):
        return None
    rng = np.random.default_rng(seed)
    w = np.array([g[0] for g in groups])
    p = np.array([g[1] for g in groups])
    theta = np.stack([rng.beta(k + 0.5, m - k + 0.5, size=draws) for _, _, k, m in groups], axis=1)
    ks = _kappa(np.broadcast_to(w, theta.shape), np.broadcast_to(p, theta.shape), theta)
    low, high = np.percentile(ks, [2.5, 97.5])
    return float(low), float(high)


def _groups(
    items: pl.DataFrame, rows: Mapping[str, list[tuple[float, float]]], sizes: Mapping[str, int], pred: Mapping
) -> list[tuple[float, float, int, int]]:
    """The interval's groups: per stratum and prediction, its share of the partition (the stratum's size times
    the share of its drawn items with that prediction: known for every drawn item, reviewed or not), and the
    false negatives among its reviewed items. A group nobody reviewed yet enters with no labels (its rate
    anywhere in 0..1), so the interval stays wide until every stratum has been reviewed."""
    total = sum(sizes.values())
    drawn: dict[tuple[str, float], int] = {}
    per_stratum: dict[str, int] = {}
    for qid, pid, stratum in items.select("query_id", "passage_id", "stratum").iter_rows():
        value = pred.get((qid, pid))
        if value is None:
            continue
        drawn[(stratum, float(value))] = drawn.get((stratum, float(value)), 0) + 1
        per_stratum[stratum] = per_stratum.get(stratum, 0) + 1
    groups = []
    for (stratum, value), n in drawn.items():
        labels = [b for a, b in rows.get(stratum, []) if a == value]
        share = sizes[stratum] / total * n / per_stratum[stratum]
        groups.append((share, value, int(sum(labels)), len(labels)))
    return groups


def counts_interval(tp: float, fp: float, fn: float, tn: float) -> tuple[float, float] | None:
    """The interval of `kappa_interval` for a reference labelled in full (the flagged and the kept)."""
    n = tp + fp + fn + tn
    if n < 2:
        return None
    return kappa_interval(
        [((tp + fp) / n, 1.0, round(tp), round(tp + fp)), ((fn + tn) / n, 0.0, round(fn), round(fn + tn))]
    )


def estimate(
    items: pl.DataFrame,
    answers: Mapping[Key, str],
    pred: Mapping[Key, bool | None],
    draws: int = BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> Estimate:
    """The weighted estimate on the whole partition from the reviewed items of its sample (`items`: the
    sample's rows with `stratum` and `stratum_size`), and its 95% interval (`kappa_interval`, one group per
    stratum and prediction; a stratum's share of each prediction as among its reviewed items)."""
    rows: dict[str, list[tuple[float, float]]] = {}
    sizes: dict[str, int] = dict(items.select("stratum", "stratum_size").unique().iter_rows())
    cannot, missing = 0, 0
    for qid, pid, stratum in items.select("query_id", "passage_id", "stratum").iter_rows():
        answer = answers.get((qid, pid))
        if answer is None:
            continue
        label = is_false_negative(answer)
        if label is None:
            cannot += 1
            continue
        p = pred.get((qid, pid))
        if p is None:
            missing += 1
            continue
        rows.setdefault(stratum, []).append((float(p), float(label)))
    total = sum(sizes.values())
    if not rows:
        return Estimate(0, cannot, missing, dict(tp=0, fp=0, fn=0, tn=0), 0.0, 0.0, 0.0, 0.0, None, None, 0.0)
    w = np.concatenate([np.full(len(r), sizes[h] / len(r)) for h, r in rows.items()])
    p = np.concatenate([np.array([a for a, _ in r]) for r in rows.values()])
    y = np.concatenate([np.array([b for _, b in r]) for r in rows.values()])
    q, n = 1 - p, 1 - y
    tp, fp, fn = float((w * p * y).sum()), float((w * p * n).sum()), float((w * q * y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    kappa = float(_kappa(w, p, y))
    covered_size = sum(sizes[h] for h in rows)
    interval = kappa_interval(_groups(items, rows, sizes, pred), draws, seed) if draws else None
    raw = dict(tp=int((p * y).sum()), fp=int((p * n).sum()), fn=int((q * y).sum()), tn=int((q * n).sum()))
    return Estimate(
        len(p), cannot, missing, raw, precision, recall, f1, kappa,
        interval[0] if interval else None, interval[1] if interval else None,
        covered_size / total if total else 0.0,
    )  # fmt: skip


# --- JSONL in and out ---

REVIEW_FIELDS = ("subset", "query_id", "passage_id", "reviewer", "answer")


def to_jsonl_rows(reviews: pl.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in reviews.sort("review_id").iter_rows(named=True):
        out.append(
            {
                **{k: row[k] for k in REVIEW_FIELDS},
                "shown_at": _iso(row["shown_at"]),
                "answered_at": _iso(row["answered_at"]),
                "stratum": row["stratum"],
                "weight": row["weight"],
                "shown": json.loads(row["shown"]) if row["shown"] else None,
            }
        )
    return out


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def parse_review_line(path: str, line_no: int, line: str) -> dict[str, Any]:
    """One exported review, checked: a bad line raises ReviewFileError naming the file, the line and field."""
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise ReviewFileError(f"{path} line {line_no}: not JSON ({exc})") from None
    if not isinstance(row, dict):
        raise ReviewFileError(f"{path} line {line_no}: not a JSON object")
    for name in REVIEW_FIELDS:
        if not isinstance(row.get(name), str) or not row[name]:
            raise ReviewFileError(f"{path} line {line_no}: field {name!r} missing or not a non-empty string")
    if row["answer"] not in ANSWERS:
        raise ReviewFileError(f"{path} line {line_no}: field 'answer' is {row['answer']!r}, not one of {list(ANSWERS)}")
    for name in ("shown_at", "answered_at"):
        if row.get(name) is not None and not isinstance(row[name], str):
            raise ReviewFileError(f"{path} line {line_no}: field {name!r} is not an ISO time string")
    return row
