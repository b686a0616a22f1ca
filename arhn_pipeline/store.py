"""The DuckDB file every stage writes into, and the operations on it that stages share.

The tables themselves are defined in schema.py. Passages are stored once, keyed by a hash of their
normalized text (identity.py); every other table is keyed by (subset, query_id[, passage_id]) so that any
decision joins back to its inputs. Stages replace a partition's rows inside one transaction, so a failed run
leaves the previous rows intact. Connections are short, one piece of work each, and never held while an engine
generates or a model trains, so other processes (the CLI, a notebook) get in between.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import duckdb
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr

from arhn_pipeline import faults, settings
from arhn_pipeline.schema import create_schema
from arhn_pipeline.storage import Storage, StorageError, from_env, open_connection, session, writing
from arhn_pipeline.vocab import BATCH_COLLECTED

if TYPE_CHECKING:
    import pyarrow as pa

PARTITIONED_TABLES = ("queries", "candidates", "quarantine")  # written by raw_triplets


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All of the block's writes or none of them. Inside another `transaction` on the same connection, the
    block joins it (DuckDB has no nested transactions), so several writes can be made all-or-nothing together."""
    if id(conn) in _IN_TRANSACTION:
        yield conn
        return
    _IN_TRANSACTION.add(id(conn))
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        _IN_TRANSACTION.discard(id(conn))


_IN_TRANSACTION: set[int] = set()


def replace_partition(
    conn: duckdb.DuckDBPyConnection, table: str, subset: str, frame: pl.DataFrame, methods: list[str] | None = None
) -> None:
    """Swap a partition's rows (only those of `methods`, when given) for `frame` in one transaction: other
    partitions are untouched, and a failure leaves the previous rows. The frame must have the table's declared
    columns and types (schema.py), no more and no fewer."""
    check_declared(table, frame)
    cols = [r[0] for r in conn.execute(f"DESCRIBE {table}").fetchall()]
    with transaction(conn):
        if methods is None:
            conn.execute(f"DELETE FROM {table} WHERE subset = ?", [subset])
        else:
            conn.execute(f"DELETE FROM {table} WHERE subset = ? AND method IN (SELECT unnest(?))", [subset, methods])
        faults.point("table_write")
        if frame.height:
            conn.register("_partition_rows", as_arrow(frame.select(cols)))
            conn.execute(f"INSERT INTO {table} SELECT * FROM _partition_rows")
            conn.unregister("_partition_rows")


def as_arrow(frame: pl.DataFrame) -> pa.Table:
    """The frame as Arrow for DuckDB to read, its text as Arrow string views: the frame's own buffers, not a copy.
    Registered as is, a frame is converted with plain Arrow strings, every value copied out; a partition's
    decisions repeat long texts on every row (the gate's reason, the models, the call ids), and that copy was
    most of what writing them cost in memory (bench/table_write.py)."""
    return frame.to_arrow(compat_level=pl.CompatLevel.newest())


class UndeclaredRows(ValueError):
    """Rows whose columns or types are not the ones schema.py declares for their table."""


def check_declared(table: str, frame: pl.DataFrame) -> None:
    """`frame` has exactly the columns schema.py declares for `table`, each of its declared type (a column of
    nulls only fits any type)."""
    from arhn_pipeline.schema import frame_schema

    declared = frame_schema(table)
    problems = [f"{c}: not a column of {table}" for c in frame.columns if c not in declared]
    problems += [f"{c}: missing" for c in declared if c not in frame.columns]
    problems += [
        f"{c}: {frame.schema[c]}, declared {declared[c]}"
        for c in frame.columns
        if c in declared and not _fits(frame.schema[c], declared[c])
    ]
    if problems:
        raise UndeclaredRows(f"rows for {table} do not match its declared schema (schema.py): {'; '.join(problems)}")


def _fits(found: Any, declared: Any) -> bool:
    """A column of `found` type can be stored as `declared`: the same type, any width of integer (or an integer
    into a float), a list of fitting items, or nulls only."""
    if found == declared or found == pl.Null:
        return True
    if found.is_integer():
        return bool(declared.is_integer() or declared.is_float())
    if found.is_float():
        return bool(declared.is_float())
    if isinstance(found, pl.List) and isinstance(declared, pl.List):
        return _fits(found.inner, declared.inner)
    return False


def load_pairs(conn: duckdb.DuckDBPyConnection, subset: str) -> pl.DataFrame:
    """Every (query, candidate) pair of a partition with its texts, in source order."""
    return conn.execute(
        """
        SELECT c.query_id, q.text AS query, c.passage_id, c.role, c.original_rank, p.title, p.text AS passage
        FROM candidates c
        JOIN queries q USING (subset, query_id)
        JOIN passages p USING (passage_id)
        WHERE c.subset = ?
        ORDER BY q.line, c.role DESC, c.original_rank
        """,
        [subset],
    ).pl()


def delete_partition(conn: duckdb.DuckDBPyConnection, subset: str, tables: Iterable[str]) -> None:
    for table in tables:
        conn.execute(f"DELETE FROM {table} WHERE subset = ?", [subset])


def scalar(conn: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> Any:
    """The single value of a query that returns one row (a count, an aggregate)."""
    row = conn.execute(sql, params).fetchone()
    if row is None:
        raise LookupError(f"no row from: {sql}")
    return row[0]


def table_metadata(conn: duckdb.DuckDBPyConnection, table: str, subset: str | None = None) -> dict[str, Any]:
    """The UI's view of a table a stage wrote: its columns (`dagster/column_schema`) and its rows for this
    partition (`dagster/row_count`)."""
    described = conn.execute(f"DESCRIBE {table}").fetchall()
    where = "WHERE subset = ?" if subset is not None else ""
    rows = scalar(conn, f"SELECT count(*) FROM {table} {where}", [subset] if subset is not None else [])
    schema = dg.TableSchema(columns=[dg.TableColumn(name=c[0], type=str(c[1])) for c in described])
    return {"dagster/column_schema": schema, "dagster/row_count": int(rows), "dagster/table_name": table}


def other_tables_metadata(conn: duckdb.DuckDBPyConnection, tables: Iterable[str], subset: str | None) -> dict:
    """Columns and row counts of a stage's further tables (the asset's own table has the dagster/ keys)."""
    out: dict[str, Any] = {}
    for table in tables:
        meta = table_metadata(conn, table, subset)
        out[f"table {table}: columns"] = meta["dagster/column_schema"]
        out[f"table {table}: rows"] = meta["dagster/row_count"]
    return out


@contextmanager
def connect(
    path: str, read_only: bool = False, wait_seconds: float = 300.0, on_wait: Callable[[str], None] | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The pipeline's tables for a command-line reader or writer (the DuckDB file `path`, or the DuckLake
    catalog when ARHN_STORAGE says so), closed at the block's end.

    DuckDB lets one process at a time open a file for writing, and no other process open it at all
    meanwhile. The pipeline's steps open it only for short pieces of work, so a reader waits seconds, not a
    stage: it retries until `wait_seconds`. A writer's connection comes with every table made; on DuckLake it
    holds the write lock for the block (storage.writing), and a reader needs no wait at all.
    """
    where = from_env(path)
    if where.is_lake:
        with session(where, read_only=read_only, on_wait=on_wait) as conn:
            yield conn
        return
    conn = _open_file(path, read_only, wait_seconds, on_wait)
    try:
        yield conn
    finally:
        conn.close()


def _open_file(
    path: str, read_only: bool, wait_seconds: float, on_wait: Callable[[str], None] | None
) -> duckdb.DuckDBPyConnection:
    new = not read_only and not Path(path).exists()
    if new:
        settings.make_private_dir(Path(path).parent)
    deadline = time.monotonic() + wait_seconds
    delay, told = 0.05, False
    while True:
        try:
            conn = duckdb.connect(path, read_only=read_only)
            if not read_only:
                create_schema(conn)
            if new:
                settings.make_private_file(Path(path))
            return conn
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            if on_wait and not told:
                on_wait(f"{path} is in use by another process (a run writing); waiting up to {wait_seconds:.0f} s")
                told = True
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def snapshot(
    conn: duckdb.DuckDBPyConnection, subsets: Iterable[str], whole: Iterable[str] = ()
) -> duckdb.DuckDBPyConnection:
    """An in-memory copy of some partitions' rows (every table with a `subset` column, and its passages; the
    tables named in `whole` entirely), so that a slow reader (embedding texts, say) can let go of the file at
    once and never hold a writer up."""
    mem = duckdb.connect(":memory:")
    create_schema(mem)
    tables = [
        t
        for (t,) in conn.execute(
            "SELECT DISTINCT table_name FROM duckdb_columns() WHERE column_name = 'subset' AND NOT internal"
            " AND database_name = current_database() AND table_name IN"
            " (SELECT table_name FROM duckdb_tables() WHERE NOT temporary AND database_name = current_database())"
        ).fetchall()
        if not t.startswith("_")
    ]
    chosen = list(subsets)
    copies = {t: conn.execute(f"SELECT * FROM {t} WHERE subset IN ?", [chosen]).to_arrow_table() for t in tables}
    copies.update({t: conn.execute(f"SELECT * FROM {t}").to_arrow_table() for t in whole})
    copies["passages"] = conn.execute(
        "SELECT * FROM passages WHERE passage_id IN (SELECT passage_id FROM candidates WHERE subset IN ?)", [chosen]
    ).to_arrow_table()
    for table, rows in copies.items():
        mem.register("_copy", rows)
        mem.execute(f"INSERT INTO {table} SELECT * FROM _copy")
        mem.unregister("_copy")
    return mem


@dataclass(frozen=True)
class StoredCall:
    """An answered call, as the call cache hands it back to a stage."""

    call_id: str
    response: str
    finish_reason: str | None


@dataclass(frozen=True)
class CallRecord:
    """One row of `llm_calls`, as the call cache stores it."""

    call_id: str
    model: str
    engine: str
    template: str
    template_version: str
    messages: list[dict[str, str]]
    sampling: dict[str, Any]
    structured: dict[str, Any] | None
    response: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int | None
    batch_seconds: float
    batch_size: int


class DuckDBStore(DuckDBResource):
    """The pipeline's tables: the DuckDB file `database`, or (`storage: ducklake`) the DuckLake catalog named
    by the environment (storage.py). The schema is made once per run (the resource's set-up; outside a run,
    on the first connection). It is also the call cache's store: look up keys, store a batch, record how
    each answer parsed, each in one short connection."""

    storage: str = Field(default="duckdb", description="duckdb (one file, the default) or ducklake (storage.py)")
    _schema_ready: bool = PrivateAttr(default=False)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from arhn_pipeline.runs import record_run_process

        # every asset uses the store: the run's process is recorded here, so that a dead run can be found
        record_run_process(context.instance, context.run)
        with self.get_connection():
            pass  # makes the schema

    def where(self) -> Storage:
        if self.storage == "ducklake":
            return from_env(self.database, kind="ducklake")
        if self.storage != "duckdb":
            raise StorageError(f"storage must be duckdb or ducklake, not {self.storage!r}")
        return Storage("duckdb", path=self.database)

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        where = self.where()
        if where.is_lake:
            with session(where, make_schema=not self._schema_ready) as conn:
                self._schema_ready = True
                yield conn
            return
        if not self._schema_ready:
            path = Path(self.database)
            new = not path.exists()
            if new:
                settings.make_private_dir(path.parent)
            with super().get_connection() as conn:
                create_schema(conn)
            if new:
                settings.make_private_file(path)
            self._schema_ready = True
        with super().get_connection() as conn:
            yield conn

    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for reads only. On DuckLake: one snapshot of the catalog without the write lock, so a
        cache look-up or a stage loading its pairs never queues behind another run's writes (once this
        process has seen the schema made). On the DuckDB file: `get_connection` (the file's own lock)."""
        where = self.where()
        if where.is_lake and self._schema_ready:
            with session(where, read_only=True) as conn:
                yield conn
            return
        with self.get_connection() as conn:
            yield conn

    @contextmanager
    def staged_writer(self) -> Iterator[tuple[duckdb.DuckDBPyConnection, Callable[[], Any]]]:
        """A connection for a long piece of work that reads the store while it stages its rows elsewhere and
        writes them only at its end (the ingest), and `lock`: a context manager to hold around those writes.
        On DuckLake the connection can write but holds no write lock: `lock()` takes it, so another run's writes
        go on while this work streams. On the DuckDB file: `get_connection` (the file's own lock); `lock()`
        does nothing."""
        where = self.where()
        if not where.is_lake:
            with self.get_connection() as conn:
                yield conn, nullcontext
            return
        if not self._schema_ready:
            with self.get_connection():
                pass  # makes the schema, under the lock
        conn = open_connection(where)
        try:
            yield conn, lambda: writing(where)
        finally:
            conn.close()

    def lookup_calls(self, keys: Iterable[str]) -> dict[str, StoredCall]:
        """The stored answers of these keys. A few keys (a batch's, on the DuckDB file) are looked up as lists
        of values, which DuckDB answers from the primary key's index instead of scanning the table; many keys
        (a stage's, or any on DuckLake, which has no index) as one join (bench/call_store.py)."""
        wanted = list(set(keys))
        if not wanted:
            return {}
        indexed = len(wanted) <= INDEXED_LOOKUP_MAX and not self.where().is_lake
        select = "SELECT call_id, response, finish_reason FROM llm_calls WHERE call_id"
        with self.reading() as conn:
            if indexed:
                rows = _on_the_index(conn, select, wanted)
            else:
                rows = conn.execute(f"{select} IN (SELECT unnest(?))", [wanted]).fetchall()
        return {r[0]: StoredCall(*r) for r in rows}

    def store_calls(self, records: list[CallRecord]) -> list[str]:
        """One batch, committed at once: a crash loses at most the batch in flight. Returns the keys that were
        stored already: asked twice, by two runs racing on the same keys (another process stored its answer
        between this run's lookup and now). Those keep the first answer, and each repeat is counted in
        `llm_calls_asked_twice`; the caller uses the stored answer, so every decision cites the call it read."""
        if not records:
            return []
        frame = calls_frame(records)
        lake = self.where().is_lake
        with self.get_connection() as conn:
            conn.register("_calls_batch", frame)
            try:
                with transaction(conn):
                    repeated = _store_batch(conn, frame["call_id"].to_list(), lake)
            except duckdb.ConstraintException:  # a key stored by another thread since the look-up: the slow way
                with transaction(conn):
                    stored = {
                        k
                        for (k,) in conn.execute(
                            f"INSERT OR IGNORE INTO llm_calls {_CALL_ROWS} RETURNING call_id"
                        ).fetchall()
                    }
                    repeated = [k for k in frame["call_id"].to_list() if k not in stored]
                    _count_repeats(conn, repeated)
            conn.unregister("_calls_batch")
        return repeated

    def store_failures(self, failures: list[tuple[str, str, str, str, str]]) -> None:
        """(call_id, model, engine, template, error) of calls the engine could not answer."""
        if failures:
            with self.get_connection() as conn:
                conn.executemany("INSERT INTO llm_failures VALUES (?, ?, ?, ?, ?, now())", failures)

    def record_batch(
        self,
        batch_id: str,
        endpoint: str,
        model: str,
        template: str,
        where: tuple[str, str] | None,
        file_id: str,
        call_ids: list[str],
    ) -> None:
        partition, asset = where or (None, None)
        with self.get_connection() as conn:
            conn.execute(
                "INSERT INTO llm_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'submitted', NULL, now(), now())",
                [batch_id, endpoint, model, template, partition, asset, file_id, call_ids],
            )

    def open_batches(self, call_ids: Iterable[str]) -> list[tuple[str, str, list[str]]]:
        """(batch id, endpoint, call ids) of the batches not yet collected that carry any of these calls."""
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT batch_id, endpoint, call_ids FROM llm_batches WHERE status != ? "
                "AND len(list_intersect(call_ids, ?)) > 0 ORDER BY submitted_at",
                [BATCH_COLLECTED, list(call_ids)],
            ).fetchall()
        return [(r[0], r[1], list(r[2])) for r in rows]

    def set_batch_status(self, batch_id: str, status: str, counts: dict[str, Any] | None = None) -> None:
        with self.get_connection() as conn:
            conn.execute(
                "UPDATE llm_batches SET status = ?, counts = ?, updated_at = now() WHERE batch_id = ?",
                [status, json.dumps(counts) if counts is not None else None, batch_id],
            )

    def mean_completion_tokens(self, model: str, template: str) -> float | None:
        with self.reading() as conn:
            return mean_completion_tokens(conn, model, template)


def _store_batch(conn: duckdb.DuckDBPyConnection, keys: list[str], lake: bool) -> list[str]:
    """The batch `_calls_batch` into llm_calls but its keys stored already, which are returned (and counted).
    DuckLake has no primary key: the repeats are the batch's keys joined against the table (a scan of its key
    column). The file's repeats come from its primary key's index (IN lists, as `lookup_calls`), and the rest go
    in with a plain INSERT: at 10 M rows, with the database open, `INSERT OR IGNORE` took 215 ms for 64 keys
    (410 ms with `RETURNING`) and the plain INSERT 10-15 ms; the whole store_calls 976 -> 276 ms
    (bench/call_store.py, docs/scaling.md)."""
    if lake:
        repeated = [
            k
            for (k,) in conn.execute("SELECT call_id FROM _calls_batch SEMI JOIN llm_calls USING (call_id)").fetchall()
        ]
        conn.execute(f"INSERT INTO llm_calls {_CALL_ROWS} ANTI JOIN llm_calls USING (call_id)")
    else:
        found = {k for (k,) in _on_the_index(conn, "SELECT call_id FROM llm_calls WHERE call_id", keys)}
        repeated = [k for k in keys if k in found]  # in the batch's order
        conn.execute(f"INSERT INTO llm_calls {_CALL_ROWS} WHERE NOT list_contains(?::VARCHAR[], call_id)", [repeated])
    _count_repeats(conn, repeated)
    return repeated


def _on_the_index(conn: duckdb.DuckDBPyConnection, select: str, keys: list[str]) -> list[tuple]:
    """The rows of `select` (ending in `WHERE call_id`) for these keys, as IN lists of INDEXED_LOOKUP_CHUNK
    values, which DuckDB answers from the file's primary key index."""
    rows: list[tuple] = []
    for start in range(0, len(keys), INDEXED_LOOKUP_CHUNK):
        chunk = keys[start : start + INDEXED_LOOKUP_CHUNK]
        rows += conn.execute(f"{select} IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
    return rows


def _count_repeats(conn: duckdb.DuckDBPyConnection, repeated: list[str]) -> None:
    if repeated:
        conn.execute(
            "INSERT INTO llm_calls_asked_twice SELECT call_id, model, template, now() "
            "FROM _calls_batch WHERE list_contains(?, call_id)",
            [repeated],
        )


def calls_frame(records: list[CallRecord]) -> pl.DataFrame:
    """A batch of answers as a frame (JSON columns as text), one row per key (the first)."""
    return pl.DataFrame(
        [
            {
                **vars(r),  # a shallow copy: asdict would deep-copy every message list
                "messages": json.dumps(r.messages, ensure_ascii=False),
                "sampling": json.dumps(r.sampling),
                "structured": json.dumps(r.structured) if r.structured is not None else None,
            }
            for r in records
        ],
        schema_overrides={"structured": pl.String, "finish_reason": pl.String, "cached_prompt_tokens": pl.Int64},
        infer_schema_length=None,
    ).unique("call_id", keep="first", maintain_order=True)


# Key look-ups up to this many go to the primary key's index, this many values a statement (DuckDB scans the
# index for an IN list of up to `index_scan_max_count` values, 2,048 by default): 2 ms for 64 keys against 80 ms
# for the join at 3 M rows on one open connection; 64-73 ms at 10 M rows, where a new connection loads the index
# (bench/call_store.py)
INDEXED_LOOKUP_MAX, INDEXED_LOOKUP_CHUNK = 10_000, 1_000

# a batch of answers (calls_frame, registered as _calls_batch) as llm_calls rows
_CALL_ROWS = """SELECT call_id, model, engine, template, template_version, messages::JSON, sampling::JSON,
    structured::JSON, response, finish_reason, prompt_tokens, completion_tokens, cached_prompt_tokens,
    batch_seconds, batch_size, NULL, now()
FROM _calls_batch"""


def known_call_ids(conn: duckdb.DuckDBPyConnection, keys: Iterable[str]) -> set[str]:
    """Which of these call keys the call cache holds."""
    wanted = list(set(keys))
    if not wanted:
        return set()
    rows = conn.execute("SELECT call_id FROM llm_calls WHERE call_id IN (SELECT unnest(?))", [wanted]).fetchall()
    return {k for (k,) in rows}


def mean_completion_tokens(conn: duckdb.DuckDBPyConnection, model: str, template: str) -> float | None:
    """Generated tokens per answer of this model to this prompt template, over the stored calls."""
    row = conn.execute(
        "SELECT avg(completion_tokens) FROM llm_calls WHERE model = ? AND template = ?", [model, template]
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def measured_seconds_per_request(conn: duckdb.DuckDBPyConnection, model: str) -> tuple[float, int] | None:
    """(engine seconds per request, calls) of this model over its stored calls, when there are 20 or more."""
    row = conn.execute(
        "SELECT avg(batch_seconds / batch_size), count(*) FROM llm_calls WHERE model = ? AND batch_size > 0", [model]
    ).fetchone()
    return (float(row[0]), int(row[1])) if row and row[0] is not None and row[1] >= 20 else None


def set_parse_status(conn: duckdb.DuckDBPyConnection, statuses: dict[str, str]) -> None:
    """Record how the stage's parser read each answer (inside the caller's transaction, when there is one)."""
    if statuses:
        conn.execute(
            "UPDATE llm_calls SET parse_status = s.status FROM "
            "(SELECT unnest(?) AS call_id, unnest(?) AS status) s WHERE llm_calls.call_id = s.call_id",
            [list(statuses), list(statuses.values())],
        )
