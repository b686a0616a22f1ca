"""The `relabeled` asset: decisions per method, the cleaned triplets, and the audit preview."""

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from arhn_pipeline.judgments.assets import judgments
from arhn_pipeline.markdown import md_table
from arhn_pipeline.partitions import subset_partitions
from arhn_pipeline.rankings import core as rankings_core
from arhn_pipeline.rankings.assets import rankings
from arhn_pipeline.relabel import arhn, rlhn
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
    rlhn_techniques: list[str] = Field(
        default=["rlhn", "hn_remove", "remove"],
        description="RLHN techniques to decide from the cascade's final verdicts: rlhn, hn_remove, remove, default",
    )
    rlhn_max_flagged: int = Field(default=8, description="RLHN: a query with more flagged negatives is dropped")
    rlhn_count: str = Field(
        default="better_and_worse", description="RLHN: which verdicts flag a negative: better, or better_and_worse"
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
    return pl.DataFrame(rows, schema=DECISION_SCHEMA)


RLHN_EVIDENCE = """
SELECT c.query_id, c.passage_id, c.role, v.verdict, v.call_id AS verdict_call_id, v.stage, v.model,
       v.template_version
FROM candidates c
LEFT JOIN verdicts v ON v.subset = c.subset AND v.query_id = c.query_id AND v.passage_id = c.passage_id AND v.final
WHERE c.subset = ?
ORDER BY c.query_id, c.role DESC, c.original_rank
"""


def rlhn_decisions(evidence: pl.DataFrame, subset: str, config: RelabeledConfig) -> pl.DataFrame:
    rows = []
    for (qid,), group in evidence.group_by("query_id", maintain_order=True):
        negs = group.filter(pl.col("role") == "negative")
        stage = negs["stage"].drop_nulls()
        versions = f"judgments={negs['template_version'].drop_nulls().first() or 'margin'},rules={RULES_VERSION}"
        for technique in config.rlhn_techniques:
            pos_decision, neg_decisions = rlhn.decide_query(
                negs["verdict"].to_list(), technique, config.rlhn_max_flagged, config.rlhn_count
            )
            decided = iter(neg_decisions)
            for ev in group.iter_rows(named=True):
                action, rule = pos_decision if ev["role"] == "positive" else next(decided)
                rows.append(
                    dict(
                        subset=subset,
                        method=f"rlhn:{technique}",
                        query_id=qid,
                        passage_id=ev["passage_id"],
                        role=ev["role"],
                        action=action,
                        rule=rule,
                        snippet_status=None,
                        snippet=None,
                        snippet_call_id=None,
                        rank=None,
                        positive_rank=None,
                        rank_call_ids=None,
                        verdict=ev["verdict"],
                        verdict_call_id=ev["verdict_call_id"],
                        prompt_versions=versions + (f",stage={stage.first()}" if stage.len() else ""),
                        model=ev["model"],
                    )
                )
    return pl.DataFrame(rows, schema=DECISION_SCHEMA)


DECISION_SCHEMA = {
    "subset": pl.String,
    "method": pl.String,
    "query_id": pl.String,
    "passage_id": pl.String,
    "role": pl.String,
    "action": pl.String,
    "rule": pl.String,
    "snippet_status": pl.String,
    "snippet": pl.String,
    "snippet_call_id": pl.String,
    "rank": pl.Int64,
    "positive_rank": pl.Int64,
    "rank_call_ids": pl.List(pl.String),
    "verdict": pl.String,
    "verdict_call_id": pl.String,
    "prompt_versions": pl.String,
    "model": pl.String,
}


@dg.asset(
    partitions_def=subset_partitions,
    deps=[snippets, rankings, judgments],
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
    unknown |= set(config.rlhn_techniques) - set(rlhn.TECHNIQUES)
    if unknown or config.rlhn_count not in rlhn.COUNTED:
        raise dg.Failure(
            f"unknown method(s) {sorted(unknown)} or rlhn_count {config.rlhn_count!r}; ARHN: "
            f"{sorted(arhn.METHODS)}, RLHN: {list(rlhn.TECHNIQUES)}, rlhn_count: {list(rlhn.COUNTED)}"
        )
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
            evidence = conn.execute(ARHN_EVIDENCE, [subset]).pl()
            frames.append(arhn_decisions(evidence, subset, config.arhn_methods, config.allow_unverified_snippets))
            methods += [f"arhn:{m}" for m in config.arhn_methods]
        elif config.arhn_methods:
            skipped.append("ARHN: rankings not materialized for this partition")
        if config.rlhn_techniques and have["verdicts"]:
            frames.append(rlhn_decisions(conn.execute(RLHN_EVIDENCE, [subset]).pl(), subset, config))
            methods += [f"rlhn:{t}" for t in config.rlhn_techniques]
        elif config.rlhn_techniques:
            skipped.append("RLHN: judgments not materialized for this partition")
        if not frames:
            raise dg.Failure(f"no evidence to decide from for {subset!r}: {'; '.join(skipped)}")
        decisions = pl.concat(frames)
        replace_partition(conn, "decisions", subset, decisions, methods=methods)
        examples = conn.execute(
            """
            SELECT d.method, d.query_id, left(q.text, 60), left(p.text, 90), d.action, d.rule, d.snippet_status,
                   left(d.snippet, 60), d.rank, d.positive_rank, d.verdict,
                   'arhn explain --subset ' || d.subset || ' --query ' || d.query_id || ' --passage ' || d.passage_id
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
            "skipped": "; ".join(skipped) or "none",
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
                        "verdict",
                        "full evidence",
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


@dg.asset_check(
    asset=relabeled,
    blocking=False,
    description="For partitions whose registry entry names a reference: precision, recall, F1 and kappa "
    "of every method's and the cascade's false-negative calls against it (informational).",
)
def agreement_with_reference(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource):
    from arhn_pipeline import agreement as ag
    from arhn_pipeline.sources.registry import load_registry

    entry = load_registry().get(context.partition_key)
    if entry is None or entry.reference is None:
        return dg.AssetCheckResult(passed=True, metadata={"reference": "none for this partition"})
    ref = ag.load_reference(entry.reference.format, entry.reference.path)
    with duckdb.get_connection() as conn:
        table = ag.table(conn, context.partition_key, ref, ag.stored_detectors(conn, context.partition_key))
    return dg.AssetCheckResult(
        passed=True,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "reference": f"{entry.reference.format}: {entry.reference.path.name}",
            "agreement": dg.MetadataValue.md(md_table(["detector"] + ag.COLUMNS, table)),
        },
    )
