"""What the LLM stages (snippets, rankings, judgments) share: how they are declared as assets, and the checks
of how many of their answers could not be read or were no evidence."""

from collections.abc import Collection, Sequence
from typing import Any

import dagster as dg

from arhn_pipeline.partitions import subset_partitions

LLM_POOL = "llm_engine"  # limited to 1 in dagster.yaml: one LLM step at a time across runs


def llm_stage_asset(
    *, name: str, group_name: str, code_version: str, description: str, check_specs: Sequence[dg.AssetCheckSpec]
) -> Any:
    """The asset decorator of a per-subset LLM stage: reads raw_triplets (by key), holds the engine pool, is
    versioned by its prompt file and parser, and returns its checks with its materialization (so they see the
    run's configuration)."""
    return dg.asset(
        name=name,
        partitions_def=subset_partitions,
        deps=["raw_triplets"],
        code_version=code_version,
        kinds={"duckdb", "vllm"},
        group_name=group_name,
        pool=LLM_POOL,
        description=description,
        check_specs=check_specs,
    )


def share_check(
    check_name: str, statuses: Sequence[str], bad: Collection[str], threshold: float
) -> dg.AssetCheckResult:
    """The share of rows whose status is in `bad`, against the run's threshold (the rows stay for inspection)."""
    count = sum(1 for s in statuses if s in bad)
    share = count / len(statuses) if statuses else 0.0
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=share <= threshold,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows": len(statuses), "count": count, "share": round(share, 4), "threshold": threshold},
    )
