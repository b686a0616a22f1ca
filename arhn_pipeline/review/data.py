"""Reviews in the store: drawing a partition's sample, the next item for a reviewer, recording an answer
(append-only), reading them back as a reference, JSONL out and in. The arithmetic is in review/core.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from arhn_pipeline.agreement import decision_predictions
from arhn_pipeline.review import core
from arhn_pipeline.rules import decisions as dec
from arhn_pipeline.store import scalar, transaction

DEFAULT_SAMPLE = 200


class NothingToReview(ValueError):
    """The partition has no negatives, or no evidence to stratify by."""


def population(conn: duckdb.DuckDBPyConnection, subset: str, settings: dec.DecisionSettings) -> pl.DataFrame:
    """The partition's negatives with their strata (which methods change each, the first-stage score band)."""
    negatives = conn.execute(
        "SELECT query_id, passage_id FROM candidates WHERE subset = ? AND role = 'negative' "
        "ORDER BY query_id, passage_id",
        [subset],
    ).pl()
    if negatives.is_empty():
        raise NothingToReview(f"{subset!r} has no negatives (is it ingested? arhn run --subset {subset})")
    proposed = dec.decide_partition(conn, subset, settings)
    changed: dict[core.Key, list[str]] = {}
    for method, pred in decision_predictions(proposed.frame).items():
        for key, flagged in pred.items():
            if flagged:
                changed.setdefault(key, []).append(method)
    scores = {
        (q, p): s
        for q, p, s in conn.execute(
            "SELECT query_id, passage_id, score FROM verdicts WHERE subset = ? AND stage_index = 0 "
            "AND score IS NOT NULL",
            [subset],
        ).fetchall()
    }
    return negatives.with_columns(stratum=pl.Series(core.strata(negatives, changed, scores), dtype=pl.String))


def ensure_sample(
    conn: duckdb.DuckDBPyConnection, subset: str, size: int, seed: int, settings: dec.DecisionSettings
) -> tuple[str, int, bool]:
    """The partition's sample: the one drawn before (whatever `size` asks now: reviews already given rest on
    it), or a new draw. Returns (sample_id, items, drawn now)."""
    row = conn.execute("SELECT any_value(sample_id), count(*) FROM review_items WHERE subset = ?", [subset]).fetchone()
    if row and row[1]:
        return row[0], row[1], False
    drawn = core.draw(population(conn, subset, settings), size, seed)
    sid = core.sample_id(subset, seed, size)
    frame = drawn.with_columns(
        subset=pl.lit(subset), sample_id=pl.lit(sid), seed=pl.lit(seed), drawn_at=pl.lit(dt.datetime.now())
    )
    cols = [r[0] for r in conn.execute("DESCRIBE review_items").fetchall()]
    with transaction(conn):
        conn.register("_drawn", frame.select(cols))
        conn.execute("INSERT INTO review_items SELECT * FROM _drawn")
        conn.unregister("_drawn")
    return sid, drawn.height, True


def items(conn: duckdb.DuckDBPyConnection, subset: str) -> pl.DataFrame:
    return conn.execute("SELECT * FROM review_items WHERE subset = ? ORDER BY item", [subset]).pl()


def reviews(conn: duckdb.DuckDBPyConnection, subset: str | None = None) -> pl.DataFrame:
    return conn.execute(
        "SELECT * FROM reviews WHERE ? OR subset = ? ORDER BY answered_at, review_id", [subset is None, subset]
    ).pl()


def _rechecked(subset: str, query_id: str, passage_id: str, share: float) -> bool:
    """Whether an item is among the share a second reviewer re-reviews (fixed by the item, not the reviewer)."""
    h = int(hashlib.sha256(f"recheck|{subset}|{query_id}|{passage_id}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < share


@dataclass(frozen=True)
class Progress:
    drawn: int
    reviewed: int  # items with an answer from anyone
    mine: int  # items this reviewer answered
    queue: int  # items left for this reviewer


def next_item(
    conn: duckdb.DuckDBPyConnection, subset: str, reviewer: str, recheck: float
) -> tuple[dict[str, Any] | None, Progress]:
    """The next item for `reviewer`, in the sample's order: one nobody answered, or (a share `recheck` of the
    items) one another reviewer answered and this one has not, for the reviewers' agreement."""
    rows = conn.execute(
        """
        SELECT i.*, list(DISTINCT r.reviewer) FILTER (WHERE r.reviewer IS NOT NULL) AS by
        FROM review_items i
        LEFT JOIN reviews r USING (subset, query_id, passage_id)
        WHERE i.subset = ? GROUP BY ALL ORDER BY i.item
        """,
        [subset],
    ).pl()
    queue, mine, reviewed = [], 0, 0
    for row in rows.iter_rows(named=True):
        by = row["by"] or []
        reviewed += bool(by)
        if reviewer in by:
            mine += 1
        elif not by or _rechecked(subset, row["query_id"], row["passage_id"], recheck):
            queue.append(row)
    return (queue[0] if queue else None), Progress(rows.height, reviewed, mine, len(queue))


def candidate(conn: duckdb.DuckDBPyConnection, subset: str, query_id: str, passage_id: str) -> dict[str, Any]:
    """What the page shows for an item: the query, its first positive, the candidate."""
    row = conn.execute(
        """
        SELECT q.text, p.title, p.text,
               (SELECT pp.text FROM candidates pc JOIN passages pp USING (passage_id)
                WHERE pc.subset = c.subset AND pc.query_id = c.query_id AND pc.role = 'positive'
                ORDER BY pc.original_rank LIMIT 1) AS positive
        FROM candidates c JOIN queries q USING (subset, query_id) JOIN passages p USING (passage_id)
        WHERE c.subset = ? AND c.query_id = ? AND c.passage_id = ?
        """,
        [subset, query_id, passage_id],
    ).fetchone()
    if row is None:
        raise KeyError(f"{subset}: no candidate {query_id}/{passage_id}")
    return {"query": row[0], "title": row[1] or "", "passage": row[2], "positive": row[3] or ""}


def review_id(subset: str, query_id: str, passage_id: str, reviewer: str, answer: str, answered_at: str) -> str:
    text = "|".join((subset, query_id, passage_id, reviewer, answer, answered_at))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def record(
    conn: duckdb.DuckDBPyConnection,
    rows: list[dict[str, Any]],
    origin: str,
) -> int:
    """Append reviews (dicts with subset, query_id, passage_id, reviewer, answer, shown_at, answered_at and
    optionally stratum, weight, shown); a review already stored (same id) is not added twice. Returns how many
    were added."""
    if not rows:
        return 0
    frame = pl.DataFrame(
        [
            {
                "review_id": review_id(
                    r["subset"], r["query_id"], r["passage_id"], r["reviewer"], r["answer"], str(r["answered_at"])
                ),
                "subset": r["subset"],
                "query_id": r["query_id"],
                "passage_id": r["passage_id"],
                "reviewer": r["reviewer"],
                "answer": r["answer"],
                "shown_at": _time(r.get("shown_at")),
                "answered_at": _time(r["answered_at"]),
                "stratum": r.get("stratum"),
                "weight": r.get("weight"),
                "shown": json.dumps(r["shown"]) if r.get("shown") is not None else None,
                "origin": origin,
            }
            for r in rows
        ],
        schema={
            "review_id": pl.String,
            "subset": pl.String,
            "query_id": pl.String,
            "passage_id": pl.String,
            "reviewer": pl.String,
            "answer": pl.String,
            "shown_at": pl.Datetime("us"),
            "answered_at": pl.Datetime("us"),
            "stratum": pl.String,
            "weight": pl.Float64,
            "shown": pl.String,
            "origin": pl.String,
        },  # fmt: skip
    ).unique("review_id", keep="first", maintain_order=True)
    with transaction(conn):
        before = scalar(conn, "SELECT count(*) FROM reviews")
        conn.register("_reviews", frame)
        conn.execute(
            "INSERT INTO reviews SELECT * FROM _reviews n WHERE NOT EXISTS "
            "(SELECT 1 FROM reviews r WHERE r.review_id = n.review_id)"
        )
        conn.unregister("_reviews")
        return scalar(conn, "SELECT count(*) FROM reviews") - before


def _time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value)).replace(tzinfo=None)


def export_jsonl(conn: duckdb.DuckDBPyConnection, path: Path, subset: str | None = None) -> int:
    rows = core.to_jsonl_rows(reviews(conn, subset))
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


@dataclass
class Imported:
    added: int
    already: int
    quarantined: list[str]  # one reason per bad line: the file, the line, the field


def import_jsonl(conn: duckdb.DuckDBPyConnection, path: Path) -> Imported:
    """Reviews exported by `arhn review --export` (here or elsewhere). A bad line is set aside with its reason
    (file, line, field) and the rest go in; an item that is not a candidate of its partition is set aside too."""
    good, bad = [], []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = core.parse_review_line(str(path), n, line)
                _time(row.get("answered_at") or "")
            except core.ReviewFileError as exc:
                bad.append(str(exc))
                continue
            except ValueError:
                bad.append(f"{path} line {n}: field 'answered_at' is not an ISO time")
                continue
            known = scalar(
                conn,
                "SELECT count(*) FROM candidates WHERE subset = ? AND query_id = ? AND passage_id = ?",
                [row["subset"], row["query_id"], row["passage_id"]],
            )
            if not known:
                where = f"{row['subset']}/{row['query_id']}/{row['passage_id']}"
                bad.append(f"{path} line {n}: {where} is not a candidate of this store")
                continue
            good.append(row)
    added = record(conn, good, origin=f"import:{path.name}")
    return Imported(added, len(good) - added, bad)


# --- the reference ---


@dataclass(frozen=True)
class Measured:
    estimates: dict[str, core.Estimate]  # per method or detector
    agreement: core.ReviewerAgreement
    reviewers: list[str]
    sample: int  # items drawn
    version: str  # which reviews: changes with every new answer


def version(conn: duckdb.DuckDBPyConnection, subset: str) -> str:
    """The reviews' data version for a partition: their count and the newest id (append-only)."""
    n, newest = conn.execute(
        "SELECT count(*), max(answered_at)::VARCHAR || max(review_id) FROM reviews WHERE subset = ?", [subset]
    ).fetchone() or (0, None)
    return f"{n}-{hashlib.sha256(str(newest).encode()).hexdigest()[:8]}" if n else "none"


def measure(
    conn: duckdb.DuckDBPyConnection,
    subset: str,
    predicted: Mapping[str, Mapping[core.Key, bool | None]],
    queries: Callable[[str], bool] | None = None,
) -> Measured | None:
    """Each detector's weighted estimate on the partition from its reviews, or None when it has none; with
    `queries`, only the sample's items of the queries it accepts (a held-out half)."""
    drawn = items(conn, subset)
    given = reviews(conn, subset)
    if queries is not None:
        drawn = drawn.filter(pl.col("query_id").map_elements(queries, return_dtype=pl.Boolean))
        given = given.filter(pl.col("query_id").map_elements(queries, return_dtype=pl.Boolean))
    if drawn.is_empty() or given.is_empty():
        return None
    answers = core.labels(given)
    return Measured(
        estimates={name: core.estimate(drawn, answers, pred) for name, pred in predicted.items()},
        agreement=core.reviewer_agreement(given),
        reviewers=sorted(set(given["reviewer"].to_list())),
        sample=drawn.height,
        version=version(conn, subset),
    )
