"""The `method_comparison` asset: a thin shell over compare/core.py that stores the comparison in DuckDB
(`method_comparison`, `method_agreement`), writes it as CSV and shows it as a Markdown table and two plots."""

from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from arhn_pipeline import charts, settings
from arhn_pipeline.compare import core
from arhn_pipeline.sources.registry import load_registry
from arhn_pipeline.store import DuckDBStore, table_metadata, transaction


class MethodComparisonConfig(dg.Config):
    subsets: list[str] | None = Field(
        default=None, description="partitions to compare (default: every partition with decisions)"
    )
    detectors: list[str] = Field(
        default_factory=lambda: list(core.DEFAULT_DETECTORS),
        description="detectors to add as rows (flags only): margin:M, judge:NAME, stage:NAME; the cascade's "
        "stages stored for the partitions are added by themselves",
    )
    pruned: list[str] | None = Field(default=None, description="pruned collections to include (default: all)")
    csv_path: str | None = Field(
        default=None, description="where the CSV goes (default: var/comparison/method_comparison.csv)"
    )


@dg.asset(
    deps=[
        dg.AssetDep("relabeled", partition_mapping=dg.AllPartitionMapping()),
        "pruned_collection",
        "retriever_eval",
        "reranker_eval",
    ],
    kinds={"duckdb"},
    group_name="retriever",
    code_version="compare-1",
    description="Every cleaning method side by side on the same partitions: share of negatives changed, dropped "
    "queries, agreement with every reference (P/R/F1/kappa), the qualification gate, and the nDCG@10 / Recall@100 "
    "of the retriever and the reranker trained on each method's collection on every eval set. Also as CSV.",
)
def method_comparison(context: dg.AssetExecutionContext, config: MethodComparisonConfig, duckdb: DuckDBStore):
    registry = load_registry()
    with duckdb.get_connection() as conn:
        subsets = config.subsets or [
            r[0] for r in conn.execute("SELECT DISTINCT subset FROM decisions ORDER BY 1").fetchall()
        ]
        if not subsets:
            raise dg.Failure("no partition has decisions yet: materialize relabeled first")
        references = {n: e for n, e in registry.items() if n in subsets and e.reference is not None}
        detectors = list(dict.fromkeys(config.detectors + core.stored_stages(conn, subsets)))
        result = core.compare(conn, subsets, references, detectors, config.pruned)
        with transaction(conn):
            conn.execute("DELETE FROM method_comparison")
            conn.execute("DELETE FROM method_agreement")
            conn.register("_methods", result.methods.to_arrow())
            conn.execute("INSERT INTO method_comparison SELECT *, now() FROM _methods")
            conn.unregister("_methods")
            conn.register("_agreement", result.agreement.to_arrow())
            conn.execute("INSERT INTO method_agreement SELECT * FROM _agreement")
            conn.unregister("_agreement")
        tables = {**table_metadata(conn, "method_comparison")}
    wide = result.wide()
    csv = Path(config.csv_path) if config.csv_path else settings.var_dir() / "comparison" / "method_comparison.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    wide.write_csv(csv)
    for reference, why in result.references.items():
        context.log.warning(f"reference of {reference} not used: {why}")
    return dg.MaterializeResult(
        metadata={
            **tables,
            "subsets": ", ".join(subsets),
            "comparison": dg.MetadataValue.md(core.markdown(result)),
            "csv": dg.MetadataValue.path(str(csv)),
            **charts.plot_metadata(_downstream_png(result.methods), "method_comparison", "nDCG@10 per method"),
            **charts.plot_metadata(
                _agreement_png(result.agreement), "method_agreement", "kappa per method", key="agreement_plot"
            ),
        }
    )


def _downstream_png(frame: pl.DataFrame) -> bytes:
    rows = frame.filter(pl.col("eval_set").is_not_null())
    methods = rows["method"].unique(maintain_order=True).to_list()
    series: dict[str, list[float | None]] = {}
    for eval_set in rows["eval_set"].unique(maintain_order=True).to_list():
        for column, label in (("retriever_ndcg_at_10", "retriever"), ("reranker_ndcg_at_10", "reranker")):
            got = dict(rows.filter(pl.col("eval_set") == eval_set).select("method", column).rows())
            if any(v is not None for v in got.values()):
                series[f"{label} on {eval_set}"] = [got.get(m) for m in methods]
    return charts.grouped_bars(methods, series, "nDCG@10")


def _agreement_png(frame: pl.DataFrame) -> bytes:
    measured = frame.filter(~pl.col("trained_on"))
    methods = measured["method"].unique(maintain_order=True).to_list()
    series = {
        ref: [
            dict(measured.filter(pl.col("reference") == ref).select("method", "kappa").rows()).get(m) for m in methods
        ]
        for ref in measured["reference"].unique(maintain_order=True).to_list()
    }
    return charts.grouped_bars(methods, series, "Cohen's kappa")
