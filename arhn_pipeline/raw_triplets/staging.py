"""Where an ingest's rows wait before they are swapped in for the partition's: Parquet files per batch (and a
table for the quarantine), orphans of killed ingests removed, DuckDB's checkpoint threshold and threads set for
the ingest, the C heap's freed pages given back, and a chunk's rows staged with its new passages stored."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb

from arhn_pipeline import storage
from arhn_pipeline.store import delete_partition, transaction

# The directories of staged rows start with this, then the ingesting process's id.
STAGING_PREFIX = "arhn-ingest-"


class Stage:
    """Where an ingest's rows wait for the swap. Queries, candidates and new passages (the bulk) as Parquet files,
    a file per batch, which the swap reads once: no rows pass through DuckDB's log and checkpoints twice (rows
    staged in a table were written to it, then again to the partition's tables; 12.0 -> 10.0 s at 1.6 M pairs,
    docs/measurements.md). The quarantine (a few rows) and the ids of the passages staged so far in temporary
    tables of the ingest's connection. Nothing is written to the store's tables before the swap: on DuckLake the
    ingest streams without the write lock and takes it for the swap alone (ingest.py). The files go under
    DuckDB's temporary directory (beside the database file, `<file>.tmp`) or the system's for a database in
    memory; a run killed mid-ingest leaves its directory, which the next ingest removes once its process is
    gone."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, subset: str) -> None:
        tag = hashlib.sha256(subset.encode()).hexdigest()[:12]
        self.quarantine = f"_stage_quarantine_{tag}"
        self.passage_ids = f"_stage_passage_ids_{tag}"
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {self.quarantine} AS SELECT * FROM quarantine LIMIT 0")
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {self.passage_ids} (passage_id VARCHAR)")
        (temp,) = conn.execute("SELECT current_setting('temp_directory')").fetchone() or ("",)
        self.root = Path(temp) if temp and os.path.isabs(temp) else Path(tempfile.gettempdir())
        self.made_root = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_orphans(self.root)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.root))
        self.files = {"queries": 0, "candidates": 0, "passages": 0}

    def append(self, conn: duckdb.DuckDBPyConnection, table: str, select: str, params: dict | None = None) -> None:
        """The rows of `select` (the columns of `table`, by name) staged for `table`."""
        if table == "quarantine":
            conn.execute(f"INSERT INTO {self.quarantine} BY NAME {select}", params)
            return
        self.files[table] += 1
        path = self.dir / f"{table}-{self.files[table]:06d}.parquet"
        conn.execute(f"COPY ({select}) TO '{_sql_text(str(path))}' (FORMAT parquet)", params)

    def add_passages(self, conn: duckdb.DuckDBPyConnection, rows: str) -> None:
        """The passages of the table `rows` (passage_id, title, text; one row per id) neither stored nor staged
        by this ingest yet, staged (the first text seen of an id is the one kept). The ids are looked up for
        the rows' ids (a hash table built on the chunk's rows, not on every stored or staged id)."""
        new = (
            f"SELECT passage_id, title, text FROM {rows} {_not_in('passages', rows)} {_not_in(self.passage_ids, rows)}"
        )
        conn.execute(f"CREATE OR REPLACE TEMP TABLE _stage_new_passages AS {new}")
        if conn.execute("SELECT count(*) FROM _stage_new_passages").fetchone() != (0,):
            self.append(conn, "passages", "SELECT * FROM _stage_new_passages")
            conn.execute(f"INSERT INTO {self.passage_ids} SELECT passage_id FROM _stage_new_passages")
        conn.execute("DROP TABLE _stage_new_passages")

    def swap(self, conn: duckdb.DuckDBPyConnection, subset: str, tables: tuple[str, ...]) -> None:
        """The staged rows in for the partition's, in one transaction of `conn` (the caller holds the write
        lock): the new passages (those another ingest stored meanwhile left out), then `tables`' rows of
        `subset` deleted and the staged ones inserted."""
        staged = self.rows("passages")
        with transaction(conn):
            conn.execute(
                "INSERT INTO passages (passage_id, title, text) "
                f"SELECT passage_id, title, text FROM {staged} {_not_in('passages', staged)}"
            )
            delete_partition(conn, subset, tables)
            for table in tables:
                conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {self.rows(table)}")

    def rows(self, table: str) -> str:
        """A table expression of the rows staged for `table`."""
        if table == "quarantine":
            return self.quarantine
        if not self.files[table]:
            return f"(SELECT * FROM {table} LIMIT 0)"
        return f"read_parquet('{_sql_text(str(self.dir))}/{table}-*.parquet')"

    def remove(self, conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {self.quarantine}")
        conn.execute(f"DROP TABLE IF EXISTS {self.passage_ids}")
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.made_root:
            with contextlib.suppress(OSError):  # another ingest's files are there
                self.root.rmdir()


def _not_in(table: str, rows: str) -> str:
    """An anti-join leaving out the rows of `rows` whose passage_id `table` holds; the hash table is built on
    `rows` (the ids of `table` that are among them), not on every id `table` holds."""
    return f"ANTI JOIN (SELECT passage_id FROM {table} SEMI JOIN {rows} USING (passage_id)) USING (passage_id)"


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _remove_orphans(root: Path) -> None:
    """Staged rows left by ingests whose process is gone (killed mid-ingest)."""
    for path in root.glob(f"{STAGING_PREFIX}*"):
        pid = path.name[len(STAGING_PREFIX) :].split("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# The write-ahead log's size at which DuckDB checkpoints during an ingest (its default: 16 MiB). Rows committed
# but not checkpointed stay in DuckDB's memory, about 1.4x the log's size (352 MiB at 256 MiB); a smaller log
# means more checkpoints, each writing the rows staged since the last. At 1.6 M pairs (bench/ingest.py, two runs
# each): 64 MiB peaked at 926-966 MiB in 17.7-18.8 s, 256 MiB at 1,044-1,069 MiB in 14.4-16.9 s, 1 GiB at
# 1,143-1,178 MiB in 13.4-15.9 s. The peak is kept flat (the 1.5x for 10x the file) at some speed.
INGEST_WAL_BYTES = 64 * 2**20


@contextlib.contextmanager
def checkpoint_after(conn: duckdb.DuckDBPyConnection, checkpoint: bool) -> Iterator[None]:
    """On a DuckDB file: fewer checkpoints while the staging tables fill (INGEST_WAL_BYTES), and, with
    `checkpoint`, one when the ingest is done (the partition's rows in the file, not only in the log)."""
    if conn.execute("SELECT current_database()").fetchone() == (storage.LAKE,):  # DuckLake has no log
        yield
        return
    with setting(conn, "checkpoint_threshold", f"{INGEST_WAL_BYTES}B"):
        yield
    if checkpoint:
        try:
            conn.execute("CHECKPOINT")
        except duckdb.TransactionException:  # another connection's transaction is open: DuckDB checkpoints later
            pass


@contextlib.contextmanager
def setting(conn: duckdb.DuckDBPyConnection, name: str, value: object) -> Iterator[None]:
    """DuckDB's setting `name` at `value` inside the block; its value before is restored after, error or not."""
    (before,) = conn.execute(f"SELECT current_setting('{name}')").fetchone() or (None,)
    conn.execute(f"SET {name} = '{value}'")
    try:
        yield
    finally:
        conn.execute(f"SET {name} = '{before}'")


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to release this way
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Give the C heap's freed pages back to the system (glibc's malloc_trim). Each chunk allocates and frees
    buffers about its size on three threads (the reader's and the workers', in DuckDB, which this wheel builds
    without jemalloc), and glibc keeps such freed blocks in its arenas: without this the ingest's peak grew
    with the file (705-747 -> 1,117-1,119 MiB for 10x the file, 1.50x-1.59x; with it 721-765 -> 907-947 MiB,
    1.24x-1.27x; docs/measurements.md)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def stage_chunk(
    conn: duckdb.DuckDBPyConnection,
    subset: str,
    source: str,
    stage: Stage,
    queries: str,
    candidates: str,
    passages: str,
) -> tuple[int, int]:
    """A chunk's kept rows staged, and its passages not stored or staged yet. `queries`,
    `candidates` (with each line's query_id) and `passages` (one row per passage id) name tables. Returns the
    chunk's (positives, negatives)."""
    stage.append(
        conn,
        "queries",
        f"""SELECT $subset AS subset, query_id, query AS text, prompt, type, $source AS source, line FROM {queries}""",
        {"subset": subset, "source": source},
    )
    stage.append(
        conn,
        "candidates",
        f"""SELECT $subset AS subset, query_id, passage_id, role, rank::INTEGER AS original_rank,
            score AS original_score, source_id AS source_passage_id FROM {candidates}""",
        {"subset": subset},
    )
    stage.add_passages(conn, passages)
    counts = conn.execute(
        f"SELECT count(*) FILTER (role = 'positive'), count(*) FILTER (role = 'negative') FROM {candidates}"
    ).fetchone()
    assert counts is not None
    return int(counts[0]), int(counts[1])
