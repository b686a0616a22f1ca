"""Where the pipeline's tables live: one DuckDB file (the default) or DuckLake, chosen by one setting.

ARHN_STORAGE=duckdb (default)
    One DuckDB file (ARHN_DB, default var/arhn.duckdb) on one machine. DuckDB lets one process at a time open
    the file for writing, so the pipeline's steps open it only for short pieces of work (store.py).
ARHN_STORAGE=ducklake
    DuckLake, DuckDB's lakehouse format: the catalog in PostgreSQL (ARHN_DUCKLAKE_CATALOG, a libpq connection
    string such as "host=db.internal port=5432 dbname=arhn_lake user=arhn"; a password comes from PGPASSWORD or
    ~/.pgpass, never from a committed file), the tables' rows as Parquet files under ARHN_DUCKLAKE_DATA (a
    folder every machine reaches: a shared filesystem or an object store URL). Many run processes on many
    machines at once.

The same tables and views exist in both (schema.py, one set of statements; DuckLake has no primary keys, so
every insert that must not repeat a key is an anti-join, in both). No stage knows which one it writes to: it
asks store.DuckDBStore for a connection.

Writing to DuckLake: DuckLake commits optimistically, and two processes that replace rows of one table at the
same time conflict ("another transaction has deleted from it"), even for different partitions; two appends of
one key do not conflict at all, so an anti-join could let both in. Every connection that writes therefore
holds one PostgreSQL advisory lock on the catalog's database for its life (`writing`): the pipeline's
connections are short pieces of work (a batch of answers, a partition's rows), never held while an engine
generates or a model trains, so runs on many machines do their slow work at once and take turns for the
writes, as they take turns for a DuckDB file on one machine. A process that dies loses its PostgreSQL
session, and with it the lock: a killed run never blocks the next. Readers take no lock (a DuckLake
connection reads one snapshot).

The `ducklake` and `postgres` extensions come from their PyPI packages (duckdb-extension-ducklake,
duckdb-extension-postgres, built for the pinned duckdb), loaded by path: nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb

from arhn_pipeline import settings
from arhn_pipeline.schema import create_schema

Kind = Literal["duckdb", "ducklake"]
LAKE = "lake"  # the name the DuckLake catalog is attached under (and made the default: `USE lake`)


class StorageError(RuntimeError):
    """The storage setting is incomplete or names something that cannot be used."""


@dataclass(frozen=True)
class Storage:
    kind: Kind = "duckdb"
    path: str = ""  # the DuckDB file (duckdb)
    catalog: str = ""  # libpq connection string of the PostgreSQL database holding the catalog (ducklake)
    data_path: str = ""  # where DuckLake writes the tables' Parquet files (ducklake)

    @property
    def is_lake(self) -> bool:
        return self.kind == "ducklake"

    def describe(self) -> str:
        """Where the tables are, for messages (no password: the connection string carries none)."""
        if self.is_lake:
            return f"DuckLake (catalog: PostgreSQL {self.catalog!r}; data: {self.data_path})"
        return f"DuckDB file {self.path}"


def from_env(path: str | None = None, kind: str | None = None) -> Storage:
    """The storage the environment chooses (ARHN_STORAGE, unless `kind` is given; ARHN_DUCKLAKE_CATALOG,
    ARHN_DUCKLAKE_DATA); `path`: the DuckDB file, when not ARHN_DB's."""
    try:
        kind = (kind or settings.value("ARHN_STORAGE")).strip().lower()
    except settings.SettingError as exc:
        raise StorageError(f"ARHN_STORAGE must be duckdb or ducklake: {exc}") from None
    db = path or str(settings.db_path())
    if kind == "duckdb":
        return Storage("duckdb", path=db)
    if kind != "ducklake":
        raise StorageError(f"ARHN_STORAGE must be duckdb or ducklake, not {kind!r}")
    catalog = settings.value("ARHN_DUCKLAKE_CATALOG")
    data = settings.value("ARHN_DUCKLAKE_DATA")
    missing = [n for n, v in (("ARHN_DUCKLAKE_CATALOG", catalog), ("ARHN_DUCKLAKE_DATA", data)) if not v]
    if missing:
        raise StorageError(
            f"ARHN_STORAGE=ducklake needs {' and '.join(missing)}: the PostgreSQL connection string of the "
            "catalog (e.g. 'host=db port=5432 dbname=arhn_lake user=arhn') and the folder for the Parquet files"
        )
    if "password=" in catalog.replace(" ", "").lower():
        raise StorageError("ARHN_DUCKLAKE_CATALOG must not hold a password: use PGPASSWORD or ~/.pgpass")
    return Storage("ducklake", path=db, catalog=catalog, data_path=data)


def open_connection(storage: Storage, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection whose unqualified table names are the pipeline's tables. For DuckLake: an in-memory DuckDB
    (its temporary tables stay local) with the catalog attached and made the default."""
    if not storage.is_lake:
        if not read_only:
            Path(storage.path).parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(storage.path, read_only=read_only)
    conn = duckdb.connect(":memory:")
    try:
        for path in _extensions():
            conn.execute(f"LOAD '{path}'")
        options = f"DATA_PATH '{_quote(storage.data_path)}'" + (", READ_ONLY" if read_only else "")
        conn.execute(f"ATTACH '{_quote('ducklake:postgres:' + storage.catalog)}' AS {LAKE} ({options})")
        conn.execute(f"USE {LAKE}")
    except BaseException:
        conn.close()
        raise
    return conn


def _quote(text: str) -> str:
    return text.replace("'", "''")


# A fixed key for the advisory lock: one writer at a time per catalog database.
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"arhn-pipeline ducklake writer").digest()[:8], "big", signed=True)


@contextmanager
def writing(storage: Storage, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the catalog's write lock for the block (DuckLake); nothing for a DuckDB file, whose own lock
    does the same. The lock lives in a PostgreSQL session of this process: released at the block's end, or
    by the server when the process dies."""
    if not storage.is_lake:
        yield
        return
    import psycopg2

    pg = psycopg2.connect(storage.catalog)
    try:
        pg.autocommit = True
        with pg.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,))
            row = cur.fetchone()
            if not (row and row[0]):
                if on_wait:
                    on_wait(f"{storage.describe()}: another process is writing; waiting for its turn")
                cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        yield
    finally:
        pg.close()  # ends the session, and with it the lock


@contextmanager
def session(
    storage: Storage,
    read_only: bool = False,
    on_wait: Callable[[str], None] | None = None,
    make_schema: bool = True,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckLake connection for the block, closed at its end. A writer holds the write lock for the block
    (`writing`) and, with `make_schema`, finds every table made (a no-op once the catalog has this schema
    version); a reader takes no lock."""
    with writing(storage, on_wait) if not read_only else nullcontext():
        conn = open_connection(storage, read_only=read_only)
        try:
            if make_schema and not read_only:
                create_schema(conn, lake=True)
            yield conn
        finally:
            conn.close()


@functools.cache
def _extensions() -> tuple[str, ...]:
    """The ducklake and postgres extension files of the installed packages (found once per process). The
    postgres file must be loaded under the name of its entry point (postgres_scanner), so a copy by that name
    is kept under var/."""
    version = f"v{duckdb.__version__}"
    found = []
    for package, name, load_as in (
        ("duckdb_extension_postgres", "postgres", "postgres_scanner"),
        ("duckdb_extension_ducklake", "ducklake", "ducklake"),
    ):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise StorageError(f"ARHN_STORAGE=ducklake needs the {package.replace('_', '-')} package (pip install)")
        source = Path(next(iter(spec.submodule_search_locations))) / "extensions" / version / f"{name}.duckdb_extension"
        if not source.is_file():
            raise StorageError(
                f"{source} is missing: {package.replace('_', '-')} must be built for duckdb {duckdb.__version__}"
            )
        if load_as == name:
            found.append(str(source))
            continue
        target = settings.var_dir() / "duckdb-extensions" / version / f"{load_as}.duckdb_extension"
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.partial")
            shutil.copyfile(source, partial)
            partial.replace(target)  # atomic: processes starting together never load half a file
        found.append(str(target))
    return tuple(found)


def compact(conn: duckdb.DuckDBPyConnection, older_than_hours: float = 24.0) -> dict[str, int]:
    """DuckLake upkeep (run it while no run writes, e.g. nightly): every commit adds Parquet files (a batch of
    answers is one), so small files pile up. Merges them, expires the snapshots older than `older_than_hours`
    (time travel to those is given up) and deletes the files no snapshot needs. Returns file counts."""

    def files() -> int:  # the data files the current snapshot reads
        row = conn.execute(
            f"SELECT count(*) FROM __ducklake_metadata_{LAKE}.ducklake_data_file WHERE end_snapshot IS NULL"
        ).fetchone()
        return int(row[0]) if row else 0

    before = files()
    conn.execute(f"CALL ducklake_merge_adjacent_files('{LAKE}')")
    conn.execute(
        f"CALL ducklake_expire_snapshots('{LAKE}', older_than => now() - INTERVAL ({float(older_than_hours)}) HOUR)"
    )
    conn.execute(f"CALL ducklake_cleanup_old_files('{LAKE}', cleanup_all => true)")
    return {"data_files_before": before, "data_files_after": files()}
