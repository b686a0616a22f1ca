"""The `retriever_eval` asset: every trained variant and the untrained base model on every eval set."""

import base64
import io
import time
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from arhn_pipeline import embeddings, settings
from arhn_pipeline.evaluate import core
from arhn_pipeline.markdown import md_table
from arhn_pipeline.store import DuckDBStore, table_metadata, transaction
from arhn_pipeline.train.core import VARIANTS, retriever_dir


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


def plot_png(frame: pl.DataFrame) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = frame["eval_set"].unique(maintain_order=True).to_list()
    variants = frame["variant"].unique(maintain_order=True).to_list()
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(variants) * len(sets), 3.6))
    width = 0.8 / len(sets)
    for i, s in enumerate(sets):
        sub = {r["variant"]: r["ndcg_at_10"] for r in frame.filter(pl.col("eval_set") == s).iter_rows(named=True)}
        xs = [j + i * width for j in range(len(variants))]
        bars = ax.bar(xs, [sub.get(v, 0.0) for v in variants], width, label=s)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([j + width * (len(sets) - 1) / 2 for j in range(len(variants))], variants, rotation=20)
    ax.set_ylabel("nDCG@10")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


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
    rows = []
    for set_name, folder in config.eval_sets.items():
        path = Path(folder)
        path = path if path.is_absolute() else settings.PROJECT_ROOT / path
        corpus, queries, qrels = core.load_beir(path, config.split)
        for variant, location in models:
            t0 = time.perf_counter()
            model = SentenceTransformer(location, device="cpu")
            run = core.retrieve(
                model, corpus, queries, query_prefix=config.query_prefix, passage_prefix=config.passage_prefix
            )
            s = core.score(run, qrels, config.ignore_identical_ids)
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
    png = plot_png(frame)
    plot_path = settings.var_dir() / "plots" / "retriever_eval.png"
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot_path.write_bytes(png)
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
            "plot": dg.MetadataValue.md(
                f"![nDCG@10 per variant](data:image/png;base64,{base64.b64encode(png).decode()})"
            ),
            "plot_path": dg.MetadataValue.path(str(plot_path)),
            "measures": "ir-measures (pytrec_eval): nDCG@10, R@100",
        }
    )
