"""`reviews`: a person's answers on a sample of each partition's candidates (`arhn review`), as a source the
graph knows. The review page records an observation with the reviews' data version as answers come in (and
"Observe" in the UI reads the store); a new version makes `judge_qualification` and `relabeled` stale, and the
automation sensor re-runs them for that partition. Its lineage shows what a gate decision rests on."""

import warnings

import dagster as dg

from arhn_pipeline.partitions import subset_partitions
from arhn_pipeline.review import data
from arhn_pipeline.store import DuckDBStore

KEY = dg.AssetKey("reviews")


def _observe(duckdb: DuckDBStore) -> dg.DataVersionsByPartition:
    with duckdb.get_connection() as conn:
        subsets = [r[0] for r in conn.execute("SELECT DISTINCT subset FROM reviews ORDER BY 1").fetchall()]
        return dg.DataVersionsByPartition({s: data.version(conn, s) for s in subsets})


with warnings.catch_warnings():  # observable source assets are marked beta in this Dagster
    warnings.simplefilter("ignore", dg.BetaWarning)
    reviews = dg.observable_source_asset(
        key=KEY,
        partitions_def=subset_partitions,
        group_name="relabel",
        description="A person's answers on a stratified sample of the partition's negatives (arhn review): a "
        "reference for this partition's own judges, weighted to the whole partition (review/core.py). Data "
        "version: the number of reviews and the newest.",
    )(_observe)


def report(instance: dg.DagsterInstance, subset: str, version: str) -> None:
    """Tell Dagster that a partition's reviews changed (what the review page calls as answers come in)."""
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=KEY,
            partition=subset,
            tags={"dagster/data_version": version},
            metadata={"reviews": version},
        )
    )


assets = [reviews]
