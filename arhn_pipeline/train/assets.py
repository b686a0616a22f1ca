"""The `trained_retriever` asset: one partition per training variant (original or a cleaned collection)."""

import time

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from arhn_pipeline import embeddings, settings
from arhn_pipeline.export import rows as collection_rows
from arhn_pipeline.prune.assets import pruned_collection
from arhn_pipeline.relabel.assets import relabeled
from arhn_pipeline.train import core

# variant (partition key) -> the collection it trains on
VARIANTS = {
    "original": "original",
    "arhn_R": "arhn:R",
    "arhn_F": "arhn:F",
    "arhn_RF": "arhn:R+F",
    "rlhn_rlhn": "rlhn:rlhn",
    "rlhn_hn_remove": "rlhn:hn_remove",
    "rlhn_remove": "rlhn:remove",
    "pruned": "pruned",
}
variant_partitions = dg.StaticPartitionsDefinition(list(VARIANTS))


def retriever_dir(variant: str):
    return settings.var_dir() / "retrievers" / variant


class TrainedRetrieverConfig(dg.Config):
    base_model: str = Field(
        default=embeddings.DEFAULT_EMBEDDER,
        description="sentence-transformers model name or folder (GPU: e.g. intfloat/e5-base-unsupervised)",
    )
    subsets: list[str] | None = Field(default=None, description="sub-datasets to train on (default: all)")
    pruned_name: str = Field(default="pruned", description="the pruned collection the `pruned` variant uses")
    negatives_per_query: int = Field(default=3, description="hard negatives per example")
    negative_rule: str = Field(
        default="sample_with_replacement",
        description="when a query has fewer negatives: sample_with_replacement or pad_from_other_queries",
    )
    scale: float = Field(default=20.0, description="MultipleNegativesRankingLoss scale (1 / temperature)")
    epochs: int = Field(default=1, description="passes over the examples")
    learning_rate: float = Field(default=2e-5, description="peak learning rate (linear warm-up and decay)")
    batch_size: int = Field(default=16, description="examples per step; the other examples are in-batch negatives")
    max_length: int = Field(default=256, description="token limit of queries and passages")
    warmup_ratio: float = Field(default=0.1, description="share of steps with a rising learning rate")
    seed: int = Field(default=42, description="seed of sampling, shuffling and initialization")
    query_prefix: str = Field(default="", description='prepended to queries (E5: "query: ")')
    passage_prefix: str = Field(default="", description='prepended to passages (E5: "passage: ")')


@dg.asset(
    partitions_def=variant_partitions,
    deps=[dg.AssetDep(relabeled, partition_mapping=dg.AllPartitionMapping()), pruned_collection],
    kinds={"pytorch"},
    group_name="retriever",
    code_version="train-1",
    description="A sentence-transformers retriever fine-tuned with MultipleNegativesRankingLoss on the variant's "
    "collection; the model folder is kept per variant under var/retrievers/.",
)
def trained_retriever(context: dg.AssetExecutionContext, config: TrainedRetrieverConfig, duckdb: DuckDBResource):
    variant = context.partition_key
    method = VARIANTS[variant]
    with duckdb.get_connection() as conn:
        if method == "pruned":
            data = list(collection_rows(conn, "", pruned=config.pruned_name))
        else:
            data = list(collection_rows(conn, method, config.subsets))
    if config.subsets:
        data = [r for r in data if r["subset"] in config.subsets]
    if not data:
        raise dg.Failure(f"no triplets for variant {variant!r} ({method}): materialize relabeled / pruned_collection")
    settings_ = core.TrainingSettings(**{f: getattr(config, f) for f in core.TrainingSettings.__dataclass_fields__})
    out = retriever_dir(variant)
    context.log.info(f"training {variant} on {len(data)} queries from {config.base_model}")
    t0 = time.perf_counter()
    result = core.fine_tune(config.base_model, data, out, settings_, log=context.log.info)
    return dg.MaterializeResult(
        metadata={
            "method": method,
            "base_model": config.base_model,
            "model_path": dg.MetadataValue.path(str(out)),
            "train_seconds": round(time.perf_counter() - t0, 1),
            **result,
        }
    )
