"""The `trained_retriever` asset: one partition per training variant (original or a cleaned collection)."""

import time

import dagster as dg
from pydantic import Field

from arhn_pipeline import embeddings
from arhn_pipeline.partitions import variant_partitions
from arhn_pipeline.store import DuckDBStore
from arhn_pipeline.train import core
from arhn_pipeline.vocab import VARIANTS, NegativeRule


class TrainedRetrieverConfig(dg.Config):
    base_model: str = Field(
        default=embeddings.DEFAULT_EMBEDDER,
        description="sentence-transformers model name or folder (GPU: e.g. intfloat/e5-base-unsupervised)",
    )
    subsets: list[str] | None = Field(default=None, description="sub-datasets to train on (default: all)")
    pruned_name: str = Field(default="pruned", description="the pruned collection the `pruned` variant uses")
    negatives_per_query: int = Field(default=3, description="hard negatives per example")
    negative_rule: NegativeRule = Field(
        default=NegativeRule.sample_with_replacement,
        description="when a query has fewer negatives: draw its own again, or pad from other queries",
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
    deps=[dg.AssetDep("relabeled", partition_mapping=dg.AllPartitionMapping()), "pruned_collection"],
    kinds={"pytorch"},
    group_name="retriever",
    code_version="train-1",
    description="A sentence-transformers retriever fine-tuned with MultipleNegativesRankingLoss on the variant's "
    "collection; the model folder is kept per variant under var/retrievers/.",
)
def trained_retriever(context: dg.AssetExecutionContext, config: TrainedRetrieverConfig, duckdb: DuckDBStore):
    variant = context.partition_key
    method = VARIANTS[variant]
    data = core.variant_rows(duckdb.reading, variant, config.subsets, config.pruned_name)
    if not data:
        raise dg.Failure(f"no triplets for variant {variant!r} ({method}): materialize relabeled / pruned_collection")
    out = core.retriever_dir(variant)
    fp = core.fingerprint("retriever", config.base_model, data, config, core.TrainingSettings)
    t0 = time.perf_counter()
    reused = core.reuse_model(out, fp, [core.retriever_dir(v) for v in VARIANTS])
    if reused:
        context.log.info(f"{variant}: not trained again, reused {reused}")
        result: dict = {"reused": reused}
    else:
        context.log.info(f"training {variant} on {len(data)} queries from {config.base_model}")
        result = core.fine_tune(config.base_model, data, out, config, log=context.log.info)
        core.write_fingerprint(out, fp)
    return dg.MaterializeResult(
        metadata={
            "method": method,
            "base_model": config.base_model,
            "model_path": dg.MetadataValue.path(str(out)),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "fingerprint": fp,
            "queries": len(data),
            "negatives": sum(len(r["neg"]) for r in data),
            **result,
        }
    )
