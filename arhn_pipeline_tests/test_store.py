"""Partition writes: replace_partition swaps one partition's rows; writes inside one `transaction` land
together or not at all."""

import polars as pl
import pytest

from arhn_pipeline.store import replace_partition, snapshot, transaction


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


def test_snapshot_copies_the_chosen_partitions_of_every_table_and_whole_tables(db):
    """The in-memory copy a slow reader works on (`arhn agreement`, `arhn compare`, `arhn train-judge`): every
    table of the chosen partitions, not only the last one read, their passages, and the tables asked whole."""
    replace_partition(db, "rankings", "a", rows("a", 3))
    replace_partition(db, "rankings", "b", rows("b", 2))
    db.execute(
        "INSERT INTO queries VALUES ('a', 'q0', 'what', NULL, NULL, 'f', 1), ('b', 'q0', 'who', NULL, NULL, 'f', 1)"
    )
    db.execute("INSERT INTO passages VALUES ('p0', NULL, 'text a'), ('p9', NULL, 'text of nothing chosen')")
    db.execute("INSERT INTO candidates VALUES ('a', 'q0', 'p0', 'negative', 0, NULL, NULL)")
    db.execute("INSERT INTO retriever_eval VALUES ('base', 'samples', 0.5, 0.9, 16, 'm', now())")
    mem = snapshot(db, ["a"], whole=["retriever_eval"])
    assert counts(mem) == {"a": 3}
    assert mem.execute("SELECT subset, text FROM queries").fetchall() == [("a", "what")]
    assert mem.execute("SELECT count(*) FROM candidates").fetchone() == (1,)
    assert mem.execute("SELECT passage_id FROM passages").fetchall() == [("p0",)]
    assert mem.execute("SELECT variant, ndcg_at_10 FROM retriever_eval").fetchall() == [("base", 0.5)]


def test_the_state_folder_and_the_database_are_private_to_their_user(tmp_path, monkeypatch):
    import stat

    from arhn_pipeline import settings
    from arhn_pipeline.store import DuckDBStore, connect

    monkeypatch.setenv("ARHN_DB", str(tmp_path / "var" / "arhn.duckdb"))
    with DuckDBStore(database=str(settings.db_path())).get_connection():
        pass
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    assert stat.S_IMODE(settings.db_path().stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.dagster_home().stat().st_mode) == 0o700
    other = tmp_path / "elsewhere" / "cli.duckdb"  # the command line's own connection makes it private too
    with connect(str(other), read_only=False):
        pass
    assert stat.S_IMODE(other.stat().st_mode) == 0o600


def test_rows_that_do_not_match_the_declared_schema_are_refused_naming_the_column(db):
    """schema.py declares each table once; the rows a stage writes must be those columns with those types, so
    a renamed, added or retyped column fails at the write, not later in a reader."""
    from arhn_pipeline.schema import frame_schema
    from arhn_pipeline.store import UndeclaredRows

    good = rows("a", 2)
    assert list(good.schema) == list(frame_schema("rankings"))  # Int32 or Int64 alike fit INTEGER
    with pytest.raises(UndeclaredRows, match="rankings .*positive_rank: String, declared Int64"):
        replace_partition(db, "rankings", "a", good.with_columns(pl.col("positive_rank").cast(pl.String)))
    with pytest.raises(UndeclaredRows, match="extra: not a column of rankings"):
        replace_partition(db, "rankings", "a", good.with_columns(extra=pl.lit(1)))
    with pytest.raises(UndeclaredRows, match="call_ids: missing"):
        replace_partition(db, "rankings", "a", good.drop("call_ids"))
    assert db.execute("SELECT count(*) FROM rankings").fetchone() == (0,)
    replace_partition(db, "rankings", "a", good)
    assert db.execute("SELECT count(*) FROM rankings").fetchone() == (2,)


def test_a_key_stored_twice_in_the_file_keeps_the_first_answer_and_is_counted(tmp_path):
    """Two stores on one DuckDB file (two runs one after the other on the same keys): the file's primary key
    keeps the first answer, the second store is told which keys were there, and each repeat is counted."""
    from arhn_pipeline.store import DuckDBStore
    from arhn_pipeline_tests.test_ducklake import _record

    path = str(tmp_path / "calls.duckdb")
    one, two = DuckDBStore(database=path), DuckDBStore(database=path)
    assert one.store_calls([_record("k1", "a1"), _record("k2", "a2")]) == []
    assert two.store_calls([_record("k2", "b2"), _record("k3", "b3"), _record("k3", "b3 again")]) == ["k2"]
    found = two.lookup_calls(["k1", "k2", "k3", "k4"])
    assert {k: c.response for k, c in found.items()} == {"k1": "a1", "k2": "a2", "k3": "b3"}
    with one.get_connection() as conn:
        assert conn.execute("SELECT call_id FROM llm_calls_asked_twice").fetchall() == [("k2",)]
        assert conn.execute("SELECT count(*) FROM llm_calls").fetchone() == (3,)


def test_a_key_stored_by_another_thread_after_the_look_up_is_kept_once_and_counted(tmp_path, monkeypatch):
    """On the file a batch's repeats come from a look-up on the primary key and the rest go in with a plain
    INSERT; a key another connection of the process commits in between (after this batch's transaction began)
    makes that INSERT fail, and the batch is stored again the slow way: the first answer kept, the repeat
    returned and counted, the other keys stored."""
    from arhn_pipeline import store as store_module
    from arhn_pipeline.store import DuckDBStore
    from arhn_pipeline_tests.test_ducklake import _record

    store = DuckDBStore(database=str(tmp_path / "calls.duckdb"))
    store.store_calls([_record("k0", "a0")])
    real, raced, failed = store_module._store_batch, [], []

    def racing(conn, keys, lake):
        if not raced:  # this batch's transaction reads (its snapshot is taken), then another thread stores k1
            raced.append(True)
            conn.execute("SELECT count(*) FROM llm_calls").fetchone()
            assert store.store_calls([_record("k1", "first")]) == []
        try:
            return real(conn, keys, lake)
        except Exception as exc:
            failed.append(type(exc).__name__)
            raise

    monkeypatch.setattr(store_module, "_store_batch", racing)
    assert store.store_calls([_record("k1", "second"), _record("k2", "b2"), _record("k0", "again")]) == ["k1", "k0"]
    assert failed == ["ConstraintException"]  # the plain INSERT met k1: the slow way stored the batch
    found = store.lookup_calls(["k0", "k1", "k2"])
    assert {k: c.response for k, c in found.items()} == {"k0": "a0", "k1": "first", "k2": "b2"}
    with store.get_connection() as conn:
        assert sorted(conn.execute("SELECT call_id FROM llm_calls_asked_twice").fetchall()) == [("k0",), ("k1",)]


def test_a_lookup_finds_the_same_answers_by_the_index_in_chunks_and_by_the_join(tmp_path):
    """Few keys go to the primary key's index, INDEXED_LOOKUP_CHUNK a statement; many go to one join: both
    find every stored key and nothing else."""
    from arhn_pipeline import store as store_module
    from arhn_pipeline.store import DuckDBStore
    from arhn_pipeline_tests.test_ducklake import _record

    calls = DuckDBStore(database=str(tmp_path / "calls.duckdb"))
    calls.store_calls([_record(f"k{i}", f"a{i}") for i in range(2_500)])
    few = [f"k{i}" for i in range(0, 2_500, 2)] + [f"absent{i}" for i in range(1_000)]  # 2,250 keys: 3 chunks
    many = [f"k{i}" for i in range(2_500)] + [f"absent{i}" for i in range(store_module.INDEXED_LOOKUP_MAX)]
    assert len(few) > 2 * store_module.INDEXED_LOOKUP_CHUNK and len(many) > store_module.INDEXED_LOOKUP_MAX
    found = calls.lookup_calls(few)
    assert {k: c.response for k, c in found.items()} == {f"k{i}": f"a{i}" for i in range(0, 2_500, 2)}
    assert {k: c.response for k, c in calls.lookup_calls(many).items()} == {f"k{i}": f"a{i}" for i in range(2_500)}
