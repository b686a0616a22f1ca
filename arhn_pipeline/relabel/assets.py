"""The `relabeled` asset: a thin shell over relabel/decisions.py; the cleaned triplets are the
`cleaned_triplets` view."""

import dagster as dg
import polars as pl
from pydantic import Field

from arhn_pipeline import agreement as ag
from arhn_pipeline.markdown import md_table
from arhn_pipeline.partitions import subset_partitions
from arhn_pipeline.relabel import decisions as dec
from arhn_pipeline.sources.registry import load_registry
from arhn_pipeline.store import DuckDBStore, replace_partition, scalar, table_metadata
from arhn_pipeline.vocab import ArhnMethod, RlhnCount, RlhnTechnique

ONE_DECISION = "one_decision_per_candidate_and_method"
AGREEMENT = "agreement_with_reference"


class RelabeledConfig(dg.Config):
    arhn_methods: list[ArhnMethod] = Field(
        default_factory=lambda: [ArhnMethod.RF, ArhnMethod.R, ArhnMethod.F],
        description="ARHN methods to decide: R (relabel), F (filter), RF (R+F); each gets its own decision rows",
    )
    allow_unverified_snippets: bool = Field(
        default=False, description="count snippets not found in their passage as answer evidence (F)"
    )
    rlhn_techniques: list[RlhnTechnique] = Field(
        default_factory=lambda: [RlhnTechnique.rlhn, RlhnTechnique.hn_remove, RlhnTechnique.remove],
        description="RLHN techniques to decide from the cascade's final verdicts",
    )
    rlhn_max_flagged: int = Field(default=8, description="RLHN: a query with more flagged negatives is dropped")
    rlhn_count: RlhnCount = Field(
        default=RlhnCount.better_and_worse, description="RLHN: which verdicts flag a negative"
    )
    min_kappa: float = Field(
        default=0.2,
        description="on a partition with a reference: the agreement check fails when a method's Cohen's kappa "
        "against it is below this",
    )


EXAMPLES = """
SELECT d.method, d.query_id, left(q.text, 60), left(p.text, 90), d.action, d.rule, d.snippet_status,
       left(d.snippet, 60), d.rank, d.positive_rank, d.verdict,
       'arhn explain --subset ' || d.subset || ' --query ' || d.query_id || ' --passage ' || d.passage_id
FROM decisions d JOIN queries q USING (subset, query_id) JOIN passages p USING (passage_id)
WHERE d.subset = ? AND d.method = ? AND d.action != 'keep'
ORDER BY d.query_id, d.rank LIMIT 10
"""

ONE_DECISION_SQL = """
SELECT count(*) FROM (
  SELECT m.method, c.query_id, c.passage_id, count(d.action) n
  FROM candidates c CROSS JOIN (SELECT DISTINCT method FROM decisions WHERE subset = $s) m
  LEFT JOIN decisions d ON d.subset = c.subset AND d.method = m.method
       AND d.query_id = c.query_id AND d.passage_id = c.passage_id
  WHERE c.subset = $s GROUP BY ALL HAVING n != 1)
"""


@dg.asset(
    partitions_def=subset_partitions,
    deps=["snippets", "rankings", "judgments"],
    code_version=dec.RULES_VERSION,
    kinds={"duckdb"},
    group_name="relabel",
    description="One decision per (method, query, candidate): keep / to_positive / drop_negative / drop_query, "
    "the rule that fired, and the evidence (snippet, ranks, verdicts, call ids, the prompt versions and models "
    "that produced them). The cleaned triplets are the `cleaned_triplets` view.",
    check_specs=[
        dg.AssetCheckSpec(ONE_DECISION, asset="relabeled", blocking=True, description="One decision per candidate."),
        dg.AssetCheckSpec(
            AGREEMENT,
            asset="relabeled",
            description="Where the registry entry names a reference: precision, recall, F1 and kappa of every "
            "method against it; fails when a method's kappa is below min_kappa.",
        ),
    ],
)
def relabeled(context: dg.AssetExecutionContext, config: RelabeledConfig, duckdb: DuckDBStore):
    subset = context.partition_key
    frames, methods, skipped = [], [], []
    with duckdb.get_connection() as conn:
        have = dict(
            conn.execute(
                "SELECT 'rankings', count(*) FROM rankings WHERE subset = $s UNION ALL "
                "SELECT 'verdicts', count(*) FROM verdicts WHERE subset = $s",
                {"s": subset},
            ).fetchall()
        )
        if config.arhn_methods and have["rankings"]:
            evidence = dec.arhn_evidence(conn, subset)
            frames.append(dec.arhn_decisions(evidence, subset, config.arhn_methods, config.allow_unverified_snippets))
            methods += [f"arhn:{m}" for m in config.arhn_methods]
        elif config.arhn_methods:
            skipped.append("ARHN: rankings not materialized for this partition")
        if config.rlhn_techniques and have["verdicts"]:
            evidence = dec.rlhn_evidence(conn, subset)
            frames.append(
                dec.rlhn_decisions(evidence, subset, config.rlhn_techniques, config.rlhn_max_flagged, config.rlhn_count)
            )
            methods += [f"rlhn:{t}" for t in config.rlhn_techniques]
        elif config.rlhn_techniques:
            skipped.append("RLHN: judgments not materialized for this partition")
        if not frames:
            raise dg.Failure(f"no evidence to decide from for {subset!r}: {'; '.join(skipped)}")
        decisions = pl.concat(frames)
        replace_partition(conn, "decisions", subset, decisions, methods=methods)
        examples = conn.execute(EXAMPLES, [subset, methods[0]]).fetchall()
        bad = scalar(conn, ONE_DECISION_SQL, {"s": subset})
        agreement = _agreement_check(conn, subset, methods, config.min_kappa)
        tables = table_metadata(conn, "decisions", subset)
    summary = decisions.group_by("method", "action", "rule").len().sort("method", "action", "rule")
    first = decisions.filter(pl.col("method") == methods[0])
    headers = [
        "method",
        "query_id",
        "query",
        "passage",
        "action",
        "rule",
        "snippet status",
        "snippet",
        "rank",
        "positive rank",
        "verdict",
        "full evidence",
    ]
    return dg.MaterializeResult(
        metadata={
            **tables,
            "methods": ", ".join(methods),
            "skipped": "; ".join(skipped) or "none",
            **{f"{methods[0]}/{a}": int(n) for a, n in first["action"].value_counts().sort("action").iter_rows()},
            "decisions_by_rule": dg.MetadataValue.md(
                md_table(["method", "action", "rule", "candidates"], summary.rows())
            ),
            "relabeled_examples": dg.MetadataValue.md(md_table(headers, examples)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=ONE_DECISION, passed=bad == 0, metadata={"candidates_without_exactly_one_decision": bad}
            ),
            agreement,
        ],
    )


def _agreement_check(conn, subset: str, methods: list[str], min_kappa: float) -> dg.AssetCheckResult:
    entry = load_registry().get(subset)
    if entry is None or entry.reference is None:
        return dg.AssetCheckResult(check_name=AGREEMENT, passed=True, metadata={"reference": "none for this partition"})
    ref = ag.load_reference(entry.reference.format, entry.reference.path)
    rows = ag.table(conn, subset, ref, ag.stored_detectors(conn, subset))
    kappa = {r[0]: r[ag.COLUMNS.index("kappa") + 1] for r in rows}
    below = sorted(m for m in methods if kappa.get(m, 0.0) < min_kappa)
    return dg.AssetCheckResult(
        check_name=AGREEMENT,
        passed=not below,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "reference": f"{entry.reference.format}: {entry.reference.path.name}",
            "min_kappa": min_kappa,
            "methods_below_min_kappa": ", ".join(below) or "none",
            "agreement": dg.MetadataValue.md(md_table(["detector"] + ag.COLUMNS, rows)),
        },
    )
