"""Agreement of a false-negative detector with a reference: precision, recall, F1 and Cohen's kappa of
"this negative is a false negative", over the negatives the reference labels.

References: `human_grades` (TREC DL judged files: a NIST grade >= 2 is a false negative; ungraded negatives
are left out), `rlhn_labels` (RLHN's released GPT-4o cascade labels: the final stage's better + worse) and
`sample_labels` (the embedded samples' planted labels; ambiguous negatives are left out).
Detectors: `judge:NAME` (a trained judge, computed on the spot), `cascade` (the judgments' final verdicts),
`stage:NAME` (one cascade stage), `arhn:R+F`,
`rlhn:hn_remove`, ... (a method's decisions: anything but keep), and `margin:M` (the embedding margin,
computed on the spot). An answer that could not be parsed is no prediction: counted, never scored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from arhn_pipeline.identity import passage_key

Key = tuple[str, str]  # (query_id, passage_id)


class ReferenceFileError(ValueError):
    """A reference file that cannot be read: names the file, the line and what is wrong."""


def load_reference(fmt: str, path: Path) -> dict[Key, bool]:
    if fmt not in ("human_grades", "rlhn_labels", "sample_labels"):
        raise ValueError(f"unknown reference format {fmt!r}: human_grades, rlhn_labels or sample_labels")
    ref: dict[Key, bool] = {}
    n = 0
    try:
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):  # noqa: B007 (n names the bad line below)
                if line.strip():
                    _reference_row(fmt, json.loads(line), ref)
    except (OSError, UnicodeDecodeError) as exc:
        raise ReferenceFileError(f"reference {path}: cannot read it: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReferenceFileError(f"reference {path} line {n}: not a {fmt} row ({type(exc).__name__}: {exc})") from None
    return ref


def _reference_row(fmt: str, row: Any, ref: dict[Key, bool]) -> None:
    qid = str(row.get("query_id", row.get("qid")))
    if fmt == "human_grades":
        for text, grade in zip(row["neg"], row["neg_human_grades"], strict=True):
            if grade is not None:
                ref[(qid, passage_key(text))] = grade >= 2
    elif fmt == "rlhn_labels":
        final = row.get("stage2_gpt4o") or row["stage1_gpt4o_mini"]
        flagged = set(final.get("better", [])) | set(final.get("worse", []))
        for i, text in enumerate(row["neg"]):
            ref[(qid, passage_key(text))] = i in flagged
    elif row["label"] != "ambiguous":  # sample_labels (data/samples/labels.jsonl); ambiguous ones left out
        ref[(qid, row["passage_key"])] = row["label"] == "false_negative"


def predictions(conn: duckdb.DuckDBPyConnection, subset: str, detector: str) -> Mapping[Key, bool | None]:
    if detector.startswith("judge:"):
        return judge_predictions(conn, subset, detector.split(":", 1)[1])
    if detector.startswith("margin:"):
        return margin_predictions(conn, subset, float(detector.split(":", 1)[1]))
    if detector == "cascade" or detector.startswith("stage:"):
        where = "final" if detector == "cascade" else "stage = ?"
        params = [subset] if detector == "cascade" else [subset, detector.split(":", 1)[1]]
        rows = conn.execute(
            f"SELECT query_id, passage_id, verdict FROM verdicts WHERE subset = ? AND {where}", params
        ).fetchall()
        pred = {(q, p): None if v == "unparsed" else v in ("better", "worse") for q, p, v in rows}
        if detector.startswith("stage:"):  # queries the stage never saw were cleared by an earlier stage
            for q, p in conn.execute(
                "SELECT query_id, passage_id FROM candidates WHERE subset = ? AND role = 'negative'", [subset]
            ).fetchall():
                pred.setdefault((q, p), False)
        return pred
    frame = conn.execute("SELECT * FROM decisions WHERE subset = ? AND method = ?", [subset, detector]).pl()
    return decision_predictions(frame).get(detector, {})  # what the judge proposed, before the gate


def margin_predictions(conn: duckdb.DuckDBPyConnection, subset: str, margin: float) -> dict[Key, bool]:
    from arhn_pipeline import embeddings
    from arhn_pipeline.judgments.core import NONE, QuerySet, margin_label_sets
    from arhn_pipeline.store import load_pairs

    qs = QuerySet(load_pairs(conn, subset))
    items = [(qs.query[q], qs.positives[q], [t for _, t in qs.negatives[q]]) for q in qs.query]
    out = {}
    for qid, (labels, _) in zip(qs.query, margin_label_sets(embeddings.load(), items, margin), strict=True):
        out.update({(qid, pid): label != NONE for (pid, _), label in zip(qs.negatives[qid], labels, strict=True)})
    return out


def judge_predictions(conn: duckdb.DuckDBPyConnection, subset: str, name: str) -> dict[Key, bool]:
    """A trained judge's calls on every negative of a partition (with the query's first positive)."""
    from arhn_pipeline import settings
    from arhn_pipeline.judgments.core import NONE, QuerySet, run_trained_stage
    from arhn_pipeline.store import load_pairs
    from arhn_pipeline.trained_judge.core import JudgeModel, judge_path

    judge = JudgeModel.load(judge_path(name, settings.judges_dir()))
    qs = QuerySet(load_pairs(conn, subset))
    results = run_trained_stage(qs, list(qs.query), judge)
    return {
        (qid, pid): label != NONE
        for qid, r in results.items()
        for (pid, _), label in zip(qs.negatives[qid], r.verdict.labels, strict=True)
    }


def scores(pred: Mapping[Key, bool | None], ref: Mapping[Key, bool]) -> dict[str, float | int]:
    """Agreement of predictions with a reference over the negatives both cover (a None prediction is counted
    as `no_prediction`, never scored), with the confusion counts."""
    both = [(bool(pred[k]), ref[k]) for k in ref if k in pred and pred[k] is not None]
    tp = sum(p and r for p, r in both)
    fp = sum(p and not r for p, r in both)
    fn = sum(r and not p for p, r in both)
    tn = len(both) - tp - fp - fn
    return {
        **metrics(tp, fp, fn, tn),
        "no_prediction": sum(1 for k in ref if k in pred and pred[k] is None),
        "not_covered": sum(1 for k in ref if k not in pred),
    }


def metrics(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | int]:
    """Precision, recall, F1 and Cohen's kappa of "false negative" from confusion counts."""
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    observed = (tp + tn) / n if n else 0.0
    expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n) if n else 0.0
    kappa = (observed - expected) / (1 - expected) if expected < 1 else 0.0
    return {
        "pairs": n,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "reference_rate": round((tp + fn) / n, 3) if n else 0.0,
        "flag_rate": round((tp + fp) / n, 3) if n else 0.0,
        "precision": round(precision, 3),
        "recall": round(recall, 3),
        "f1": round(f1, 3),
        "kappa": round(kappa, 3),
    }


COLUMNS = ["pairs", "no_prediction", "reference_rate", "flag_rate", "precision", "recall", "f1", "kappa"]


def stored_detectors(conn: duckdb.DuckDBPyConnection, subset: str) -> list[str]:
    """The detectors whose calls are stored for a subset: the cascade, each stage, each method."""
    methods = [
        r[0]
        for r in conn.execute("SELECT DISTINCT method FROM decisions WHERE subset = ? ORDER BY 1", [subset]).fetchall()
    ]
    stages = [
        f"stage:{r[0]}"
        for r in conn.execute("SELECT DISTINCT stage FROM verdicts WHERE subset = ? ORDER BY 1", [subset]).fetchall()
    ]
    return (["cascade"] if stages else []) + stages + methods


def table(conn: duckdb.DuckDBPyConnection, subset: str, ref: dict[Key, bool], detectors: list[str]) -> list[list[Any]]:
    """One row per detector: the detector, then COLUMNS."""
    rows = []
    for detector in detectors:
        s = scores(predictions(conn, subset, detector), ref)
        rows.append([detector] + [s[c] for c in COLUMNS])
    return rows


def decision_predictions(frame: pl.DataFrame) -> dict[str, dict[tuple[str, str], bool | None]]:
    """Per method, each negative's "false negative?" as its decision says (before the gate): changed = yes;
    kept for want of readable evidence (an unparsed or degenerate answer) = no prediction."""
    out: dict[str, dict[tuple[str, str], bool | None]] = {}
    negatives = frame.filter(pl.col("role") == "negative")
    for method, qid, pid, action, rule in negatives.select(
        "method", "query_id", "passage_id", "proposed_action", "proposed_rule"
    ).iter_rows():
        no_evidence = action == "keep" and ("unparsed" in rule or "degenerate" in rule)
        out.setdefault(method, {})[(qid, pid)] = None if no_evidence else action != "keep"
    return out


def by_vote_margin(conn: duckdb.DuckDBPyConnection, subset: str, ref: dict[Key, bool]) -> list[list[Any]]:
    """For each LLM stage asked several samples: agreement with the reference per vote margin (1.0: unanimous),
    so a user sees whether unanimous verdicts are worth more than split ones."""
    rows = []
    stages = conn.execute(
        "SELECT DISTINCT stage FROM verdicts WHERE subset = ? AND vote_margin IS NOT NULL ORDER BY 1", [subset]
    ).fetchall()
    for (stage,) in stages:
        found = conn.execute(
            "SELECT query_id, passage_id, verdict, vote_margin FROM verdicts WHERE subset = ? AND stage = ? "
            "AND vote_margin IS NOT NULL",
            [subset, stage],
        ).fetchall()
        for margin in sorted({m for *_, m in found}, reverse=True):
            pred = {
                (q, p): None if v == "unparsed" else v in ("better", "worse") for q, p, v, m in found if m == margin
            }
            s = scores(pred, ref)
            rows.append([f"stage:{stage} margin {margin:.2f}"] + [s[c] for c in COLUMNS])
    return rows
