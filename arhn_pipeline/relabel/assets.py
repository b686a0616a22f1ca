"""The `relabeled` asset: decisions per method, the cleaned triplets, and the audit preview."""

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from arhn_pipeline.markdown import md_table
from arhn_pipeline.partitions import subset_partitions
from arhn_pipeline.rankings import core as rankings_core
from arhn_pipeline.rankings.assets import rankings
from arhn_pipeline.relabel import arhn
from arhn_pipeline.snippets import core as snippets_core
from arhn_pipeline.snippets.assets import snippets
from arhn_pipeline.store import replace_partition

RULES_VERSION = "arhn-rules-1"


class RelabeledConfig(dg.Config):
    arhn_methods: list[str] = Field(
        default=["R+F", "R", "F"],
        description="ARHN methods to decide: R (relabel), F (filter), R+F; each gets its own decision rows",
    )
    allow_unverified_snippets: bool = Field(
        default=False, description="count snippets not found in their passage as answer evidence (F)"
    )


ARHN_EVIDENCE = """
SELECT c.query_id, c.passage_id, c.role,
       s.status AS snippet_status, s.snippet, s.call_id AS snippet_call_id, s.model AS snippet_model,
       r.rank, r.positive_rank, r.placed, r.call_ids AS rank_call_ids,
       bool_or(r.placed) FILTER (WHERE c.role = 'positive' AND r.rank = r.positive_rank)
           OVER (PARTITION BY c.query_id) AS positive_placed
FROM candidates c
LEFT JOIN snippets s USING (subset, query_id, passage_id)
LEFT JOIN rankings r USING (subset, query_id, passage_id)
WHERE c.subset = ?
ORDER BY c.query_id, c.role DESC, c.original_rank
"""


def arhn_decisions(evidence: pl.DataFrame, subset: str, methods: list[str], allow_unverified: bool) -> pl.DataFrame:
    versions = (
        f"snippets={snippets_core.TEMPLATE.version},rankings={rankings_core.TEMPLATE.version},rules={RULES_VERSION}"
    )
    rows = []
    for ev in evidence.iter_rows(named=True):
        e = arhn.Evidence(
            role=ev["role"],
            snippet_status=ev["snippet_status"],
            rank=ev["rank"],
            positive_rank=ev["positive_rank"],
            placed=bool(ev["placed"]),
            positive_placed=bool(ev["positive_placed"]),
        )
        for method in methods:
            action, rule = arhn.decide(e, method, allow_unverified)
            rows.append(
                dict(
                    subset=subset,
                    method=f"arhn:{method}",
                    query_id=ev["query_id"],
                    passage_id=ev["passage_id"],
                    role=ev["role"],
                    action=action,
                    rule=rule,
                    snippet_status=ev["snippet_status"],
                    snippet=ev["snippet"],
                    snippet_call_id=ev["snippet_call_id"],
                    rank=ev["rank"],
                    positive_rank=ev["positive_rank"],
                    rank_call_ids=ev["rank_call_ids"],
                    verdict=None,
                    verdict_call_id=None,
                    prompt_versions=versions,
                    model=ev["snippet_model"],
                )
            )
    return pl.DataFrame(rows, schema_overrides={"verdict": pl.String, "verdict_call_id": pl.String})


@dg.asset(
    partitions_def=subset_partitions,
    deps=[snippets, rankings],
    code_version=RULES_VERSION,
    kinds={"duckdb"},
    group_name="relabel",
    description="One decision per (method, query, candidate): keep / to_positive / drop_negative / drop_query, "
    "the rule that fired, and the evidence (snippet, ranks, call ids). The cleaned triplets are the "
    "`cleaned_triplets` view.",
)
def relabeled(context: dg.AssetExecutionContext, config: RelabeledConfig, duckdb: DuckDBResource):
    subset = context.partition_key
    unknown = set(config.arhn_methods) - set(arhn.METHODS)
    if unknown:
        raise dg.Failure(f"unknown ARHN method(s) {sorted(unknown)}; choose from {sorted(arhn.METHODS)}")
    with duckdb.get_connection() as conn:
        evidence = conn.execute(ARHN_EVIDENCE, [subset]).pl()
        decisions = arhn_decisions(evidence, subset, config.arhn_methods, config.allow_unverified_snippets)
        methods = [f"arhn:{m}" for m in config.arhn_methods]
        replace_partition(conn, "decisions", subset, decisions, methods=methods)
        examples = conn.execute(
            """
            SELECT d.method, d.query_id, left(q.text, 60), left(p.text, 90), d.action, d.rule, d.snippet_status,
                   left(d.snippet, 60), d.rank, d.positive_rank, d.snippet_call_id
            FROM decisions d JOIN queries q USING (subset, query_id) JOIN passages p USING (passage_id)
            WHERE d.subset = ? AND d.method = ? AND d.action != 'keep'
            ORDER BY d.query_id, d.rank LIMIT 10
            """,
            [subset, methods[0]],
        ).fetchall()
    summary = decisions.group_by("method", "action", "rule").len().sort("method", "action", "rule")
    first = decisions.filter(pl.col("method") == methods[0])
    return dg.MaterializeResult(
        metadata={
            "methods": ", ".join(methods),
            **{f"{methods[0]}/{a}": int(n) for a, n in first["action"].value_counts().sort("action").iter_rows()},
            "decisions_by_rule": dg.MetadataValue.md(
                md_table(["method", "action", "rule", "candidates"], summary.rows())
            ),
            "relabeled_examples": dg.MetadataValue.md(
                md_table(
                    [
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
                        "snippet call",
                    ],
                    examples,
                )
            ),
        }
    )


@dg.asset_check(asset=relabeled, blocking=True, description="Every candidate has exactly one decision per method.")
def one_decision_per_candidate_and_method(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource):
    with duckdb.get_connection() as conn:
        bad = conn.execute(
            """
            SELECT count(*) FROM (
              SELECT m.method, c.query_id, c.passage_id, count(d.action) n
              FROM candidates c CROSS JOIN (SELECT DISTINCT method FROM decisions WHERE subset = $s) m
              LEFT JOIN decisions d ON d.subset = c.subset AND d.method = m.method
                   AND d.query_id = c.query_id AND d.passage_id = c.passage_id
              WHERE c.subset = $s GROUP BY ALL HAVING n != 1)
            """,
            {"s": context.partition_key},
        ).fetchone()[0]
    return dg.AssetCheckResult(passed=bad == 0, metadata={"candidates_without_exactly_one_decision": bad})
