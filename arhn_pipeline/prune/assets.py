"""The unpartitioned `pruned_collection` asset."""

import dagster as dg
import polars as pl
from pydantic import Field

from arhn_pipeline.markdown import md_table
from arhn_pipeline.shards import DATASET_SQL
from arhn_pipeline.store import DuckDBStore, table_metadata, transaction
from arhn_pipeline.vocab import Preset

# The seven BGE-collection sub-datasets RLHN keeps (2.35x smaller training set, +1.0 nDCG@10 on BEIR).
PRESETS = {Preset.rlhn7: ["msmarco_passage", "fiqa", "fever", "arguana", "hotpotqa", "nq", "scidocsrr"]}


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


# one row per sub-dataset: a sharded one's shards together (shards.py)
STATS = f"""
WITH t AS (SELECT {DATASET_SQL} AS subset, count(*) AS queries, sum(len(pos)) AS positives,
                  sum(len(neg)) AS negatives
           FROM triplets WHERE method = $method GROUP BY 1),
     q AS (SELECT {DATASET_SQL} AS subset, count(*) AS ingested FROM queries GROUP BY 1),
     bad AS (SELECT {DATASET_SQL} AS subset, count(*) AS quarantined FROM quarantine WHERE scope = 'row' GROUP BY 1),
     ch AS (SELECT {DATASET_SQL} AS subset, avg(CASE WHEN action != 'keep' THEN 1 ELSE 0 END) AS changed_share
            FROM decisions WHERE method = $method AND role = 'negative' GROUP BY 1)
SELECT t.subset, q.ingested AS queries_before, t.queries AS queries_after, t.positives, t.negatives,
       coalesce(bad.quarantined, 0) / (q.ingested + coalesce(bad.quarantined, 0)) AS quarantined_share,
       coalesce(ch.changed_share, 0.0) AS changed_share
FROM t JOIN q USING (subset) LEFT JOIN bad USING (subset) LEFT JOIN ch USING (subset)
ORDER BY t.subset
"""


def choose(stats: pl.DataFrame, config: PrunedCollectionConfig) -> dict[str, str]:
    """subset -> why it is kept or dropped."""
    named = set(config.keep or []) | set(PRESETS[config.preset] if config.preset else [])
    out = {}
    for row in stats.iter_rows(named=True):
        s = row["subset"]
        if named and s not in named:
            out[s] = "dropped: not in the keep list"
        elif config.max_changed_share is not None and row["changed_share"] > config.max_changed_share:
            out[s] = f"dropped: changed share {row['changed_share']:.3f} > {config.max_changed_share}"
        elif config.max_quarantined_share is not None and row["quarantined_share"] > config.max_quarantined_share:
            out[s] = f"dropped: quarantined share {row['quarantined_share']:.3f} > {config.max_quarantined_share}"
        else:
            out[s] = "kept"
    return out


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
        stats = conn.execute(STATS, {"method": config.method}).pl()
        if stats.is_empty():
            raise dg.Failure(f"no triplets for method {config.method!r}: materialize relabeled first")
        fate = choose(stats, config)
        kept = [s for s, why in fate.items() if why == "kept"]
        with transaction(conn):
            conn.execute("DELETE FROM pruned_collection WHERE name = ?", [config.name])
            conn.execute(
                "INSERT INTO pruned_collection "
                "SELECT ?, method, subset, query_id, query, prompt, pos, neg FROM triplets WHERE method = ? "
                f"AND {DATASET_SQL} IN (SELECT unnest(?::VARCHAR[])) AND len(pos) > 0 AND len(neg) > 0",
                [config.name, config.method, kept],
            )
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
