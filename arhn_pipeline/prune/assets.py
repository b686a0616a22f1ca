"""The unpartitioned `pruned_collection` asset: a thin shell over prune/core.py."""

import dagster as dg
from pydantic import Field

from arhn_pipeline.markdown import md_table
from arhn_pipeline.prune import core
from arhn_pipeline.store import DuckDBStore, table_metadata
from arhn_pipeline.vocab import Preset


class PrunedCollectionConfig(dg.Config):
    name: str = Field(default="pruned", description="the collection's name in the pruned_collection table")
    method: str = Field(default="arhn:R+F", description="whose triplets: original, arhn:R+F, rlhn:rlhn, ...")
    preset: Preset | None = Field(default=None, description="a named keep-list: rlhn7 (RLHN's seven)")
    keep: list[str] | None = Field(default=None, description="sub-datasets to keep (with preset: both lists)")
    max_changed_share: float | None = Field(
        default=None, description="drop a sub-dataset whose share of relabeled or dropped negatives is above this"
    )
    max_quarantined_share: float | None = Field(
        default=None, description="drop a sub-dataset whose share of quarantined source lines is above this"
    )


@dg.asset(
    deps=["relabeled"],
    kinds={"duckdb"},
    group_name="collection",
    code_version="prune-1",
    description="The training collection: one cleaning method's triplets for the sub-datasets kept by a "
    "named list (RLHN's seven as the `rlhn7` preset) and/or by measured statistics.",
)
def pruned_collection(context: dg.AssetExecutionContext, config: PrunedCollectionConfig, duckdb: DuckDBStore):
    with duckdb.get_connection() as conn:
        stats = core.statistics(conn, config.method)
        if stats.is_empty():
            raise dg.Failure(f"no triplets for method {config.method!r}: materialize relabeled first")
        fate = core.choose(stats, config)
        kept = [s for s, why in fate.items() if why == "kept"]
        core.write(conn, config.name, config.method, kept)
        tables = table_metadata(conn, "pruned_collection")
    table = [
        (
            r["subset"],
            r["queries_before"],
            r["queries_after"] if fate[r["subset"]] == "kept" else 0,
            r["negatives"],
            round(r["changed_share"], 3),
            round(r["quarantined_share"], 3),
            fate[r["subset"]],
        )
        for r in stats.iter_rows(named=True)
    ]
    before = int(stats["queries_before"].sum())
    after = sum(t[2] for t in table)
    return dg.MaterializeResult(
        metadata={
            **tables,
            "name": config.name,
            "method": config.method,
            "subsets_kept": len(kept),
            "subsets_dropped": len(fate) - len(kept),
            "queries_before": before,
            "queries_after": after,
            "size_ratio": round(before / after, 2) if after else 0.0,
            "per_subset": dg.MetadataValue.md(
                md_table(
                    [
                        "subset",
                        "queries before",
                        "queries after",
                        "negatives",
                        "changed share",
                        "quarantined share",
                        "decision",
                    ],
                    table,
                )
            ),
        }
    )
