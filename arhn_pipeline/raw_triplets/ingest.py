"""Ingest one source into DuckDB: validate every row, fold repeats, quarantine what is bad, keep the rest.

Memory stays flat: records stream in and leave in batches; only a small digest per query id is kept, to
tell a repeated line from a conflicting one.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import duckdb
import polars as pl

from arhn_pipeline import faults
from arhn_pipeline.sources.readers import MAX_LINE_BYTES, SourceError, iter_records
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

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Batch:
    def __init__(self, subset: str, source: str, stage: dict[str, str]):
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
            conn.execute("INSERT INTO passages SELECT * FROM _passages_batch ON CONFLICT DO NOTHING")
            conn.unregister("_passages_batch")
        for table, rows in (
            ("queries", self.queries),
            ("candidates", self.candidates),
            ("quarantine", self.quarantine),
        ):
            if rows:
                _insert(conn, table, self.stage[table], rows)
        self.queries, self.candidates, self.passages, self.quarantine = [], [], {}, []


def _insert(conn: duckdb.DuckDBPyConnection, table: str, into: str, rows: list[dict]) -> None:
    cols = [r[0] for r in conn.execute(f"DESCRIBE {table}").fetchall()]
    frame = pl.DataFrame(
        rows, schema_overrides={"original_score": pl.Float64, "line": pl.Int64}, infer_schema_length=None
    ).select(cols)
    conn.register("_rows_batch", frame)
    conn.execute(f"INSERT INTO {into} SELECT * FROM _rows_batch")
    conn.unregister("_rows_batch")


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
) -> IngestStats:
    """Replace `subset`'s rows with the source's: all or nothing.

    Batches go to staging tables, committed as they come (so memory stays flat: one long transaction
    would hold every appended row); one short transaction then swaps them in for the partition's old rows.
    A source without one valid row raises NoValidRows (with the commonest reasons) and changes nothing.
    """
    # One staging name per (table, subset): a run killed mid-ingest leaves tables the next run replaces.
    tag = hashlib.sha256(subset.encode()).hexdigest()[:12]
    stage = {t: f"_stage_{t}_{tag}" for t in PARTITIONED_TABLES}
    for table, staging in stage.items():
        conn.execute(f"CREATE OR REPLACE TABLE {staging} AS SELECT * FROM {table} LIMIT 0")
    try:
        stats = _stream_into(conn, subset, entry, batch_size, stage, limits)
        if stats.queries == 0:
            reasons = conn.execute(
                f"SELECT reason, count(*) FROM {stage['quarantine']} GROUP BY ALL ORDER BY 2 DESC LIMIT 3"
            ).fetchall()
            shown = "; ".join(f"{n} x {reason}" for reason, n in reasons)
            raise NoValidRows(
                f"source {entry.name!r}: {entry.location}: none of its {stats.lines} lines is a valid row ({shown}); "
                "the partition's stored rows are kept"
            )
        with transaction(conn):
            delete_partition(conn, subset, PARTITIONED_TABLES)
            for table, staging in stage.items():
                conn.execute(f"INSERT INTO {table} SELECT * FROM {staging}")
    finally:
        for staging in stage.values():
            conn.execute(f"DROP TABLE IF EXISTS {staging}")
    return stats


def _stream_into(
    conn, subset: str, entry: SourceEntry, batch_size: int, stage: dict[str, str], limits: Limits
) -> IngestStats:
    stats = IngestStats()
    seen: dict[str, tuple[int, bytes]] = {}
    batch = _Batch(subset, entry.location, stage)
    for rec in iter_records(entry, limits.max_line_bytes):
        stats.lines += 1
        if rec.error:
            stats.quarantined_rows += 1
            batch.quarantine_row(rec.line, *rec.error, raw=rec.raw)
            continue
        try:
            t = parse_row(rec.value, entry.format, limits.max_text_chars)
            if not t.negatives:
                raise RowError(
                    "neg" if entry.format == "bge" else "negative_passages",
                    "no negative left once repeats of the positives were removed",
                )
        except RowError as exc:
            stats.quarantined_rows += 1
            batch.quarantine_row(rec.line, exc.field, exc.reason, raw=rec.raw)
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
