"""The whole pipeline as one Definitions object: each stage's assets and checks, the shared resources,
and the jobs `arhn run` and the UI launch."""

from typing import Any

import dagster as dg

from arhn_pipeline import settings, storage
from arhn_pipeline.automation import automation_sensor, decide_when_evidence_is_in, nightly_refresh, with_automation
from arhn_pipeline.compare import assets as compare_assets
from arhn_pipeline.dagster_patch import sleep_while_waiting_for_slots
from arhn_pipeline.engine.base import LLMEngine
from arhn_pipeline.engine.resources import engine_from_env
from arhn_pipeline.evaluate import assets as evaluate_assets
from arhn_pipeline.judgments import assets as judgments_assets
from arhn_pipeline.llm_stage import llm_batch_sensor
from arhn_pipeline.partitions import source_registry_sensor
from arhn_pipeline.prune import assets as prune_assets
from arhn_pipeline.qualify import assets as qualify_assets
from arhn_pipeline.rankings import assets as rankings_assets
from arhn_pipeline.raw_triplets import assets as raw_triplets_assets
from arhn_pipeline.relabel import assets as relabel_assets
from arhn_pipeline.rerank import assets as rerank_assets
from arhn_pipeline.review import assets as review_assets
from arhn_pipeline.runs import dead_run_sensor
from arhn_pipeline.snippets import assets as snippets_assets
from arhn_pipeline.store import DuckDBStore
from arhn_pipeline.terminal import FILE_LOGGER, TERMINAL_LOGGER, file_logger, terminal_logger
from arhn_pipeline.train import assets as train_assets
from arhn_pipeline.trained_judge import assets as trained_judge_assets

STAGE_MODULES = [
    raw_triplets_assets,
    trained_judge_assets,
    snippets_assets,
    rankings_assets,
    judgments_assets,
    review_assets,
    qualify_assets,
    relabel_assets,
    prune_assets,
    train_assets,
    evaluate_assets,
    rerank_assets,
    compare_assets,
]

EVIDENCE = ("raw_triplets", "snippets", "rankings", "judgments")
DECIDE = ("judge_qualification", "relabeled")

clean_subset_job = dg.define_asset_job(
    name="clean_subset",
    selection=dg.AssetSelection.assets(*EVIDENCE, *DECIDE),
    description="Every per-subset stage for one partition: the evidence, the judges' qualification on the other "
    "partitions with a reference, and the decisions.",
)
ingest_job = dg.define_asset_job(
    name="ingest",
    selection=dg.AssetSelection.assets("raw_triplets"),
    description="Ingest one partition (its rows checked, repeats folded, bad lines quarantined): on a cluster, "
    "before the LLM stages, so that the GPUs never wait for a large source to be read.",
)
evidence_job = dg.define_asset_job(
    name="gather_evidence",
    selection=dg.AssetSelection.assets(*EVIDENCE),
    description="The evidence of one partition: ingest, snippets, rankings, the cascade's verdicts.",
)
decide_job = dg.define_asset_job(
    name="decide",
    selection=dg.AssetSelection.assets(*DECIDE),
    description="Qualify the judges on the other partitions with a reference, then decide (after gather_evidence "
    "for every partition, so that each can serve as another's reference).",
)
collection_job = dg.define_asset_job(
    name="build_collection",
    selection=dg.AssetSelection.assets("pruned_collection"),
    description="The collection-wide stages, after the partitions: the pruned collection.",
)


train_job = dg.define_asset_job(
    name="train_retriever",
    selection=dg.AssetSelection.assets("trained_retriever"),
    description="Fine-tune the retriever for one variant (partition).",
)
eval_job = dg.define_asset_job(
    name="evaluate_retrievers",
    selection=dg.AssetSelection.assets("retriever_eval"),
    description="Score the base model and every trained variant on the configured BEIR sets.",
)

rerank_train_job = dg.define_asset_job(
    name="train_reranker",
    selection=dg.AssetSelection.assets("trained_reranker"),
    description="Fine-tune the cross-encoder reranker for one variant (partition).",
)
rerank_eval_job = dg.define_asset_job(
    name="evaluate_rerankers",
    selection=dg.AssetSelection.assets("reranker_eval"),
    description="Re-rank the base retriever's top 100 with every trained reranker on the configured BEIR sets.",
)
compare_job = dg.define_asset_job(
    name="compare_methods",
    selection=dg.AssetSelection.assets("method_comparison"),
    description="Every cleaning method side by side: changes, agreement with references, the gate, downstream "
    "figures; also as CSV.",
)


def job_run_config(job: dg.JobDefinition, ops: dict[str, Any]) -> dict[str, Any]:
    """The part of a run config ({ops: {ASSET: {config: ...}}}) that concerns a job's assets."""
    names = {node.name for node in job.graph.node_defs}
    return {"ops": {name: value for name, value in ops.items() if name in names}}


def build_defs(llm: LLMEngine | None = None, duckdb: DuckDBStore | None = None) -> dg.Definitions:
    """The shipped definitions; tests pass their own engine or store (the defaults: the engine named by
    ARHN_ENGINE / ARHN_MODEL, and the DuckDB file at settings.db_path())."""
    assets = with_automation(dg.load_assets_from_modules(STAGE_MODULES))
    return dg.Definitions(
        assets=assets,
        jobs=[
            clean_subset_job,
            ingest_job,
            evidence_job,
            decide_job,
            collection_job,
            train_job,
            eval_job,
            rerank_train_job,
            rerank_eval_job,
            compare_job,
        ],
        loggers={TERMINAL_LOGGER: terminal_logger, FILE_LOGGER: file_logger},
        sensors=[
            source_registry_sensor,
            automation_sensor,
            dead_run_sensor,
            llm_batch_sensor,
            decide_when_evidence_is_in,
        ],
        schedules=[nightly_refresh],
        # One process per run: the engine loads once and serves every LLM step of the run.
        executor=dg.in_process_executor,
        resources={
            "duckdb": duckdb or DuckDBStore(database=str(settings.db_path()), storage=storage.from_env().kind),
            "llm": llm or engine_from_env(),
        },
    )


sleep_while_waiting_for_slots()  # every run process imports this module
defs = build_defs()
