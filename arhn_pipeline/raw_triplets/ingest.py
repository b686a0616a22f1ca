"""Ingest one source into DuckDB: validate every row, fold repeats, quarantine what is bad, keep the rest.
The driver and the columnar reader's stream; staging.py holds where rows wait, per_line.py the reference path.

Two readers give the same tables: the columnar one (the default: chunks of lines parsed, checked and hashed by
DuckDB, raw_triplets/columnar.py; a line it cannot take goes to the line-by-line path alone) and the
line-by-line one (every row through pydantic, sources/rows.py), which is the reference and the fallback.
Memory stays flat: records stream in and leave in batches; only a small digest per query id is kept, to
tell a repeated line from a conflicting one.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import duckdb
import numpy as np
import pyarrow as pa

from arhn_pipeline import faults
from arhn_pipeline.raw_triplets import columnar
from arhn_pipeline.raw_triplets.per_line import (
    Batch,
    IngestStats,
    Limits,
    candidate_text,
    in_shard,
    stream_per_line,
    triplet,
)
from arhn_pipeline.raw_triplets.staging import (
    STAGING_PREFIX,
    Stage,
    checkpoint_after,
    release_freed_memory,
    setting,
    stage_chunk,
)
from arhn_pipeline.sources.readers import (
    LineChunk,
    SourceError,
    decode_line,
    iter_line_chunks,
)
from arhn_pipeline.sources.registry import SourceEntry
from arhn_pipeline.sources.rows import RowError, Triplet
from arhn_pipeline.store import PARTITIONED_TABLES

__all__ = ["STAGING_PREFIX", "IngestStats", "Limits", "NoValidRows", "ingest"]


class NoValidRows(SourceError):
    """Every line of the source was quarantined: the partition's stored rows are kept, not replaced by nothing."""


def ingest(
    conn: duckdb.DuckDBPyConnection,
    subset: str,
    entry: SourceEntry,
    batch_size: int = 20_000,
    limits: Limits = Limits(),  # noqa: B008 (frozen: one shared default is safe)
    reader: str = "columnar",
    checkpoint: bool = True,
    commit_lock: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> IngestStats:
    """Replace `subset`'s rows with the source's: all or nothing.

    Batches are staged as they come (Parquet files, staging.py), with their passages not stored yet; nothing is
    written to the store's tables until one transaction swaps them in for the partition's old rows, the new
    passages with them. Only that transaction runs inside `commit_lock()` (DuckLake's write lock, taken by
    the caller's DuckDBStore.staged_writer): the streaming before it only reads the store, so ingests of
    several shards stream at once and take turns for their swaps.
    A source without one valid row raises NoValidRows (with the commonest reasons) and changes nothing.
    `reader`: columnar (default) or per_line (the reference path; both give the same tables). `checkpoint`:
    write the rows into the database file before returning (else DuckDB does it later).
    """
    if reader not in ("columnar", "per_line"):
        raise ValueError(f"reader must be columnar or per_line, not {reader!r}")
    stage = Stage(conn, subset)
    with checkpoint_after(conn, checkpoint):
        try:
            stats = _staged(conn, subset, entry, batch_size, limits, reader, stage)
            with commit_lock():
                stage.swap(conn, subset, PARTITIONED_TABLES)
            return stats
        finally:
            stage.remove(conn)


def _staged(
    conn: duckdb.DuckDBPyConnection,
    subset: str,
    entry: SourceEntry,
    batch_size: int,
    limits: Limits,
    reader: str,
    stage: Stage,
) -> IngestStats:
    """The source's rows staged (or NoValidRows, nothing staged being kept)."""
    # DuckDB runs each statement of the streaming part on the thread that asks it (`threads` is the database's,
    # restored after): a chunk's statements are too small to gain from DuckDB's own threads, spread over them
    # they cost more CPU (synchronizing, waking) than they save, and the parsing workers already keep every core
    # busy. The swap of the staged rows, one large statement, gets DuckDB's threads back.
    with setting(conn, "threads", 1):
        if reader == "columnar":
            stats = _stream_columnar(conn, subset, entry, stage, limits)
        else:
            stats = stream_per_line(conn, subset, entry, batch_size, stage, limits)
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
    return stats


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


def _staged_digests(stage: Stage) -> str:
    return _DIGESTS.format(
        key="query_id",
        text="text",
        queries=stage.rows("queries"),
        candidates=stage.rows("candidates"),
        score="original_score",
        rank="original_rank",
    )


def _repeats(
    conn, stage: Stage, seen: dict[str, int], ids: list[tuple[int, str]], load: Callable[[], None]
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


def _stream_columnar(conn, subset: str, entry: SourceEntry, stage: Stage, limits: Limits) -> IngestStats:
    """The columnar reader: each chunk parsed and checked by DuckDB; the lines it does not take (and the
    reader's own errors) go through the line-by-line rules one by one; then repeats of a query id are
    resolved in line order across both, exactly as the line-by-line reader does."""
    stats = IngestStats()
    seen: dict[str, int] = {}  # query id -> the line that first gave it
    mine = in_shard(entry)
    for chunk, parsed in _parsed_chunks(conn, entry, limits):
        batch = Batch(subset, entry.location, stage)
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
                slow[line] = (triplet(value, entry.format, limits.max_text_chars), value)
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
                        line, field, reason + ", left out", candidate_text(value, field), scope="candidate"
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
    conn: duckdb.DuckDBPyConnection, subset: str, source: str, stage: Stage, parsed: columnar.ChunkResult
) -> tuple[int, int]:
    """A chunk whose every line the columnar path took and kept, straight from the parsed Arrow tables (with
    its passages already reduced to one row each)."""
    names = ("_parsed_queries", "_parsed_candidates", "_parsed_passages")
    for name, table in zip(names, (parsed.queries, parsed.candidates, parsed.passages), strict=True):
        conn.register(name, table)
    try:
        return stage_chunk(conn, subset, source, stage, *names)
    finally:
        for name in names:
            conn.unregister(name)


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


def _write_winners(conn, subset: str, source: str, stage: Stage, winners: list[int]) -> tuple[int, int]:
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
        return stage_chunk(conn, subset, source, stage, "_col_queries", "_col_candidates", "_col_first")
    finally:
        conn.unregister("_col_first")
