"""Ingest one source into DuckDB: validate every row, fold repeats, quarantine what is bad, keep the rest.

Two readers give the same tables: the columnar one (the default: chunks of lines parsed, checked and hashed by
DuckDB, raw_triplets/columnar.py; a line it cannot take goes to the line-by-line path alone) and the
line-by-line one (every row through pydantic, sources/rows.py), which is the reference and the fallback.
Memory stays flat: records stream in and leave in batches; only a small digest per query id is kept, to
tell a repeated line from a conflicting one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from arhn_pipeline import faults, shards, storage
from arhn_pipeline.raw_triplets import columnar
from arhn_pipeline.sources.readers import (
    MAX_LINE_BYTES,
    LineChunk,
    SourceError,
    decode_line,
    iter_line_chunks,
    iter_records,
)
from arhn_pipeline.sources.registry import SourceEntry
from arhn_pipeline.sources.rows import MAX_TEXT_CHARS, RowError, Triplet, parse_row
from arhn_pipeline.store import PARTITIONED_TABLES, delete_partition, transaction

# A quarantined line keeps its raw text for inspection, cut at this size so one huge line cannot bloat the table.
RAW_KEEP_CHARS = 100_000


@dataclass
class IngestStats:
    lines: int = 0
    queries: int = 0
    positives: int = 0
    negatives: int = 0
    duplicate_lines: int = 0  # identical repeats of an earlier line, folded into it
    duplicate_passages: int = 0  # repeats within a query's lists, including negatives equal to a positive
    quarantined_rows: int = 0  # lines left out, other than identical repeats
    per_line: int = 0  # lines read by the line-by-line path (all, or the columnar reader's fallbacks)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def line(self) -> str:
        """One short line for a log: what was read, and what was folded or left out."""
        extra = [f"{v:,} {k.replace('_', ' ')}" for k, v in self.as_dict().items() if v and k not in _READ]
        read = f"{self.lines:,} lines: {self.queries:,} queries, {self.positives:,} positives"
        return f"{read}, {self.negatives:,} negatives" + (f" ({', '.join(extra)})" if extra else "")


_READ = ("lines", "queries", "positives", "negatives")


class _Batch:
    def __init__(self, subset: str, source: str, stage: _Stage):
        self.subset, self.source, self.stage = subset, source, stage
        self.queries: list[dict] = []
        self.candidates: list[dict] = []
        self.passages: dict[str, tuple[str | None, str]] = {}
        self.quarantine: list[dict] = []

    def __len__(self) -> int:
        return len(self.candidates) + len(self.quarantine)

    def quarantine_row(self, line: int, field: str, reason: str, raw: str, scope: str = "row") -> None:
        self.quarantine.append(
            dict(
                subset=self.subset,
                source=self.source,
                line=line,
                field=field,
                reason=reason,
                scope=scope,
                raw=raw[:RAW_KEEP_CHARS],
            )
        )

    def add(self, t: Triplet, line: int) -> None:
        self.queries.append(
            dict(
                subset=self.subset,
                query_id=t.query_id,
                text=t.query,
                prompt=t.prompt,
                type=t.type,
                source=self.source,
                line=line,
            )
        )
        for role, cands in (("positive", t.positives), ("negative", t.negatives)):
            for rank, c in enumerate(cands):
                self.passages.setdefault(c.passage_id, (c.title, c.text))
                self.candidates.append(
                    dict(
                        subset=self.subset,
                        query_id=t.query_id,
                        passage_id=c.passage_id,
                        role=role,
                        original_rank=rank,
                        original_score=c.score,
                        source_passage_id=c.source_id,
                    )
                )

    def flush(self, conn: duckdb.DuckDBPyConnection) -> None:
        if self.passages:
            passages = pl.DataFrame(
                {
                    "passage_id": list(self.passages),
                    "title": [v[0] for v in self.passages.values()],
                    "text": [v[1] for v in self.passages.values()],
                },
                schema={"passage_id": pl.String, "title": pl.String, "text": pl.String},
            )
            conn.register("_passages_batch", passages)
            insert_new_passages(conn, "_passages_batch")
            conn.unregister("_passages_batch")
        for table, rows in (
            ("queries", self.queries),
            ("candidates", self.candidates),
            ("quarantine", self.quarantine),
        ):
            if rows:
                cols = [r[0] for r in conn.execute(f"DESCRIBE {table}").fetchall()]
                frame = pl.DataFrame(
                    rows, schema_overrides={"original_score": pl.Float64, "line": pl.Int64}, infer_schema_length=None
                ).select(cols)
                conn.register("_rows_batch", frame)
                self.stage.append(conn, table, "SELECT * FROM _rows_batch")
                conn.unregister("_rows_batch")
        self.queries, self.candidates, self.passages, self.quarantine = [], [], {}, []


def insert_new_passages(conn: duckdb.DuckDBPyConnection, rows: str) -> None:
    """The passages of the table `rows` (passage_id, title, text; one row per id) not stored yet. The stored
    ids are looked up for the rows' ids (their hash table built on the rows, not on every stored passage,
    which an anti-join against `passages` would rebuild for each batch)."""
    conn.execute(
        f"""INSERT INTO passages (passage_id, title, text)
        SELECT passage_id, title, text FROM {rows}
        ANTI JOIN (SELECT passage_id FROM passages SEMI JOIN {rows} USING (passage_id)) USING (passage_id)"""
    )


def _digest(t: Triplet) -> bytes:
    h = hashlib.blake2b(digest_size=12)
    for part in (t.query, t.prompt or "", t.type or ""):
        h.update(part.encode("utf-8") + b"\x00")
    for role, cands in ((b"p", t.positives), (b"n", t.negatives)):
        for c in cands:
            h.update(role + c.passage_id.encode() + repr(c.score).encode())
    return h.digest()


@dataclass(frozen=True)
class Limits:
    """Sizes past which a line or a text is quarantined as too_large (raw_triplets config)."""

    max_line_bytes: int = MAX_LINE_BYTES
    max_text_chars: int = MAX_TEXT_CHARS


class NoValidRows(SourceError):
    """Every line of the source was quarantined: the partition's stored rows are kept, not replaced by nothing."""


def ingest(
    conn: duckdb.DuckDBPyConnection,
    subset: str,
    entry: SourceEntry,
    batch_size: int = 20_000,
    limits: Limits = Limits(),
    reader: str = "columnar",
    checkpoint: bool = True,
) -> IngestStats:
    """Replace `subset`'s rows with the source's: all or nothing.

    Batches go to staging tables, committed as they come (one long transaction would hold every appended
    row); one short transaction then swaps them in for the partition's old rows.
    A source without one valid row raises NoValidRows (with the commonest reasons) and changes nothing.
    `reader`: columnar (default) or per_line (the reference path; both give the same tables). `checkpoint`:
    write the rows into the database file before returning (else DuckDB does it later).
    """
    if reader not in ("columnar", "per_line"):
        raise ValueError(f"reader must be columnar or per_line, not {reader!r}")
    stage = _Stage(conn, subset)
    with _checkpoint_after(conn, checkpoint):
        try:
            return _staged(conn, subset, entry, batch_size, limits, reader, stage)
        finally:
            stage.remove(conn)


# The directories of staged rows start with this, then the ingesting process's id.
STAGING_PREFIX = "arhn-ingest-"


class _Stage:
    """Where an ingest's rows wait for the swap. Queries and candidates (the bulk) as Parquet files, a file per
    batch, which the swap reads once: no rows pass through DuckDB's log and checkpoints twice (rows staged in a
    table were written to it, then again to the partition's tables; 12.0 -> 10.0 s at 1.6 M pairs,
    docs/measurements.md). The quarantine (a few rows) in a table. The files go under DuckDB's temporary
    directory (beside the database file, `<file>.tmp`) or the system's for a database in memory; a run killed
    mid-ingest leaves its directory, which the next ingest removes once its process is gone, and its table,
    which the next run of the subset replaces."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, subset: str) -> None:
        tag = hashlib.sha256(subset.encode()).hexdigest()[:12]
        self.quarantine = f"_stage_quarantine_{tag}"
        conn.execute(f"CREATE OR REPLACE TABLE {self.quarantine} AS SELECT * FROM quarantine LIMIT 0")
        (temp,) = conn.execute("SELECT current_setting('temp_directory')").fetchone() or ("",)
        self.root = Path(temp) if temp and os.path.isabs(temp) else Path(tempfile.gettempdir())
        self.made_root = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_orphans(self.root)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.root))
        self.files = {"queries": 0, "candidates": 0}

    def append(self, conn: duckdb.DuckDBPyConnection, table: str, select: str, params: dict | None = None) -> None:
        """The rows of `select` (the columns of `table`, by name) staged for `table`."""
        if table == "quarantine":
            conn.execute(f"INSERT INTO {self.quarantine} BY NAME {select}", params)
            return
        self.files[table] += 1
        path = self.dir / f"{table}-{self.files[table]:06d}.parquet"
        conn.execute(f"COPY ({select}) TO '{_sql_text(str(path))}' (FORMAT parquet)", params)

    def rows(self, table: str) -> str:
        """A table expression of the rows staged for `table`."""
        if table == "quarantine":
            return self.quarantine
        if not self.files[table]:
            return f"(SELECT * FROM {table} LIMIT 0)"
        return f"read_parquet('{_sql_text(str(self.dir))}/{table}-*.parquet')"

    def remove(self, conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {self.quarantine}")
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.made_root:
            with contextlib.suppress(OSError):  # another ingest's files are there
                self.root.rmdir()


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
def _checkpoint_after(conn: duckdb.DuckDBPyConnection, checkpoint: bool) -> Iterator[None]:
    """On a DuckDB file: fewer checkpoints while the staging tables fill (INGEST_WAL_BYTES), and, with
    `checkpoint`, one when the ingest is done (the partition's rows in the file, not only in the log)."""
    if conn.execute("SELECT current_database()").fetchone() == (storage.LAKE,):  # DuckLake has no log
        yield
        return
    with _setting(conn, "checkpoint_threshold", f"{INGEST_WAL_BYTES}B"):
        yield
    if checkpoint:
        try:
            conn.execute("CHECKPOINT")
        except duckdb.TransactionException:  # another connection's transaction is open: DuckDB checkpoints later
            pass


@contextlib.contextmanager
def _setting(conn: duckdb.DuckDBPyConnection, name: str, value: object) -> Iterator[None]:
    """DuckDB's setting `name` at `value` inside the block; its value before is restored after, error or not."""
    (before,) = conn.execute(f"SELECT current_setting('{name}')").fetchone() or (None,)
    conn.execute(f"SET {name} = '{value}'")
    try:
        yield
    finally:
        conn.execute(f"SET {name} = '{before}'")


def _staged(
    conn: duckdb.DuckDBPyConnection,
    subset: str,
    entry: SourceEntry,
    batch_size: int,
    limits: Limits,
    reader: str,
    stage: _Stage,
) -> IngestStats:
    """The source into the staging tables, then swapped in for the partition's rows (one short transaction)."""
    # DuckDB runs each statement of the streaming part on the thread that asks it (`threads` is the database's,
    # restored after): a chunk's statements are too small to gain from DuckDB's own threads, spread over them
    # they cost more CPU (synchronizing, waking) than they save, and the parsing workers already keep every core
    # busy. The swap of the staged rows, one large statement, gets DuckDB's threads back.
    with _setting(conn, "threads", 1):
        if reader == "columnar":
            stats = _stream_columnar(conn, subset, entry, stage, limits)
        else:
            stats = _stream_into(conn, subset, entry, batch_size, stage, limits)
    if stats.queries == 0:
        reasons = conn.execute(
            f"SELECT reason, count(*) FROM {stage.quarantine} GROUP BY ALL ORDER BY 2 DESC, 1 LIMIT 3"
        ).fetchall()
        shown = "; ".join(f"{n} x {reason}" for reason, n in reasons)
        if entry.shard is not None and entry.shards:
            raise NoValidRows(
                f"source {entry.name!r}: {entry.location}: no valid row of its {stats.lines} lines falls in "
                f"shard {entry.shard} of {entry.shards} (fewer queries than shards?); the partition's stored "
                "rows are kept"
            )
        raise NoValidRows(
            f"source {entry.name!r}: {entry.location}: none of its {stats.lines} lines is a valid row ({shown}); "
            "the partition's stored rows are kept"
        )
    with transaction(conn):
        delete_partition(conn, subset, PARTITIONED_TABLES)
        for table in PARTITIONED_TABLES:
            conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {stage.rows(table)}")
    return stats


def _triplet(value: object, fmt: str, max_text_chars: int) -> Triplet:
    """One decoded line as a triplet (RowError naming the field when it is not one)."""
    t = parse_row(value, fmt, max_text_chars)  # type: ignore[arg-type]
    if not t.negatives:
        raise RowError(
            "neg" if fmt == "bge" else "negative_passages",
            "no negative left once repeats of the positives were removed",
        )
    return t


def _stream_into(conn, subset: str, entry: SourceEntry, batch_size: int, stage: _Stage, limits: Limits) -> IngestStats:
    stats = IngestStats()
    seen: dict[str, tuple[int, bytes]] = {}
    batch = _Batch(subset, entry.location, stage)
    mine = _in_shard(entry)
    for rec in iter_records(entry, limits.max_line_bytes):
        stats.lines += 1
        stats.per_line += 1
        if rec.error:
            if mine(None):
                stats.quarantined_rows += 1
                batch.quarantine_row(rec.line, *rec.error, raw=rec.raw)
            continue
        try:
            t = _triplet(rec.value, entry.format, limits.max_text_chars)
        except RowError as exc:
            if mine(None):
                stats.quarantined_rows += 1
                batch.quarantine_row(rec.line, exc.field, exc.reason, raw=rec.raw)
            continue
        if not mine(t.query_id):
            continue
        digest = _digest(t)
        if t.query_id in seen:
            first_line, first_digest = seen[t.query_id]
            if first_digest == digest:
                stats.duplicate_lines += 1
                batch.quarantine_row(rec.line, "row", f"identical repeat of line {first_line}, folded", rec.raw)
            else:
                stats.quarantined_rows += 1
                batch.quarantine_row(
                    rec.line,
                    "query_id",
                    f"duplicate query_id {t.query_id!r} with different content (first at line {first_line})",
                    rec.raw,
                )
            continue
        seen[t.query_id] = (rec.line, digest)
        for field, reason in t.problems:
            stats.duplicate_passages += 1
            batch.quarantine_row(
                rec.line, field, reason + ", left out", _candidate_text(rec.value, field), scope="candidate"
            )
        stats.queries += 1
        stats.positives += len(t.positives)
        stats.negatives += len(t.negatives)
        batch.add(t, rec.line)
        if len(batch) >= batch_size:
            batch.flush(conn)
            faults.point("ingest_batch")
    batch.flush(conn)
    return stats


def _candidate_text(row: Any, field: str) -> str:
    """The value at `neg[3]`-style field names, for the quarantine's raw column."""
    name, _, index = field.partition("[")
    value = row.get(name, [])[int(index.rstrip("]"))]
    return value if isinstance(value, str) else str(value.get("text", value))


# A digest of a kept triplet's content, to tell an identical repeat of a query id from a conflicting one;
# computed only for query ids that repeat, from the chunk's tables or, for a first line in an earlier chunk,
# from the staging tables (which hold exactly what was kept).
_DIGESTS = """
SELECT q.{key}, md5(concat_ws(chr(0), q.{text}, coalesce(q.prompt, ''), coalesce(q.type, ''), c.body))
FROM {queries} q JOIN (
    SELECT {key}, string_agg(role || ':' || passage_id || ':' || coalesce({score}::VARCHAR, '-'), ','
                             ORDER BY role DESC, {rank}) AS body
    FROM {candidates} WHERE list_contains($keys, {key}) GROUP BY {key}
) c USING ({key})
"""
# the chunk's lines, by line; the staged (kept) triplets, by query id: the same digest of the same content
_CHUNK_DIGESTS = _DIGESTS.format(
    key="line", text="query", queries="_col_queries", candidates="_col_candidates", score="score", rank="rank"
)


def _staged_digests(stage: _Stage) -> str:
    return _DIGESTS.format(
        key="query_id",
        text="text",
        queries=stage.rows("queries"),
        candidates=stage.rows("candidates"),
        score="original_score",
        rank="original_rank",
    )


def _repeats(
    conn, stage: _Stage, seen: dict[str, int], ids: list[tuple[int, str]], load: Callable[[], None]
) -> dict[int, tuple[int, bool]]:
    """For each line whose query id came before (in an earlier chunk or earlier in this one): (the first line,
    whether its content is identical). Updates `seen` with the chunk's first lines. `load` puts the chunk's rows
    in its tables (needed only when a query id repeats)."""
    found: dict[int, int] = {}
    for line, query_id in ids:
        if query_id in seen:
            found[line] = seen[query_id]
        else:
            seen[query_id] = line
    if not found:
        return {}
    load()
    here = {line for line, _ in ids}
    lines = sorted(set(found) | {first for first in found.values() if first in here})
    digest = dict(conn.execute(_CHUNK_DIGESTS, {"keys": lines}).fetchall())
    earlier = {query_id for line, query_id in ids if line in found and found[line] not in here}
    staged = dict(conn.execute(_staged_digests(stage), {"keys": sorted(earlier)}).fetchall() if earlier else [])
    query_of = dict(ids)
    out = {}
    for line, first in found.items():
        first_digest = digest[first] if first in here else staged[query_of[line]]
        out[line] = (first, first_digest == digest[line])
    return out


def _stream_columnar(conn, subset: str, entry: SourceEntry, stage: _Stage, limits: Limits) -> IngestStats:
    """The columnar reader: each chunk parsed and checked by DuckDB; the lines it does not take (and the
    reader's own errors) go through the line-by-line rules one by one; then repeats of a query id are
    resolved in line order across both, exactly as the line-by-line reader does."""
    stats = IngestStats()
    seen: dict[str, int] = {}  # query id -> the line that first gave it
    mine = _in_shard(entry)
    for chunk, parsed in _parsed_chunks(conn, entry, limits):
        batch = _Batch(subset, entry.location, stage)
        stats.lines += len(chunk.lines) + len(chunk.records)
        stats.per_line += len(chunk.records) + len(parsed.fallback)
        for rec in chunk.records if mine(None) else ():
            stats.quarantined_rows += 1
            assert rec.error is not None
            batch.quarantine_row(rec.line, *rec.error, raw=rec.raw)
        slow: dict[int, tuple[Triplet, object]] = {}
        for line in parsed.fallback.tolist():
            raw = _raw(chunk, line)
            value, error = decode_line(raw)
            if error:
                if mine(None):
                    stats.quarantined_rows += 1
                    batch.quarantine_row(line, *error, raw=raw)
                continue
            try:
                slow[line] = (_triplet(value, entry.format, limits.max_text_chars), value)
            except RowError as exc:
                if mine(None):
                    stats.quarantined_rows += 1
                    batch.quarantine_row(line, exc.field, exc.reason, raw=raw)
        tables = _ChunkTables(conn, parsed, slow)
        winners: list[int] = []
        ids = sorted(
            [
                *zip(parsed.queries["line"].to_pylist(), parsed.queries["query_id"].to_pylist(), strict=True),
                *((line, t.query_id) for line, (t, _) in slow.items()),
            ]
        )
        if entry.shard is not None:  # the other shards' queries are theirs (with their repeats)
            ids = [(line, query_id) for line, query_id in ids if mine(query_id)]
        repeats = _repeats(conn, stage, seen, ids, tables.load)
        for line, query_id in ids:
            if line in repeats:
                first_line, identical = repeats[line]
                if identical:
                    stats.duplicate_lines += 1
                    batch.quarantine_row(
                        line, "row", f"identical repeat of line {first_line}, folded", _raw(chunk, line)
                    )
                else:
                    stats.quarantined_rows += 1
                    batch.quarantine_row(
                        line,
                        "query_id",
                        f"duplicate query_id {query_id!r} with different content (first at line {first_line})",
                        _raw(chunk, line),
                    )
                continue
            winners.append(line)
            if line in slow:
                t, value = slow[line]
                for field, reason in t.problems:
                    stats.duplicate_passages += 1
                    batch.quarantine_row(
                        line, field, reason + ", left out", _candidate_text(value, field), scope="candidate"
                    )
        if not slow and len(winners) == parsed.queries.num_rows:  # every line taken whole: straight from Arrow
            positives, negatives = _write_parsed(conn, subset, entry.location, stage, parsed)
        else:
            tables.load()
            positives, negatives = _write_winners(conn, subset, entry.location, stage, winners)
        stats.queries += len(winners)
        stats.positives += positives
        stats.negatives += negatives
        batch.flush(conn)
        faults.point("ingest_batch")
        release_freed_memory()
    for table in ("_col_queries", "_col_candidates"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    return stats


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


# Chunks parsed ahead of the one being written: DuckDB runs each worker's statements without the GIL, so
# parsing the next chunks overlaps writing this one (each statement on a chunk is too small for DuckDB to
# spread over threads itself).
PARSE_WORKERS = max(1, min(4, os.cpu_count() or 1))


def _parsed_chunks(
    conn: duckdb.DuckDBPyConnection, entry: SourceEntry, limits: Limits
) -> Iterator[tuple[LineChunk, columnar.ChunkResult]]:
    """The source's chunks in order, each with what the columnar path made of it; parsed on worker
    connections (their own temporary tables). The file is read on a thread of its own, so that reading the
    next chunk overlaps writing this one and a worker never waits for the writer to read; at most
    PARSE_WORKERS chunks are read ahead of the one being written (each about CHUNK_BYTES of memory)."""
    local = threading.local()
    cursors: list[duckdb.DuckDBPyConnection] = []
    lock = threading.Lock()

    def parse(chunk: LineChunk) -> columnar.ChunkResult:
        if not hasattr(local, "conn"):
            local.conn = conn.cursor()
            with lock:
                cursors.append(local.conn)
        return columnar.parse_chunk(local.conn, chunk.lines, chunk.texts, entry.format, limits.max_text_chars)

    pool = ThreadPoolExecutor(PARSE_WORKERS, thread_name_prefix="ingest-parse")
    # one chunk waits in the queue per worker but one; one more is held by the reader, waiting to go in (a queue
    # one deeper kept both workers busy just as well and raised the 1.6 M-pair peak by 40-60 MiB)
    ahead: queue.Queue[tuple[LineChunk, Future[columnar.ChunkResult]] | BaseException | None]
    ahead = queue.Queue(maxsize=max(1, PARSE_WORKERS - 1))
    stop = threading.Event()

    def read() -> None:
        try:
            with contextlib.closing(iter_line_chunks(entry, limits.max_line_bytes)) as chunks:
                for chunk in chunks:
                    if not _put(ahead, (chunk, pool.submit(parse, chunk)), stop):
                        return
        except BaseException as exc:  # raised in the writing thread, where the next chunk would have come
            _put(ahead, exc, stop)
            return
        _put(ahead, None, stop)

    reader = threading.Thread(target=read, name="ingest-read", daemon=True)
    reader.start()
    try:
        while (item := ahead.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            chunk, future = item
            yield chunk, future.result()
    finally:
        stop.set()
        reader.join()
        while not ahead.empty():
            item = ahead.get_nowait()
            if isinstance(item, tuple):
                item[1].cancel()
        pool.shutdown(wait=True)
        for cursor in cursors:
            cursor.close()


def _put(into: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put `item` in the queue once there is room, unless `stop` is set first (the writer has gone)."""
    while not stop.is_set():
        try:
            into.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


class _ChunkTables:
    """A chunk's rows in the writing connection's tables `_col_queries` and `_col_candidates`, with the
    line-by-line path's triplets beside the columnar ones; made only when a chunk needs them (a repeated query
    id, a line that went the slow way, a shard's share)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, parsed: columnar.ChunkResult, slow: dict) -> None:
        self.conn, self.parsed, self.slow, self.loaded = conn, parsed, slow, False

    def load(self) -> None:
        if self.loaded:
            return
        parsed = self.parsed
        self.conn.register("_col_parsed", parsed.queries)
        self.conn.execute("CREATE OR REPLACE TEMP TABLE _col_queries AS FROM _col_parsed")
        self.conn.register("_col_parsed", parsed.candidates)
        if parsed.variants:
            self.conn.execute("CREATE OR REPLACE TEMP TABLE _col_candidates AS FROM _col_parsed")
        else:  # each candidate's title and text are its passage's (one raw text per passage id in this chunk)
            self.conn.register("_col_parsed_passages", parsed.passages)
            self.conn.execute(
                """CREATE OR REPLACE TEMP TABLE _col_candidates AS
                SELECT c.*, p.title, p.text FROM _col_parsed c JOIN _col_parsed_passages p USING (passage_id)"""
            )
            self.conn.unregister("_col_parsed_passages")
        self.conn.unregister("_col_parsed")
        _add_slow(self.conn, self.slow)
        self.loaded = True


def _write_parsed(
    conn: duckdb.DuckDBPyConnection, subset: str, source: str, stage: _Stage, parsed: columnar.ChunkResult
) -> tuple[int, int]:
    """A chunk whose every line the columnar path took and kept, straight from the parsed Arrow tables (with
    its passages already reduced to one row each)."""
    names = ("_parsed_queries", "_parsed_candidates", "_parsed_passages")
    for name, table in zip(names, (parsed.queries, parsed.candidates, parsed.passages), strict=True):
        conn.register(name, table)
    try:
        return _stage_chunk(conn, subset, source, stage, *names)
    finally:
        for name in names:
            conn.unregister(name)


def _in_shard(entry: SourceEntry) -> Callable[[str | None], bool]:
    """Whether a query id (None: a line quarantined before its id is known) belongs to the entry's shard."""
    if entry.shard is None or not entry.shards:
        return lambda query_id: True
    index, count = entry.shard, entry.shards
    return lambda query_id: (index == 0) if query_id is None else shards.shard_of(query_id, count) == index


def _raw(chunk: LineChunk, line: int) -> str:
    """A line's text as the line-by-line reader gives it."""
    i = int(np.searchsorted(chunk.lines, line))
    return str(chunk.texts[i].as_py()).rstrip("\r\n")


def _add_slow(conn, slow: dict[int, tuple[Triplet, object]]) -> None:
    """The line-by-line path's triplets into the chunk's tables, beside the columnar ones."""
    if not slow:
        return
    queries = pa.table(
        {
            "line": pa.array(list(slow), pa.int64()),
            "query_id": [t.query_id for t, _ in slow.values()],
            "query": [t.query for t, _ in slow.values()],
            "prompt": pa.array([t.prompt for t, _ in slow.values()], pa.string()),
            "type": pa.array([t.type for t, _ in slow.values()], pa.string()),
        }
    )
    rows: dict[str, list] = {
        k: [] for k in ("line", "role", "rank", "passage_id", "title", "text", "score", "source_id", "query_id")
    }
    for line, (t, _) in slow.items():
        for role, cands in (("positive", t.positives), ("negative", t.negatives)):
            for rank, c in enumerate(cands):
                values = (line, role, rank, c.passage_id, c.title, c.text, c.score, c.source_id, t.query_id)
                for key, value in zip(rows, values, strict=True):
                    rows[key].append(value)
    candidates = pa.table(
        {
            "line": pa.array(rows["line"], pa.int64()),
            "role": pa.array(rows["role"], pa.string()),
            "rank": pa.array(rows["rank"], pa.int64()),
            "passage_id": pa.array(rows["passage_id"], pa.string()),
            "title": pa.array(rows["title"], pa.string()),
            "text": pa.array(rows["text"], pa.string()),
            "score": pa.array(rows["score"], pa.float64()),
            "source_id": pa.array(rows["source_id"], pa.string()),
            "query_id": pa.array(rows["query_id"], pa.string()),
        }
    )
    conn.register("_slow_queries", queries)
    conn.register("_slow_candidates", candidates)
    conn.execute("INSERT INTO _col_queries BY NAME SELECT * FROM _slow_queries")
    conn.execute("INSERT INTO _col_candidates BY NAME SELECT * FROM _slow_candidates")
    conn.unregister("_slow_queries")
    conn.unregister("_slow_candidates")


def _write_winners(conn, subset: str, source: str, stage: _Stage, winners: list[int]) -> tuple[int, int]:
    """The chunk's kept lines into the staging tables, and their passages (first text seen) into passages."""
    if not winners:
        return 0, 0
    every = conn.execute("SELECT count(*) FROM _col_queries").fetchone() == (len(winners),)
    if not every:  # some lines repeat an earlier query id: only the others are kept
        conn.register("_winners", pa.table({"line": pa.array(winners, pa.int64())}))
        conn.execute("DELETE FROM _col_queries WHERE line NOT IN (SELECT line FROM _winners)")
        conn.execute("DELETE FROM _col_candidates WHERE line NOT IN (SELECT line FROM _winners)")
        conn.unregister("_winners")
    kept = conn.execute("SELECT line, role, rank, passage_id, title, text FROM _col_candidates").pl()
    conn.register("_col_first", columnar.first_texts(kept))
    try:
        return _stage_chunk(conn, subset, source, stage, "_col_queries", "_col_candidates", "_col_first")
    finally:
        conn.unregister("_col_first")


def _stage_chunk(
    conn: duckdb.DuckDBPyConnection,
    subset: str,
    source: str,
    stage: _Stage,
    queries: str,
    candidates: str,
    passages: str,
) -> tuple[int, int]:
    """A chunk's kept rows into the staging tables, and its passages not stored yet into passages. `queries`,
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
    insert_new_passages(conn, passages)
    counts = conn.execute(
        f"SELECT count(*) FILTER (role = 'positive'), count(*) FILTER (role = 'negative') FROM {candidates}"
    ).fetchone()
    assert counts is not None
    return int(counts[0]), int(counts[1])
