"""The `retriever_eval` asset: every trained variant and the untrained base model on every eval set."""

import time
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from arhn_pipeline import charts, embeddings
from arhn_pipeline.evaluate import core
from arhn_pipeline.markdown import md_table
from arhn_pipeline.store import DuckDBStore, table_metadata, transaction
from arhn_pipeline.train.core import read_fingerprint, retriever_dir
from arhn_pipeline.vocab import VARIANTS


class RetrieverEvalConfig(dg.Config):
    eval_sets: dict[str, str] = Field(
        default={"samples": "data/samples/beir"},
        description="name -> BEIR folder (relative to the project); e.g. scifact: ../shared/data/beir/scifact",
    )
    split: str = Field(default="test", description="qrels/<split>.tsv")
    base_model: str = Field(default=embeddings.DEFAULT_EMBEDDER, description="the untrained row")
    variants: list[str] | None = Field(default=None, description="variants to score (default: every trained one)")
    ignore_identical_ids: bool = Field(default=True, description="drop a retrieved doc whose id equals the query id")
    query_prefix: str = Field(default="", description="as in training")
    passage_prefix: str = Field(default="", description="as in training")


@dg.asset(
    deps=["trained_retriever"],
    kinds={"pytorch", "duckdb"},
    group_name="retriever",
    code_version="eval-1",
    description="nDCG@10 and Recall@100 (ir-measures) of the base model and every trained variant on BEIR-layout "
    "sets, as a table and a plot.",
)
def retriever_eval(context: dg.AssetExecutionContext, config: RetrieverEvalConfig, duckdb: DuckDBStore):
    from sentence_transformers import SentenceTransformer

    chosen = config.variants or [v for v in VARIANTS if (retriever_dir(v) / "config.json").exists()]
    models = [("base", embeddings.model_location(config.base_model))]
    models += [(v, str(retriever_dir(v))) for v in chosen]
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], tuple[str, dict[str, float]]] = {}
    for set_name, folder in config.eval_sets.items():
        path = core.eval_set_path(folder)
        corpus, queries, qrels = core.load_beir(path, config.split)
        qp, pp = config.query_prefix, config.passage_prefix
        for variant, location in models:
            t0 = time.perf_counter()
            fp = read_fingerprint(Path(location))
            if fp is not None and (fp, set_name) in seen:  # the same model as a variant scored before
                twin, s = seen[(fp, set_name)]
                context.log.info(f"{variant}: the same model as {twin} (same training data and settings)")
            else:
                if variant == "base":  # the untrained model's run is kept: reranker_eval re-ranks the same one
                    run = core.cached_retrieve(
                        location, path, config.split, corpus, queries, query_prefix=qp, passage_prefix=pp
                    )
                else:
                    model = SentenceTransformer(location, device="cpu")
                    run = core.retrieve(model, corpus, queries, query_prefix=qp, passage_prefix=pp)
                s = core.score(run, qrels, config.ignore_identical_ids)
                if fp is not None:
                    seen[(fp, set_name)] = (variant, s)
            context.log.info(f"{variant} on {set_name}: {s} ({time.perf_counter() - t0:.0f} s)")
            rows.append(
                dict(
                    variant=variant,
                    eval_set=set_name,
                    ndcg_at_10=s["nDCG@10"],
                    recall_at_100=s["R@100"],
                    queries=len(queries),
                    model_path=location,
                )
            )
    frame = pl.DataFrame(rows)
    with duckdb.get_connection() as conn, transaction(conn):
        for r in rows:
            conn.execute("DELETE FROM retriever_eval WHERE variant = ? AND eval_set = ?", [r["variant"], r["eval_set"]])
            conn.execute(
                "INSERT INTO retriever_eval VALUES (?, ?, ?, ?, ?, ?, now())",
                [r["variant"], r["eval_set"], r["ndcg_at_10"], r["recall_at_100"], r["queries"], r["model_path"]],
            )
        tables = table_metadata(conn, "retriever_eval")
    sets = frame["eval_set"].unique(maintain_order=True).to_list()
    variants = frame["variant"].unique(maintain_order=True).to_list()
    ndcg: dict[tuple[str, str], float] = {(r["variant"], r["eval_set"]): r["ndcg_at_10"] for r in rows}
    png = charts.grouped_bars(variants, {s: [ndcg.get((v, s)) for v in variants] for s in sets}, "nDCG@10")
    table = md_table(
        ["variant", "eval set", "nDCG@10", "Recall@100", "queries"],
        [
            (r["variant"], r["eval_set"], f"{r['ndcg_at_10']:.4f}", f"{r['recall_at_100']:.4f}", r["queries"])
            for r in rows
        ],
    )
    return dg.MaterializeResult(
        metadata={
            **tables,
            "results": dg.MetadataValue.md(table),
            **charts.plot_metadata(png, "retriever_eval", "nDCG@10 per variant"),
            "measures": "ir-measures (pytrec_eval): nDCG@10, R@100",
        }
    )
