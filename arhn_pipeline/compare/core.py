"""Every cleaning method side by side on the same partitions, without Dagster: what each changed, how far its
judge agrees with every reference of those partitions (as `arhn agreement` computes it), whether it passed the
qualification gate, and what the retriever and the reranker trained on its collection scored downstream.

Rows: `original`; each method with decisions (`arhn:R`, `arhn:F`, `arhn:R+F`, `rlhn:<technique>`); each pruned
collection (`pruned:<name>`); each detector asked for (`margin:M`, `judge:NAME`, `stage:NAME`: flags only, no
collection); and `untrained` (the base models, downstream only). One row per (method, eval set) when a model
trained on the method's collection was evaluated, else one row with no eval set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import polars as pl

from arhn_pipeline import agreement as ag
from arhn_pipeline.qualify.core import WITHHELD_RULE, judges_trained_on
from arhn_pipeline.schema import frame_schema
from arhn_pipeline.sources.registry import SourceEntry
from arhn_pipeline.train.core import method_variant
from arhn_pipeline.vocab import VARIANTS, Action

ORIGINAL = "original"
# the filter a user would otherwise run (sentence-transformers' relative_margin): a row by default, with the
# downstream figures of its own training variant
DEFAULT_DETECTORS = (VARIANTS["relative_margin"],)
UNTRAINED = "untrained"  # the base retriever / the first stage, untrained: downstream figures only

COMPARISON_SCHEMA = frame_schema("method_comparison", exclude=("compared_at",))  # schema.py declares the columns
AGREEMENT_SCHEMA = frame_schema("method_agreement")  # schema.py declares the columns


@dataclass
class Comparison:
    methods: pl.DataFrame  # COMPARISON_SCHEMA: one row per (method, eval set)
    agreement: pl.DataFrame  # AGREEMENT_SCHEMA: one row per (method, reference)
    references: dict[str, str] = field(default_factory=dict)  # reference -> why it was not used (only those)

    def wide(self) -> pl.DataFrame:
        """The table a reader wants (Markdown, CSV): each method's row with P / R / F1 / kappa per reference as
        columns; a figure of a judge on the reference it was trained on is left empty (not a measurement)."""
        out = self.methods.with_columns(pl.col("subsets").list.join(", "))
        for ref in self.agreement["reference"].unique(maintain_order=True).to_list():
            part = self.agreement.filter(pl.col("reference") == ref)
            measured = part.with_columns(
                [pl.when(pl.col("trained_on")).then(pl.lit(None)).otherwise(pl.col(c)).alias(c) for c in MEASURES]
            )
            out = out.join(
                measured.select("method", *[pl.col(c).alias(f"{c} {ref}") for c in MEASURES]),
                on="method",
                how="left",
                maintain_order="left",
            )
        return out


MEASURES = ("precision", "recall", "f1", "kappa")


def compare(
    conn: duckdb.DuckDBPyConnection,
    subsets: Sequence[str],
    references: Mapping[str, SourceEntry],
    detectors: Sequence[str] = (),
    pruned: Sequence[str] | None = None,
) -> Comparison:
    """The comparison over `subsets` (partitions with decisions). `references`: the registry entries of those
    partitions that name a reference. `pruned`: the pruned collections to include (default: all stored)."""
    subsets = list(subsets)
    methods = decided_methods(conn, subsets)
    rows = [_original_row(conn, subsets)] + [method_row(conn, subsets, m) for m in methods]
    names = pruned if pruned is not None else _pruned_names(conn)
    rows += [_pruned_row(conn, subsets, name) for name in names]
    predictions = _Predictions(conn)  # a detector embeds every negative: once per (partition, detector)
    rows += [_detector_row(predictions, subsets, d) for d in detectors]
    agreement, unused = _agreement(predictions, subsets, references, [ORIGINAL, *methods, *detectors])
    downstream = _downstream(conn)
    out = []
    for row in rows:
        variant = _variant(row["method"])
        evals = downstream.get(variant, {}) if variant else {}
        if not evals:
            out.append({**row, "eval_set": None})
        for eval_set, figures in evals.items():
            out.append({**row, "eval_set": eval_set, **figures})
    for eval_set, figures in downstream.get("base", {}).items():
        out.append(
            {
                "method": UNTRAINED,
                "kind": "model",
                "subsets": [],
                "negatives": 0,
                "proposed": 0,
                "changed": 0,
                "share_changed": 0.0,
                "to_positive": 0,
                "dropped_negatives": 0,
                "dropped_queries": 0,
                "gate": "-",
                "eval_set": eval_set,
                **figures,
            }
        )
    frame = pl.DataFrame(out, schema=COMPARISON_SCHEMA)
    return Comparison(frame, pl.DataFrame(agreement, schema=AGREEMENT_SCHEMA), unused)


def decided_methods(conn: duckdb.DuckDBPyConnection, subsets: list[str]) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT method FROM decisions WHERE subset IN ? ORDER BY method", [subsets]
        ).fetchall()
    ]


def partition_counts(conn: duckdb.DuckDBPyConnection, subsets: list[str]) -> tuple[int, int]:
    """Negatives and queries of the partitions as ingested."""
    negatives, queries = conn.execute(
        "SELECT count(*) FILTER (WHERE role = 'negative'), count(DISTINCT (subset, query_id)) FROM candidates "
        "WHERE subset IN ?",
        [subsets],
    ).fetchone() or (0, 0)
    return int(negatives), int(queries)


def _row(method: str, kind: str, subsets: list[str], negatives: int, **counts: Any) -> dict[str, Any]:
    changed = counts.get("to_positive", 0) + counts.get("dropped_negatives", 0)
    base = {"proposed": 0, "to_positive": 0, "dropped_negatives": 0, "dropped_queries": 0, "gate": "-"}
    return {
        **base,
        "changed": changed,
        **counts,
        "method": method,
        "kind": kind,
        "subsets": subsets,
        "negatives": negatives,
        "share_changed": round(changed / negatives, 4) if negatives else 0.0,
    }


def _original_row(conn: duckdb.DuckDBPyConnection, subsets: list[str]) -> dict[str, Any]:
    return _row(ORIGINAL, "collection", subsets, partition_counts(conn, subsets)[0], gate="not gated (nothing changes)")


GATE_SQL = f"""
SELECT count(*) FILTER (WHERE role = 'negative') AS negatives,
       count(*) FILTER (WHERE role = 'negative' AND coalesce(proposed_action, action) != '{Action.KEEP}') AS proposed,
       count(*) FILTER (WHERE role = 'negative' AND action = '{Action.TO_POSITIVE}') AS to_positive,
       count(*) FILTER (WHERE role = 'negative' AND action = '{Action.DROP_NEGATIVE}') AS dropped_negatives,
       count(DISTINCT (subset, query_id)) FILTER (WHERE action = '{Action.DROP_QUERY}') AS dropped_queries,
       count(*) FILTER (WHERE role = 'negative' AND rule = '{WITHHELD_RULE}') AS withheld,
       list(DISTINCT gate) FILTER (WHERE gate IS NOT NULL) AS gates
FROM decisions WHERE subset IN $subsets AND method = $method
"""


def method_row(conn: duckdb.DuckDBPyConnection, subsets: list[str], method: str) -> dict[str, Any]:
    cur = conn.execute(GATE_SQL, {"subsets": subsets, "method": method})
    r = dict(zip([d[0] for d in cur.description], cur.fetchone() or (), strict=True))
    return _row(
        method,
        "collection",
        subsets,
        r["negatives"],
        proposed=r["proposed"],
        to_positive=r["to_positive"],
        dropped_negatives=r["dropped_negatives"],
        dropped_queries=r["dropped_queries"],
        gate=gate_summary(r["proposed"], r["withheld"], r["gates"] or []),
    )


def gate_summary(proposed: int, withheld: int, reasons: list[str]) -> str:
    """applied / withheld / partly withheld, with the kappas the gate measured."""
    kappas = sorted({m.group(1) for reason in reasons for m in [re.search(r"kappa (-?[0-9.]+)", reason)] if m})
    measured = f" (kappa {', '.join(kappas)})" if kappas else ""
    if not proposed:
        return "nothing proposed" + measured
    if not withheld:
        return "applied" + measured
    if withheld >= proposed:
        return "withheld" + measured
    return f"partly withheld ({withheld} of {proposed})" + measured


def _pruned_names(conn: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT name FROM pruned_collection ORDER BY 1").fetchall()]


def _pruned_row(conn: duckdb.DuckDBPyConnection, subsets: list[str], name: str) -> dict[str, Any]:
    """A pruned collection: its method's changes on the sub-datasets it kept, and everything of the others."""
    kept_rows = conn.execute(
        "SELECT DISTINCT subset, method FROM pruned_collection WHERE name = ? AND subset IN ?", [name, subsets]
    ).fetchall()
    kept = sorted({s for s, _ in kept_rows})
    method = next((m for _, m in kept_rows), ORIGINAL)
    negatives, queries = partition_counts(conn, subsets)
    left_out = [s for s in subsets if s not in kept]
    dropped_negatives, dropped_queries = partition_counts(conn, left_out) if left_out else (0, 0)
    to_positive = 0
    if kept and method != ORIGINAL:
        m = method_row(conn, kept, method)
        to_positive = m["to_positive"]
        dropped_negatives += m["dropped_negatives"]
        dropped_queries += m["dropped_queries"]
    return _row(
        f"pruned:{name}",
        "collection",
        subsets,
        negatives,
        to_positive=to_positive,
        dropped_negatives=dropped_negatives,
        dropped_queries=dropped_queries,
        gate=f"{method} on {', '.join(kept) or 'nothing'}; left out: {', '.join(left_out) or 'nothing'}",
    )


class _Predictions:
    """Each (partition, detector)'s predictions, computed once per comparison."""

    def __init__(self, conn: duckdb.DuckDBPyConnection):
        self.conn = conn
        self._done: dict[tuple[str, str], Mapping[ag.Key, bool | None]] = {}

    def get(self, subset: str, detector: str) -> Mapping[ag.Key, bool | None]:
        if (subset, detector) not in self._done:
            self._done[(subset, detector)] = detector_predictions(self.conn, subset, detector)
        return self._done[(subset, detector)]


def _detector_row(predictions: _Predictions, subsets: list[str], detector: str) -> dict[str, Any]:
    conn = predictions.conn
    flagged = sum(1 for s in subsets for flag in predictions.get(s, detector).values() if flag)
    return _row(
        detector,
        "detector",
        subsets,
        partition_counts(conn, subsets)[0],
        proposed=flagged,
        gate="not gated (a detector flags, it changes nothing)",
    )


def detector_predictions(conn: duckdb.DuckDBPyConnection, subset: str, detector: str) -> Mapping[ag.Key, bool | None]:
    """What a method or detector says of each negative ("false negative?"), as `arhn agreement` reads it;
    `original` says no to every one."""
    if detector == ORIGINAL:
        negatives = conn.execute(
            "SELECT query_id, passage_id FROM candidates WHERE subset = ? AND role = 'negative'", [subset]
        ).fetchall()
        return {(q, p): False for q, p in negatives}
    return ag.predictions(conn, subset, detector)


def _agreement(
    predictions: _Predictions,
    subsets: list[str],
    references: Mapping[str, SourceEntry],
    methods: list[str],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    rows, unused = [], {}
    for subset in subsets:
        entry = references.get(subset)
        if entry is None or entry.reference is None:
            continue
        try:
            ref = ag.load_reference(entry.reference.format, entry.reference.path)
        except (ag.ReferenceFileError, OSError) as exc:
            unused[subset] = str(exc)
            continue
        trained = judges_trained_on(predictions.conn, subset)
        for method in methods:
            s = ag.scores(predictions.get(subset, method), ref)
            rows.append(
                {
                    "method": method,
                    "reference": subset,
                    "trained_on": _trained_on(method, subset, trained),
                    **{k: int(s[k]) for k in ("pairs", "no_prediction")},
                    **{k: float(s[k]) for k in MEASURES},
                }
            )
    return rows, unused


def _trained_on(method: str, subset: str, trained: Mapping[str, str]) -> bool:
    """Was a judge behind this method's figures on `subset` fitted on that very reference?"""
    if method.startswith("judge:"):
        from arhn_pipeline import settings
        from arhn_pipeline.trained_judge.core import JudgeModel, judge_path

        judge = JudgeModel.load(judge_path(method.split(":", 1)[1], settings.judges_dir()))
        return subset in judge.trained_on
    if method == ORIGINAL or method.startswith("margin:"):
        return False
    return subset in trained  # the partition's evidence came from a judge fitted on it


def _variant(method: str) -> str | None:
    if method.startswith("pruned:"):
        return "pruned" if method == "pruned:pruned" else None
    return method_variant(method)


def _downstream(conn: duckdb.DuckDBPyConnection) -> dict[str, dict[str, dict[str, float | None]]]:
    """variant -> eval set -> the retriever's and the reranker's figures (`base`: the untrained models)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for variant, eval_set, ndcg, recall in conn.execute(
        "SELECT variant, eval_set, ndcg_at_10, recall_at_100 FROM retriever_eval ORDER BY variant, eval_set"
    ).fetchall():
        out.setdefault(variant, {}).setdefault(eval_set, {})
        out[variant][eval_set].update(retriever_ndcg_at_10=ndcg, retriever_recall_at_100=recall)
    for variant, eval_set, ndcg in conn.execute(
        "SELECT variant, eval_set, ndcg_at_10 FROM reranker_eval ORDER BY variant, eval_set"
    ).fetchall():
        out.setdefault(variant, {}).setdefault(eval_set, {})["reranker_ndcg_at_10"] = ndcg
    return out


def stored_stages(conn: duckdb.DuckDBPyConnection, subsets: Sequence[str]) -> list[str]:
    """The cascade's stages with verdicts stored for the partitions, as detectors (`stage:NAME`)."""
    rows = conn.execute("SELECT DISTINCT stage FROM verdicts WHERE subset IN ? ORDER BY 1", [list(subsets)]).fetchall()
    return [f"stage:{r[0]}" for r in rows]


def markdown(result: Comparison) -> str:
    """The wide table, numbers rounded, for the UI and the terminal."""
    from arhn_pipeline.markdown import md_table

    wide = result.wide().drop("subsets", "negatives")

    def cell(value: Any) -> Any:
        if value is None:
            return ""
        return f"{value:.3f}" if isinstance(value, float) else value

    return md_table(wide.columns, [[cell(v) for v in row] for row in wide.rows()])


def terminal(result: Comparison) -> list[str]:
    """The comparison for a terminal, in three narrow tables instead of one wide one: what each method changed
    (and its gate), its agreement with each reference (one row per method and reference), and the downstream
    figures per eval set. The wide table stays in the UI (`markdown`) and the CSV."""
    from arhn_pipeline.markdown import text_table

    def num(value: Any, fmt: str = ".3f") -> str:
        return "-" if value is None else format(value, fmt)

    first = result.methods.unique("method", keep="first", maintain_order=True)
    changed = [
        (r["method"] + (" (detector)" if r["kind"] == "detector" else ""), r["gate"], num(r["share_changed"], ".1%"),
         r["to_positive"], r["dropped_negatives"], r["dropped_queries"])
        for r in first.iter_rows(named=True)
        if r["method"] != UNTRAINED
    ]  # fmt: skip
    lines = ["what each method changes:"]
    lines += text_table(
        ["method", "gate", "changed", "to positive", "dropped", "queries dropped"],
        changed,
        max_cell=36,
        numbers_right=True,
        rule=True,
    )
    agreement = [
        (r["method"], r["reference"], r["pairs"], *(num(r[m]) for m in MEASURES))
        for r in result.agreement.iter_rows(named=True)
        if not r["trained_on"]
    ]
    if agreement:
        lines += ["", "agreement with each reference (labelled negatives):"]
        lines += text_table(
            ["method", "reference", "pairs", "P", "R", "F1", "kappa"], agreement, numbers_right=True, rule=True
        )
    downstream = [
        (r["method"], r["eval_set"], num(r["retriever_ndcg_at_10"]), num(r["retriever_recall_at_100"]),
         num(r["reranker_ndcg_at_10"]))
        for r in result.methods.iter_rows(named=True)
        if r["eval_set"] is not None
    ]  # fmt: skip
    if downstream:
        lines += ["", "downstream (the retriever fine-tuned on each method's triplets):"]
        lines += text_table(
            ["method", "eval set", "nDCG@10", "Recall@100", "reranker nDCG@10"],
            downstream,
            numbers_right=True,
            rule=True,
        )
    return lines
