"""The DuckDB storage model every stage writes into.

Passages are stored once, keyed by a hash of their normalized text; every other table is keyed by
(subset, query_id[, passage_id]) so that any decision joins back to its inputs. Stages replace a
partition's rows inside one transaction, so a failed run leaves the previous rows intact.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

import duckdb
import polars as pl

SCHEMA = """
CREATE TABLE IF NOT EXISTS passages (
    passage_id VARCHAR PRIMARY KEY,   -- passage_key(title, text)
    title      VARCHAR,
    text       VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS queries (
    subset     VARCHAR NOT NULL,
    query_id   VARCHAR NOT NULL,
    text       VARCHAR NOT NULL,
    prompt     VARCHAR,               -- BGE instruction, when the source gives one
    type       VARCHAR,
    source     VARCHAR NOT NULL,      -- file path or hub id
    line       BIGINT NOT NULL        -- 1-based line (file) or row index + 1 (hub dataset)
);
CREATE TABLE IF NOT EXISTS candidates (
    subset            VARCHAR NOT NULL,
    query_id          VARCHAR NOT NULL,
    passage_id        VARCHAR NOT NULL,
    role              VARCHAR NOT NULL,   -- positive | negative
    original_rank     INTEGER NOT NULL,   -- 0-based position in the source's pos or neg list
    original_score    DOUBLE,
    source_passage_id VARCHAR             -- the id the source gave, if any
);
CREATE TABLE IF NOT EXISTS quarantine (
    subset  VARCHAR NOT NULL,
    source  VARCHAR NOT NULL,
    line    BIGINT NOT NULL,
    field   VARCHAR NOT NULL,
    reason  VARCHAR NOT NULL,
    scope   VARCHAR NOT NULL,             -- row: the line was left out; candidate: one passage was left out
    raw     VARCHAR                       -- the offending line (or value) as read, for inspection
);
-- ARHN stage 1: one row per (query, candidate), positives included.
CREATE TABLE IF NOT EXISTS snippets (
    subset            VARCHAR NOT NULL,
    query_id          VARCHAR NOT NULL,
    passage_id        VARCHAR NOT NULL,
    role              VARCHAR NOT NULL,
    status            VARCHAR NOT NULL,   -- answer_verified | answer_unverified | no_answer | unparsed
    snippet           VARCHAR,
    match             VARCHAR,            -- exact | normalized (verified snippets)
    detail            VARCHAR,            -- why an answer is unparsed
    passage_truncated BOOLEAN NOT NULL,   -- the prompt showed the passage cut to the token budget
    call_id           VARCHAR NOT NULL,   -- -> llm_calls
    template_version  VARCHAR NOT NULL,
    model             VARCHAR NOT NULL
);
"""

PARTITIONED_TABLES = ("queries", "candidates", "quarantine")  # written by raw_triplets

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The form two passages must share to count as the same passage."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def passage_key(text: str, title: str | None = None) -> str:
    body = normalize_text(text) if not title else normalize_text(title) + "\n" + normalize_text(text)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:20]


def ensure_schema(conn: duckdb.DuckDBPyConnection) -> None:
    from arhn_pipeline.engine.cache import CALLS_SCHEMA

    conn.execute(SCHEMA)
    conn.execute(CALLS_SCHEMA)


def replace_partition(conn: duckdb.DuckDBPyConnection, table: str, subset: str, frame: pl.DataFrame) -> None:
    """Swap a partition's rows for `frame` in one transaction: other partitions are untouched, and a
    failure leaves the previous rows."""
    cols = [r[0] for r in conn.execute(f"DESCRIBE {table}").fetchall()]
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(f"DELETE FROM {table} WHERE subset = ?", [subset])
        if frame.height:
            conn.register("_partition_rows", frame.select(cols))
            conn.execute(f"INSERT INTO {table} SELECT * FROM _partition_rows")
            conn.unregister("_partition_rows")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


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


def table_counts(conn: duckdb.DuckDBPyConnection, subset: str) -> dict[str, int]:
    return {
        table: conn.execute(f"SELECT count(*) FROM {table} WHERE subset = ?", [subset]).fetchone()[0]
        for table in PARTITIONED_TABLES
    }
