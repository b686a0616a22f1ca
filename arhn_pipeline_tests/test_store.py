"""Partition writes: replace_partition swaps one partition's rows; writes inside one `transaction` land
together or not at all."""

import polars as pl
import pytest

from arhn_pipeline.store import replace_partition, transaction


def rows(subset: str, n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subset": subset,
            "query_id": [f"q{i}" for i in range(n)],
            "passage_id": [f"p{i}" for i in range(n)],
            "role": "negative",
            "rank": list(range(n)),
            "placed": True,
            "positive_rank": 0,
            "call_ids": [["c"]] * n,
        }
    )


def counts(db) -> dict[str, int]:
    return dict(db.execute("SELECT subset, count(*) FROM rankings GROUP BY ALL").fetchall())


def test_replace_partition_swaps_only_that_partition(db):
    replace_partition(db, "rankings", "a", rows("a", 3))
    replace_partition(db, "rankings", "b", rows("b", 2))
    replace_partition(db, "rankings", "a", rows("a", 5))
    assert counts(db) == {"a": 5, "b": 2}


def test_writes_in_one_transaction_roll_back_together(db):
    replace_partition(db, "rankings", "a", rows("a", 3))
    with pytest.raises(RuntimeError, match="after the first write"), transaction(db):
        replace_partition(db, "rankings", "a", rows("a", 7))  # its own transaction joins the outer one
        assert counts(db) == {"a": 7}
        raise RuntimeError("a failure after the first write")
    assert counts(db) == {"a": 3}
    with transaction(db):
        replace_partition(db, "rankings", "a", rows("a", 4))
        replace_partition(db, "rankings", "b", rows("b", 1))
    assert counts(db) == {"a": 4, "b": 1}
