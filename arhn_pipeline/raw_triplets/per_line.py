"""The line-by-line path: every row through pydantic (sources/rows.py), the reference the columnar reader is
measured against and the fallback for each line it cannot take; with what both paths share: the limits, the
counts an ingest reports, the shard test and the rules that make a decoded line a triplet."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import duckdb
import polars as pl

from arhn_pipeline import faults, shards
from arhn_pipeline.raw_triplets.staging import Stage
from arhn_pipeline.sources.readers import MAX_LINE_BYTES, iter_records
from arhn_pipeline.sources.registry import SourceEntry
from arhn_pipeline.sources.rows import MAX_TEXT_CHARS, RowError, Triplet, parse_row

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


@dataclass(frozen=True)
class Limits:
    """Sizes past which a line or a text is quarantined as too_large (raw_triplets config)."""

    max_line_bytes: int = MAX_LINE_BYTES
    max_text_chars: int = MAX_TEXT_CHARS


def in_shard(entry: SourceEntry) -> Callable[[str | None], bool]:
    """Whether a query id (None: a line quarantined before its id is known) belongs to the entry's shard."""
    if entry.shard is None or not entry.shards:
        return lambda query_id: True
    index, count = entry.shard, entry.shards
    return lambda query_id: (index == 0) if query_id is None else shards.shard_of(query_id, count) == index


def triplet(value: object, fmt: str, max_text_chars: int) -> Triplet:
    """One decoded line as a triplet (RowError naming the field when it is not one)."""
    t = parse_row(value, fmt, max_text_chars)  # type: ignore[arg-type]
    if not t.negatives:
        raise RowError(
            "neg" if fmt == "bge" else "negative_passages",
            "no negative left once repeats of the positives were removed",
        )
    return t


def candidate_text(row: Any, field: str) -> str:
    """The value at `neg[3]`-style field names, for the quarantine's raw column."""
    name, _, index = field.partition("[")
    value = row.get(name, [])[int(index.rstrip("]"))]
    return value if isinstance(value, str) else str(value.get("text", value))


class Batch:
    def __init__(self, subset: str, source: str, stage: Stage):
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
            self.stage.add_passages(conn, "_passages_batch")
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


def _digest(t: Triplet) -> bytes:
    h = hashlib.blake2b(digest_size=12)
    for part in (t.query, t.prompt or "", t.type or ""):
        h.update(part.encode("utf-8") + b"\x00")
    for role, cands in ((b"p", t.positives), (b"n", t.negatives)):
        for c in cands:
            h.update(role + c.passage_id.encode() + repr(c.score).encode())
    return h.digest()


def stream_per_line(
    conn, subset: str, entry: SourceEntry, batch_size: int, stage: Stage, limits: Limits
) -> IngestStats:
    stats = IngestStats()
    seen: dict[str, tuple[int, bytes]] = {}
    batch = Batch(subset, entry.location, stage)
    mine = in_shard(entry)
    for rec in iter_records(entry, limits.max_line_bytes):
        stats.lines += 1
        stats.per_line += 1
        if rec.error:
            if mine(None):
                stats.quarantined_rows += 1
                batch.quarantine_row(rec.line, *rec.error, raw=rec.raw)
            continue
        try:
            t = triplet(rec.value, entry.format, limits.max_text_chars)
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
                rec.line, field, reason + ", left out", candidate_text(rec.value, field), scope="candidate"
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
