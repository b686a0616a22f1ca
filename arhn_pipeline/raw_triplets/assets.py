"""The `raw_triplets` asset and its checks."""

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from arhn_pipeline.markdown import md_table
from arhn_pipeline.partitions import subset_partitions
from arhn_pipeline.raw_triplets.ingest import ingest
from arhn_pipeline.sources.registry import load_registry

INGEST_VERSION = "1"


class RawTripletsConfig(dg.Config):
    batch_size: int = Field(default=20_000, description="candidate rows written to DuckDB per batch")


@dg.asset(
    partitions_def=subset_partitions,
    code_version=INGEST_VERSION,
    kinds={"duckdb", "python"},
    group_name="ingest",
    description="The sub-dataset's triplets, validated and normalized: queries, passages (stored once), "
    "candidates (positive/negative, original rank and score). Bad rows go to `quarantine` with their reason.",
)
def raw_triplets(context: dg.AssetExecutionContext, config: RawTripletsConfig, duckdb: DuckDBResource):
    subset = context.partition_key
    registry = load_registry()
    if subset not in registry:
        raise dg.Failure(f"partition {subset!r} is not in the source registry ({sorted(registry)})")
    entry = registry[subset]
    context.log.info(f"ingesting {subset} from {entry.location}")
    with duckdb.get_connection() as conn:
        stats = ingest(conn, subset, entry, batch_size=config.batch_size)
        preview = _preview(conn, subset)
        reasons = conn.execute(
            "SELECT field, reason, count(*) FROM quarantine WHERE subset = ? GROUP BY ALL ORDER BY 3 DESC LIMIT 10",
            [subset],
        ).fetchall()
    context.log.info(f"{subset}: {stats.as_dict()}")
    return dg.MaterializeResult(
        metadata={
            "source": entry.location,
            **{k: dg.MetadataValue.int(v) for k, v in stats.as_dict().items()},
            "quarantine_reasons": dg.MetadataValue.md(md_table(["field", "reason", "count"], reasons)),
            "preview": dg.MetadataValue.md(preview),
        }
    )


def _preview(conn, subset: str, n: int = 5) -> str:
    rows = conn.execute(
        """
        SELECT q.query_id, left(q.text, 80),
               count(*) FILTER (WHERE c.role = 'positive'), count(*) FILTER (WHERE c.role = 'negative'),
               left(any_value(p.text) FILTER (WHERE c.role = 'positive'), 100)
        FROM queries q JOIN candidates c USING (subset, query_id) JOIN passages p USING (passage_id)
        WHERE q.subset = ? GROUP BY q.query_id, q.text, q.line ORDER BY q.line LIMIT ?
        """,
        [subset, n],
    ).fetchall()
    return md_table(["query_id", "query", "positives", "negatives", "a positive"], rows)


@dg.asset_check(asset=raw_triplets, blocking=False, description="Quarantined lines stay under 5% of the source.")
def quarantine_share(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource) -> dg.AssetCheckResult:
    subset = context.partition_key if context.has_partition_key else None
    with duckdb.get_connection() as conn:
        bad, good = conn.execute(
            "SELECT (SELECT count(*) FROM quarantine WHERE subset = $s AND scope = 'row'),"
            " (SELECT count(*) FROM queries WHERE subset = $s)",
            {"s": subset},
        ).fetchone()
    share = bad / max(bad + good, 1)
    return dg.AssetCheckResult(
        passed=share < 0.05,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"quarantined_lines": bad, "ingested_queries": good, "share": round(share, 4)},
    )


@dg.asset_check(
    asset=raw_triplets, blocking=True, description="Every ingested query has at least one positive and one negative."
)
def every_query_has_positive_and_negative(
    context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource
) -> dg.AssetCheckResult:
    subset = context.partition_key if context.has_partition_key else None
    with duckdb.get_connection() as conn:
        broken = conn.execute(
            """
            SELECT q.query_id FROM queries q LEFT JOIN candidates c USING (subset, query_id)
            WHERE q.subset = ? GROUP BY q.query_id
            HAVING count(*) FILTER (WHERE c.role = 'positive') = 0 OR count(*) FILTER (WHERE c.role = 'negative') = 0
            """,
            [subset],
        ).fetchall()
    return dg.AssetCheckResult(passed=not broken, metadata={"queries_missing_a_role": len(broken)})
