"""What the LLM stages (snippets, rankings, judgments) share: how they are declared as assets, and the checks
of how many of their answers could not be read or were no evidence."""

import hashlib
from collections.abc import Collection, Iterator, Sequence
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


def finished_batches(poll: Any, rows: list[tuple[str, str, str, str]]) -> dict[tuple[str, str], list[str]]:
    """(partition, asset) -> its batch ids, for each stage whose open batches have all finished at the provider
    (`poll(endpoint, batch_id)` -> status). rows: (batch_id, endpoint, partition, asset) of open batches."""
    from arhn_pipeline.engine.batch_api import FINISHED

    stages: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for batch_id, endpoint, partition, asset in rows:
        stages.setdefault((partition, asset), []).append((batch_id, endpoint))
    return {
        where: sorted(b for b, _ in batches)
        for where, batches in stages.items()
        if all(poll(endpoint, b) in FINISHED for b, endpoint in batches)
    }


@dg.sensor(
    name="llm_batch_sensor",
    minimum_interval_seconds=120,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Batch API runs (ARHN_OPENAI_MODE=batch): polls the open batches recorded in llm_batches and, "
    "when every batch of a partition's stage has finished, requests a run of that stage for the partition, which "
    "collects the answers (engine/batch_api.py).",
)
def llm_batch_sensor(context: dg.SensorEvaluationContext) -> Iterator[dg.RunRequest | dg.SkipReason]:
    import duckdb

    from arhn_pipeline import settings
    from arhn_pipeline.engine.batch_api import COLLECTED, Provider
    from arhn_pipeline.engine.resources import engine_from_env

    path = settings.db_path()
    if not path.exists():
        yield dg.SkipReason("no pipeline database yet")
        return
    try:  # a short read-only look; while a run writes the file, wait for the next tick
        with duckdb.connect(str(path), read_only=True) as conn:
            has_table = conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'llm_batches'").fetchone()
            rows = (
                conn.execute(
                    "SELECT batch_id, endpoint, partition, asset FROM llm_batches WHERE status != ? "
                    "AND partition IS NOT NULL",
                    [COLLECTED],
                ).fetchall()
                if has_table and has_table[0]
                else []
            )
    except duckdb.IOException:
        yield dg.SkipReason("the database is being written: looking again next tick")
        return
    if not rows:
        yield dg.SkipReason("no open batches")
        return
    engine = engine_from_env()
    providers: dict[str, Provider] = {}

    def poll(endpoint: str, batch_id: str) -> str:
        provider = providers.setdefault(endpoint, Provider(engine, endpoint))  # type: ignore[arg-type]
        return str(provider.status(batch_id).get("status"))

    try:
        ready = finished_batches(poll, rows)
    finally:
        for provider in providers.values():
            provider.close()
    if not ready:
        yield dg.SkipReason(f"{len(rows)} open batch(es), none of a stage all finished")
    for (partition, asset), ids in ready.items():
        yield dg.RunRequest(
            run_key=f"batches-{hashlib.sha256(','.join(ids).encode()).hexdigest()[:16]}",
            job_name="gather_evidence",
            partition_key=partition,
            asset_selection=[dg.AssetKey(asset)],
            tags={"arhn/collects_batches": ",".join(ids)[:1000]},
        )
