"""The `judge_qualification` asset: per partition, each judge's agreement with every reference entry but the
partition itself; `relabeled` applies a method's changes only when it qualifies (qualify/core.py)."""

import dagster as dg

from arhn_pipeline.markdown import md_table
from arhn_pipeline.partitions import subset_partitions
from arhn_pipeline.qualify import core
from arhn_pipeline.rules import decisions as dec
from arhn_pipeline.rules.config import DecisionConfig
from arhn_pipeline.sources.registry import load_registry
from arhn_pipeline.store import DuckDBStore, replace_partition, table_metadata

EVIDENCE = ("snippets", "rankings", "judgments")


@dg.asset(
    partitions_def=subset_partitions,
    # every partition's evidence: the reference entries are partitions too
    deps=[dg.AssetDep(name, partition_mapping=dg.AllPartitionMapping()) for name in EVIDENCE]
    + [dg.AssetDep("reviews")],  # the partition's own reviews (review/assets.py)
    code_version=f"qualify-1+{dec.RULES_VERSION}",
    kinds={"duckdb"},
    group_name="relabel",
    description="Each judge behind this partition's decisions (method, models, prompts, settings), scored against "
    "every registry entry with a reference except this partition, and against this partition's own reviews (arhn "
    "review; weighted to the whole partition): precision, recall, F1 and Cohen's kappa with a 95% interval. "
    "`relabeled` applies a method only when the interval's lower end reaches min_kappa.",
)
def judge_qualification(context: dg.AssetExecutionContext, config: DecisionConfig, duckdb: DuckDBStore):
    subset = context.partition_key
    references = {name: e for name, e in load_registry().items() if e.reference is not None}
    with duckdb.reading() as conn:  # the evidence and the references, read from a snapshot: no write lock
        own = dec.decide_partition(conn, subset, config)
        if not own.methods:
            raise dg.Failure(f"no evidence to decide from for {subset!r}: {'; '.join(own.skipped)}")
        rows, outcomes = core.qualify(conn, subset, own, references, config)
    with duckdb.get_connection() as conn:
        replace_partition(conn, "judge_qualification", subset, rows)
        tables = table_metadata(conn, "judge_qualification", subset)
    pooled = core.gate_verdicts(rows, own.judges, min_kappa=0.0)
    reviewed = rows.filter(rows["reference_format"] == core.REVIEWS)
    shown = rows.sort("method", "reference").select(
        "method", "reference", "pairs", "precision", "recall", "f1", "kappa", "kappa_low", "kappa_high",
        "reviewers_items", "reviewers_kappa",
    )  # fmt: skip
    return dg.MaterializeResult(
        metadata={
            **tables,
            "references_used": sum(o.used for o in outcomes),
            "reviewed_negatives": max(reviewed["pairs"].to_list(), default=0),
            "by_reference": dg.MetadataValue.md(
                md_table(
                    [
                        "method",
                        "reference",
                        "labelled negatives",
                        "precision",
                        "recall",
                        "F1",
                        "kappa",
                        "95% interval",
                        "two reviewers agree (kappa, items)",
                    ],
                    [
                        (
                            m,
                            ref,
                            n,
                            round(p, 3),
                            round(r, 3),
                            round(f, 3),
                            round(k, 3),
                            core.interval_text(lo, hi),
                            "-" if not items else f"{rk:.2f} on {items}",
                        )
                        for m, ref, n, p, r, f, k, lo, hi, items, rk in shown.rows()
                    ],
                )  # fmt: skip
            ),
            "pooled_kappa": dg.MetadataValue.md(
                md_table(
                    ["method", "judge", "kappa (reviews, else the references)", "95% interval", "labelled negatives"],
                    [
                        (m, own.judges[m], "-" if v.kappa is None else f"{v.kappa:.3f}", v.interval, v.pairs)
                        for m, v in pooled.items()
                    ],
                )
            ),
            "reference_entries": dg.MetadataValue.md(
                md_table(["entry", "used", "why"], [(o.reference, o.used, o.why) for o in outcomes])
            ),
            "judges": dg.MetadataValue.md(md_table(["judge", "made of"], list(own.judge_descriptions.items()))),
        }
    )
