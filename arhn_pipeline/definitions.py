"""The whole pipeline as one Definitions object: each stage's assets and checks, the shared resources,
and the jobs `arhn run` and the UI launch."""

import dagster as dg

from arhn_pipeline import settings
from arhn_pipeline.automation import automation_sensor, nightly_refresh, with_automation
from arhn_pipeline.engine.base import LLMEngine
from arhn_pipeline.engine.resources import engine_from_env
from arhn_pipeline.evaluate import assets as evaluate_assets
from arhn_pipeline.judgments import assets as judgments_assets
from arhn_pipeline.partitions import source_registry_sensor
from arhn_pipeline.prune import assets as prune_assets
from arhn_pipeline.rankings import assets as rankings_assets
from arhn_pipeline.raw_triplets import assets as raw_triplets_assets
from arhn_pipeline.relabel import assets as relabel_assets
from arhn_pipeline.snippets import assets as snippets_assets
from arhn_pipeline.store import DuckDBStore
from arhn_pipeline.train import assets as train_assets

STAGE_MODULES = [
    raw_triplets_assets,
    snippets_assets,
    rankings_assets,
    judgments_assets,
    relabel_assets,
    prune_assets,
    train_assets,
    evaluate_assets,
]

clean_subset_job = dg.define_asset_job(
    name="clean_subset",
    selection=dg.AssetSelection.assets("raw_triplets", "snippets", "rankings", "judgments", "relabeled"),
    description="Every per-subset stage for one partition.",
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


def build_defs(llm: LLMEngine | None = None, duckdb: DuckDBStore | None = None) -> dg.Definitions:
    """The shipped definitions; tests pass their own engine or store (the defaults: the engine named by
    ARHN_ENGINE / ARHN_MODEL, and the DuckDB file at settings.db_path())."""
    assets = with_automation(dg.load_assets_from_modules(STAGE_MODULES))
    return dg.Definitions(
        assets=assets,
        jobs=[clean_subset_job, collection_job, train_job, eval_job],
        sensors=[source_registry_sensor, automation_sensor],
        schedules=[nightly_refresh],
        # One process per run: the engine loads once and serves every LLM step of the run.
        executor=dg.in_process_executor,
        resources={
            "duckdb": duckdb or DuckDBStore(database=str(settings.db_path())),
            "llm": llm or engine_from_env(),
        },
    )


defs = build_defs()
