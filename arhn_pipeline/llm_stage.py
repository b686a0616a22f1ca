"""What the LLM stages (snippets, rankings, judgments) share: how they are declared as assets, and the check
of how many of their answers could not be read."""

import dagster as dg

from arhn_pipeline.partitions import subset_partitions
from arhn_pipeline.raw_triplets.assets import raw_triplets

LLM_POOL = "llm_engine"  # limited to 1 in dagster.yaml: one LLM step at a time across runs


def llm_stage_asset(*, group_name: str, code_version: str, description: str):
    """The asset decorator of a per-subset LLM stage: reads raw_triplets, holds the engine pool, and is
    versioned by its prompt file and parser."""
    return dg.asset(
        partitions_def=subset_partitions,
        deps=[raw_triplets],
        code_version=code_version,
        kinds={"duckdb", "vllm"},
        group_name=group_name,
        pool=LLM_POOL,
        description=description,
    )


def unparsed_check(
    conn, table: str, subset: str, threshold: float, column: str = "status", where: str = ""
) -> dg.AssetCheckResult:
    """The share of rows whose answer could not be read, against a threshold (the rows stay for inspection)."""
    unparsed, total = conn.execute(
        f"SELECT count(*) FILTER (WHERE {column} = 'unparsed'), count(*) FROM {table} WHERE subset = ? {where}",
        [subset],
    ).fetchone()
    share = unparsed / total if total else 0.0
    return dg.AssetCheckResult(
        passed=share <= threshold,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"unparsed": unparsed, "rows": total, "share": round(share, 4), "threshold": threshold},
    )
