"""The `trained_judge` asset: a false-negative judge fitted on the labelled negatives of chosen registry entries
(trained_judge/core.py). The cascade's `trained_judge` stage and the `judge:NAME` ranker use it by name."""

import dagster as dg
from pydantic import Field

from arhn_pipeline.store import DuckDBStore
from arhn_pipeline.trained_judge import core, training


class TrainedJudgeConfig(dg.Config):
    name: str = Field(default="trained", description="the judge's name: var/judges/NAME.json")
    train_on: list[str] = Field(
        default_factory=lambda: ["trec_dl19_judged"],
        description="registry entries with a `reference` (human grades or your own labels) to fit on; a judge never "
        "qualifies on these",
    )
    embedders: list[str] = Field(
        default_factory=lambda: list(core.DEFAULT_EMBEDDERS),
        description="sentence-transformers models whose similarities are the features (sparse:NAME for a SPLADE model)",
    )
    regularization: float = Field(default=1.0, description="the logistic regression's C (smaller: simpler)")
    max_length: int = Field(default=256, description="token limit of queries and passages when embedding")
    cheap_embedders: list[str] = Field(
        default_factory=list,
        description="a cascade inside the judge: these of its embedders (e.g. all-MiniLM-L6-v2, splade-tiny) score "
        "every pair first, the others only the pairs they leave open (core.fit_cascade); empty: no cascade",
    )


@dg.asset(
    deps=[dg.AssetDep("raw_triplets", partition_mapping=dg.AllPartitionMapping())],
    kinds={"sklearn"},
    group_name="rlhn",
    code_version="trained-judge-3",
    description="A false-negative judge: a logistic regression over embedding similarities (query-negative, "
    "query-positive, negative-positive, margin; EmbeddingGemma-300M, all-MiniLM-L6-v2 and SPLADE-tiny), fitted on "
    "the labelled negatives of chosen registry entries. Name it in a cascade stage (kind trained_judge) or as "
    "ranker judge:NAME.",
)
def trained_judge(context: dg.AssetExecutionContext, config: TrainedJudgeConfig, duckdb: DuckDBStore):
    with duckdb.get_connection() as conn:
        judge, path = training.train(
            conn, config.name, config.train_on, config.embedders, config.regularization, config.max_length,
            config.cheap_embedders,
        )  # fmt: skip
    context.log.info(f"judge {config.name} ({judge.identity}) fitted on {judge.labelled} labelled negatives: {path}")
    return dg.MaterializeResult(metadata={**core.describe(judge), "path": dg.MetadataValue.path(path)})
