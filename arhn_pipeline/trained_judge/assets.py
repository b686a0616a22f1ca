"""The `trained_judge` asset: a false-negative judge fitted on the labelled negatives of chosen registry entries
(trained_judge/core.py). The cascade's `trained_judge` stage and the `judge:NAME` ranker use it by name."""

import dagster as dg
from pydantic import Field

from arhn_pipeline import agreement as ag
from arhn_pipeline import settings
from arhn_pipeline.sources.registry import load_registry
from arhn_pipeline.store import DuckDBStore, load_pairs
from arhn_pipeline.trained_judge import core


class TrainedJudgeConfig(dg.Config):
    name: str = Field(default="trained", description="the judge's name: var/judges/NAME.json")
    train_on: list[str] = Field(
        default_factory=lambda: ["trec_dl19_judged"],
        description="registry entries with a `reference` (human grades or your own labels) to fit on; a judge never "
        "qualifies on these",
    )
    embedders: list[str] = Field(
        default_factory=lambda: list(core.DEFAULT_EMBEDDERS),
        description="sentence-transformers models whose similarities are the features",
    )
    regularization: float = Field(default=1.0, description="the logistic regression's C (smaller: simpler)")
    max_length: int = Field(default=256, description="token limit of queries and passages when embedding")


def train(store: DuckDBStore, config: TrainedJudgeConfig) -> tuple[core.JudgeModel, str]:
    """Fit the judge on the configured entries (their raw_triplets must be ingested); return it and its file."""
    import numpy as np

    registry = load_registry()
    triples, labels, trained_on = [], [], {}
    for name in config.train_on:
        entry = registry.get(name)
        if entry is None or entry.reference is None:
            raise ValueError(f"{name!r} is not a registry entry with a `reference` to train on")
        with store.get_connection() as conn:
            pairs = load_pairs(conn, name)
        if pairs.is_empty():
            raise ValueError(f"{name!r} has no ingested rows: materialize its raw_triplets first")
        t, y, _ = core.labelled_triples(pairs, ag.load_reference(entry.reference.format, entry.reference.path))
        triples += t
        labels.append(y)
        trained_on[name] = core.file_sha256(entry.reference.path)
    y_all = np.concatenate(labels)
    x = core.features(triples, config.embedders, config.max_length)
    judge = core.fit(x, y_all, config.embedders, trained_on, config.regularization, config.max_length)
    path = judge.save(settings.judges_dir() / f"{config.name}.json")
    return judge, str(path)


@dg.asset(
    deps=[dg.AssetDep("raw_triplets", partition_mapping=dg.AllPartitionMapping())],
    kinds={"sklearn"},
    group_name="rlhn",
    code_version="trained-judge-1",
    description="A false-negative judge: a logistic regression over embedding similarities (query-negative, "
    "query-positive, negative-positive, margin; EmbeddingGemma-300M and all-MiniLM-L6-v2), fitted on the labelled "
    "negatives of chosen registry entries. Name it in a cascade stage (kind trained_judge) or as ranker judge:NAME.",
)
def trained_judge(context: dg.AssetExecutionContext, config: TrainedJudgeConfig, duckdb: DuckDBStore):
    judge, path = train(duckdb, config)
    context.log.info(f"judge {config.name} ({judge.identity}) fitted on {judge.labelled} labelled negatives: {path}")
    return dg.MaterializeResult(metadata={**core.describe(judge), "path": dg.MetadataValue.path(path)})
