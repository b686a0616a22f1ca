"""The `trained_reranker` asset (one partition per training variant, like `trained_retriever`) and
`reranker_eval`: each variant's cross-encoder re-ranking the base retriever's top k on every eval set."""

import time
from typing import Any

import dagster as dg
from pydantic import Field

from arhn_pipeline import charts, embeddings
from arhn_pipeline.evaluate import core as ev
from arhn_pipeline.markdown import md_table
from arhn_pipeline.partitions import variant_partitions
from arhn_pipeline.rerank import core
from arhn_pipeline.store import DuckDBStore, table_metadata, transaction
from arhn_pipeline.train.core import (
    fingerprint,
    read_fingerprint,
    reuse_model,
    variant_rows,
    write_fingerprint,
)
from arhn_pipeline.vocab import VARIANTS


class TrainedRerankerConfig(dg.Config):
    base_model: str = Field(
        default=embeddings.DEFAULT_EMBEDDER,
        description="a CrossEncoder or an encoder to start from, by name or folder (offline default: the packaged "
        "all-MiniLM-L6-v2 weights with a new head; GPU: e.g. cross-encoder/ms-marco-MiniLM-L6-v2)",
    )
    subsets: list[str] | None = Field(default=None, description="sub-datasets to train on (default: all)")
    pruned_name: str = Field(default="pruned", description="the pruned collection the `pruned` variant uses")
    negatives_per_query: int = Field(default=7, description="hard negatives per query (label 0) beside its positives")
    epochs: int = Field(default=1, description="passes over the pairs")
    learning_rate: float = Field(default=5e-5, description="peak learning rate (linear warm-up and decay)")
    batch_size: int = Field(default=16, description="pairs per step")
    max_length: int = Field(default=256, description="token limit of a (query, passage) pair")
    warmup_ratio: float = Field(default=0.1, description="share of steps with a rising learning rate")
    seed: int = Field(default=42, description="seed of sampling, shuffling and initialization")


@dg.asset(
    partitions_def=variant_partitions,
    deps=[dg.AssetDep("relabeled", partition_mapping=dg.AllPartitionMapping()), "pruned_collection"],
    kinds={"pytorch"},
    group_name="retriever",
    code_version="rerank-1",
    description="A sentence-transformers CrossEncoder fine-tuned with binary cross-entropy on the variant's "
    "positives and hard negatives; the model folder is kept per variant under var/rerankers/.",
)
def trained_reranker(context: dg.AssetExecutionContext, config: TrainedRerankerConfig, duckdb: DuckDBStore):
    variant = context.partition_key
    data = variant_rows(duckdb.reading, variant, config.subsets, config.pruned_name)
    if not data:
        raise dg.Failure(f"no triplets for variant {variant!r}: materialize relabeled / pruned_collection")
    out = core.reranker_dir(variant)
    fp = fingerprint("reranker", config.base_model, data, config, core.RerankerSettings)
    t0 = time.perf_counter()
    reused = reuse_model(out, fp, [core.reranker_dir(v) for v in VARIANTS])
    if reused:
        context.log.info(f"{variant}: not trained again, reused {reused}")
        result: dict = {"reused": reused}
    else:
        context.log.info(f"training the {variant} reranker on {len(data)} queries from {config.base_model}")
        result = core.fine_tune(config.base_model, data, out, config, log=context.log.info)
        write_fingerprint(out, fp)
    return dg.MaterializeResult(
        metadata={
            "method": VARIANTS[variant],
            "base_model": config.base_model,
            "model_path": dg.MetadataValue.path(str(out)),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "fingerprint": fp,
            **result,
        }
    )


class RerankerEvalConfig(dg.Config):
    eval_sets: dict[str, str] = Field(
        default={"samples": "data/samples/beir"},
        description="name -> BEIR folder (relative to the project); e.g. scifact: ../shared/data/beir/scifact",
    )
    split: str = Field(default="test", description="qrels/<split>.tsv")
    first_stage: str = Field(
        default=embeddings.DEFAULT_EMBEDDER, description="the retriever whose top `depth` is re-ranked (untrained)"
    )
    depth: int = Field(default=100, description="documents re-ranked per query")
    variants: list[str] | None = Field(default=None, description="variants to score (default: every trained one)")
    ignore_identical_ids: bool = Field(default=True, description="drop a retrieved doc whose id equals the query id")


@dg.asset(
    deps=["trained_reranker"],
    kinds={"pytorch", "duckdb"},
    group_name="retriever",
    code_version="rerank-eval-1",
    description="nDCG@10 of every trained reranker re-ranking the base retriever's top 100 on BEIR-layout sets, "
    "beside the first stage's own nDCG@10.",
)
def reranker_eval(context: dg.AssetExecutionContext, config: RerankerEvalConfig, duckdb: DuckDBStore):
    chosen = config.variants or [v for v in VARIANTS if (core.reranker_dir(v) / "config.json").exists()]
    if not chosen:
        raise dg.Failure("no trained reranker: materialize trained_reranker for a variant first")
    first = embeddings.model_location(config.first_stage)
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], tuple[str, dict[str, float]]] = {}
    for set_name, folder in config.eval_sets.items():
        path = ev.eval_set_path(folder)
        corpus, queries, qrels = ev.load_beir(path, config.split)
        run = ev.cached_retrieve(first, path, config.split, corpus, queries, k=config.depth)
        base = ev.score(run, qrels, config.ignore_identical_ids)
        for variant in chosen:
            t0 = time.perf_counter()
            fp = read_fingerprint(core.reranker_dir(variant))
            if fp is not None and (fp, set_name) in seen:  # the same model as a variant scored before
                twin, s = seen[(fp, set_name)]
                context.log.info(f"{variant}: the same reranker as {twin} (same training data and settings)")
            else:
                model = core.load(str(core.reranker_dir(variant)))
                reranked = core.rerank(model, corpus, queries, run, config.depth)
                s = ev.score(reranked, qrels, config.ignore_identical_ids)
                if fp is not None:
                    seen[(fp, set_name)] = (variant, s)
            context.log.info(f"{variant} reranker on {set_name}: {s} ({time.perf_counter() - t0:.0f} s)")
            rows.append(
                dict(
                    variant=variant,
                    eval_set=set_name,
                    ndcg_at_10=s["nDCG@10"],
                    recall_at_100=s["R@100"],
                    first_stage=config.first_stage,
                    first_stage_ndcg_at_10=base["nDCG@10"],
                    depth=config.depth,
                    queries=len(queries),
                    model_path=str(core.reranker_dir(variant)),
                )
            )
    with duckdb.get_connection() as conn, transaction(conn):
        for r in rows:
            conn.execute("DELETE FROM reranker_eval WHERE variant = ? AND eval_set = ?", [r["variant"], r["eval_set"]])
            conn.execute("INSERT INTO reranker_eval VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now())", list(r.values()))
        tables = table_metadata(conn, "reranker_eval")
    sets = list(dict.fromkeys(str(r["eval_set"]) for r in rows))
    ndcg: dict[tuple[str, str], float] = {(str(r["variant"]), str(r["eval_set"])): r["ndcg_at_10"] for r in rows}
    png = charts.grouped_bars(chosen, {s: [ndcg.get((v, s)) for v in chosen] for s in sets}, "nDCG@10 (re-ranked)")
    table = md_table(
        ["variant", "eval set", "nDCG@10", "first stage nDCG@10", "depth", "queries"],
        [
            (
                r["variant"],
                r["eval_set"],
                f"{r['ndcg_at_10']:.4f}",
                f"{r['first_stage_ndcg_at_10']:.4f}",
                r["depth"],
                r["queries"],
            )
            for r in rows
        ],
    )
    return dg.MaterializeResult(
        metadata={
            **tables,
            "results": dg.MetadataValue.md(table),
            **charts.plot_metadata(png, "reranker_eval", "re-ranked nDCG@10 per variant"),
            "measures": "ir-measures (pytrec_eval): nDCG@10, R@100",
        }
    )
