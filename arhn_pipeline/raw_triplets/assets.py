"""The `raw_triplets` asset and its checks."""

from typing import Literal

import dagster as dg
from pydantic import Field

from arhn_pipeline.markdown import md_table
from arhn_pipeline.partitions import subset_partitions
from arhn_pipeline.raw_triplets.ingest import Limits, ingest
from arhn_pipeline.sources.readers import MAX_LINE_BYTES, SourceError
from arhn_pipeline.sources.registry import RegistryError, load_registry
from arhn_pipeline.sources.rows import MAX_TEXT_CHARS
from arhn_pipeline.store import DuckDBStore, other_tables_metadata, table_metadata

QUARANTINE_SHARE = "quarantine_share"
EVERY_QUERY = "every_query_has_positive_and_negative"

INGEST_VERSION = "1"


class RawTripletsConfig(dg.Config):
    batch_size: int = Field(default=20_000, description="candidate rows written to DuckDB per batch")
    max_line_bytes: int = Field(
        default=MAX_LINE_BYTES, ge=1, description="a longer line is quarantined as too_large, never held in memory"
    )
    max_text_chars: int = Field(
        default=MAX_TEXT_CHARS, ge=1, description="a query or passage longer than this quarantines its row (too_large)"
    )
    reader: Literal["columnar", "per_line"] = Field(
        default="columnar",
        description="columnar: chunks parsed and checked by DuckDB, a line it cannot take read alone; per_line: "
        "every row through pydantic (the reference; the same tables, slower)",
    )


@dg.asset(
    partitions_def=subset_partitions,
    code_version=INGEST_VERSION,
    kinds={"duckdb", "python"},
    group_name="ingest",
    description="The sub-dataset's triplets, validated and normalized: queries, passages (stored once), "
    "candidates (positive/negative, original rank and score). Bad rows go to `quarantine` with their reason.",
    check_specs=[
        dg.AssetCheckSpec(QUARANTINE_SHARE, asset="raw_triplets", description="Quarantined lines under 5%."),
        dg.AssetCheckSpec(
            EVERY_QUERY,
            asset="raw_triplets",
            blocking=True,
            description="Every ingested query has at least one positive and one negative.",
        ),
    ],
)
def raw_triplets(context: dg.AssetExecutionContext, config: RawTripletsConfig, duckdb: DuckDBStore):
    subset = context.partition_key
    try:
        entry = load_registry().entry(subset)
    except RegistryError as exc:
        raise dg.Failure(description=f"{exc}; fix the entry (the other partitions are not affected)") from None
    context.log.info(f"ingesting {subset} from {entry.location}")
    limits = Limits(max_line_bytes=config.max_line_bytes, max_text_chars=config.max_text_chars)
    # on DuckLake the ingest streams without the write lock and takes it for its last transaction alone
    with duckdb.staged_writer() as (conn, lock):
        try:
            stats = ingest(
                conn, subset, entry, batch_size=config.batch_size, limits=limits, reader=config.reader, commit_lock=lock
            )
        except SourceError as exc:  # the file as a whole (missing, not UTF-8 text, no valid row): one clear line
            raise dg.Failure(description=str(exc)) from None
        preview = _preview(conn, subset)
        reasons = conn.execute(
            "SELECT field, reason, count(*) FROM quarantine WHERE subset = ? GROUP BY ALL ORDER BY 3 DESC LIMIT 10",
            [subset],
        ).fetchall()
        checks = [_quarantine_share(conn, subset), _every_query_has_both(conn, subset)]
        tables = {
            **table_metadata(conn, "candidates", subset),
            **other_tables_metadata(conn, ["queries", "quarantine"], subset),
        }
    context.log.info(f"{subset}: {stats.line()}")
    return dg.MaterializeResult(
        check_results=checks,
        metadata={
            **tables,
            "source": entry.location,
            **{k: dg.MetadataValue.int(v) for k, v in stats.as_dict().items()},
            "quarantine_reasons": dg.MetadataValue.md(md_table(["field", "reason", "count"], reasons)),
            "preview": dg.MetadataValue.md(preview),
        },
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


def _quarantine_share(conn, subset: str) -> dg.AssetCheckResult:
    bad, good = conn.execute(
        "SELECT (SELECT count(*) FROM quarantine WHERE subset = $s AND scope = 'row'),"
        " (SELECT count(*) FROM queries WHERE subset = $s)",
        {"s": subset},
    ).fetchone()
    share = bad / max(bad + good, 1)
    return dg.AssetCheckResult(
        check_name=QUARANTINE_SHARE,
        passed=share < 0.05,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"quarantined_lines": bad, "ingested_queries": good, "share": round(share, 4)},
    )


def _every_query_has_both(conn, subset: str) -> dg.AssetCheckResult:
    broken = conn.execute(
        """
        SELECT q.query_id FROM queries q LEFT JOIN candidates c USING (subset, query_id)
        WHERE q.subset = ? GROUP BY q.query_id
        HAVING count(*) FILTER (WHERE c.role = 'positive') = 0 OR count(*) FILTER (WHERE c.role = 'negative') = 0
        """,
        [subset],
    ).fetchall()
    return dg.AssetCheckResult(
        check_name=EVERY_QUERY, passed=not broken, metadata={"queries_missing_a_role": len(broken)}
    )
