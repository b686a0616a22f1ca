"""The pruned collection without Dagster: each sub-dataset's statistics (a sharded one's shards together), which
sub-datasets a named list and the measured thresholds keep, and the kept triplets written."""

from __future__ import annotations

from typing import Protocol

import duckdb
import polars as pl

from arhn_pipeline.shards import DATASET_SQL
from arhn_pipeline.store import transaction
from arhn_pipeline.vocab import Preset

# The seven BGE-collection sub-datasets RLHN keeps (2.35x smaller training set, +1.0 nDCG@10 on BEIR).
PRESETS = {Preset.rlhn7: ["msmarco_passage", "fiqa", "fever", "arguana", "hotpotqa", "nq", "scidocsrr"]}


class PruneSettings(Protocol):
    """What the choice reads of the asset's config (prune/assets.py PrunedCollectionConfig)."""

    @property
    def preset(self) -> Preset | None: ...

    @property
    def keep(self) -> list[str] | None: ...

    @property
    def max_changed_share(self) -> float | None: ...

    @property
    def max_quarantined_share(self) -> float | None: ...


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


def choose(stats: pl.DataFrame, config: PruneSettings) -> dict[str, str]:
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


def statistics(conn: duckdb.DuckDBPyConnection, method: str) -> pl.DataFrame:
    return conn.execute(STATS, {"method": method}).pl()


def write(conn: duckdb.DuckDBPyConnection, name: str, method: str, kept: list[str]) -> None:
    """The collection `name`: `method`'s triplets of the kept sub-datasets (queries with a positive and a
    negative left), replacing any earlier collection of that name, in one transaction."""
    with transaction(conn):
        conn.execute("DELETE FROM pruned_collection WHERE name = ?", [name])
        conn.execute(
            "INSERT INTO pruned_collection "
            "SELECT ?, method, subset, query_id, query, prompt, pos, neg FROM triplets WHERE method = ? "
            f"AND {DATASET_SQL} IN (SELECT unnest(?::VARCHAR[])) AND len(pos) > 0 AND len(neg) > 0",
            [name, method, kept],
        )
