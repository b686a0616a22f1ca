"""What `arhn run` ends with: what the run did, read back from the store. Per partition, its negatives and per
method the gate (applied / withheld, with the kappa it was measured at), the negatives it changed and the queries
it dropped; then each retriever variant's nDCG@10 per eval set. Plain text that fits 100 columns."""

from __future__ import annotations

import re
from collections.abc import Sequence

import duckdb

from arhn_pipeline.compare import core as cmp
from arhn_pipeline.markdown import text_table

METHOD_HEADERS = ["method", "gate", "kappa", "proposed", "changed", "to positive", "dropped", "queries dropped"]
RETRIEVER_HEADERS = ["variant", "eval set", "nDCG@10", "Recall@100", "vs original"]


def partition_lines(conn: duckdb.DuckDBPyConnection, subset: str) -> list[str]:
    """The methods' outcome on one partition: the gate and the kappa it was measured at (several: the parts of
    a combined method), `proposed` what the rules would change, `changed` what the gate let through (to positive
    + dropped negatives)."""
    negatives, queries = cmp.partition_counts(conn, [subset])
    head = f"{subset}: {queries:,} queries, {negatives:,} negatives"
    rows = []
    for method in cmp.decided_methods(conn, [subset]):
        r = cmp.method_row(conn, [subset], method)
        gate, _, kappa = r["gate"].partition(" (kappa ")
        gate = re.sub(r"partly withheld \((\d+) of (\d+)\)", r"withheld \1/\2", gate)
        rows.append(
            (
                method,
                gate,
                kappa.rstrip(")") or "-",
                r["proposed"],
                f"{r['changed']} ({r['share_changed']:.1%})",
                r["to_positive"],
                r["dropped_negatives"],
                r["dropped_queries"],
            )
        )
    if not rows:
        quarantined = conn.execute("SELECT count(*) FROM quarantine WHERE subset = ?", [subset]).fetchone()
        return [f"{head}, {quarantined[0] if quarantined else 0:,} lines quarantined; no decisions yet"]
    return [head, *("  " + line for line in text_table(METHOD_HEADERS, rows, max_cell=40, numbers_right=True))]


def retriever_lines(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Each variant's retriever on each eval set, and its difference from the retriever trained on the original
    triplets (`untrained`: the base model before fine-tuning)."""
    rows = conn.execute(
        "SELECT variant, eval_set, ndcg_at_10, recall_at_100 FROM retriever_eval ORDER BY eval_set, "
        "variant != 'base', variant != 'original', variant"
    ).fetchall()
    if not rows:
        return []
    original = {e: n for v, e, n, _ in rows if v == "original"}
    table = [
        (
            "untrained" if v == "base" else v,
            e,
            f"{n:.3f}",
            f"{r:.3f}",
            "-" if v in ("base", "original") or e not in original else f"{n - original[e]:+.3f}",
        )
        for v, e, n, r in rows
    ]
    return ["retrievers (nDCG@10 on each eval set):"] + [
        "  " + line for line in text_table(RETRIEVER_HEADERS, table, numbers_right=True)
    ]


def report(conn: duckdb.DuckDBPyConnection, partitions: Sequence[str]) -> list[str]:
    lines: list[str] = []
    for subset in partitions:
        lines += partition_lines(conn, subset) + [""]
    return lines + retriever_lines(conn)
