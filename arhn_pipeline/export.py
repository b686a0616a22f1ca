"""Exports of any collection (original, a cleaning method, or a pruned collection) as BGE JSONL, Tevatron
JSONL, or a Hugging Face `datasets` dataset (save_to_disk, and push_to_hub when asked)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from arhn_pipeline.identity import passage_key
from arhn_pipeline.shards import DATASET_SQL

FORMATS = ("bge", "tevatron", "hf")


def rows(
    conn: duckdb.DuckDBPyConnection, method: str, subsets: list[str] | None = None, pruned: str | None = None
) -> Iterator[dict]:
    """BGE-shaped rows {subset, query_id, query, prompt, pos, neg} of one collection, in a stable order."""
    if pruned:
        sql = "SELECT subset, query_id, query, prompt, pos, neg FROM pruned_collection WHERE name = ?"
        params: list[Any] = [pruned]
    else:
        sql, params = "SELECT subset, query_id, query, prompt, pos, neg FROM triplets WHERE method = ?", [method]
    if subsets:  # a sub-dataset's name takes all its shards
        sql += f" AND (subset IN (SELECT unnest(?::VARCHAR[])) OR {DATASET_SQL} IN (SELECT unnest(?::VARCHAR[])))"
        params += [subsets, subsets]
    cur = conn.execute(sql + " ORDER BY subset, query_id", params)
    cols = [d[0] for d in cur.description]
    while batch := cur.fetchmany(1000):
        for values in batch:
            row = dict(zip(cols, values, strict=True))
            row["pos"], row["neg"] = row["pos"] or [], row["neg"] or []
            yield row


def to_bge(row: dict) -> dict:
    out = {"query_id": row["query_id"], "query": row["query"], "pos": row["pos"], "neg": row["neg"]}
    if row.get("prompt"):
        out["prompt"] = row["prompt"]
    out["subset"] = row["subset"]
    return out


def to_tevatron(row: dict) -> dict:
    def passages(texts):
        return [{"docid": passage_key(t), "title": "", "text": t} for t in texts]

    return {
        "query_id": row["query_id"],
        "query": row["query"],
        "positive_passages": passages(row["pos"]),
        "negative_passages": passages(row["neg"]),
        "subset": row["subset"],
    }


def export(
    conn: duckdb.DuckDBPyConnection,
    fmt: str,
    out: Path,
    method: str = "original",
    subsets: list[str] | None = None,
    pruned: str | None = None,
    push_to_hub: str | None = None,
    force: bool = False,
) -> int:
    """Write the collection to `out` (a .jsonl file, or a folder for hf); return the number of rows. An existing
    `out` is replaced only with `force`, and a symlink never (the write would land wherever it points)."""
    if out.is_symlink():
        raise ValueError(f"{out} is a symlink: not written through (name the file itself)")
    if out.exists() and not force:
        raise ValueError(f"{out} exists: not replaced without --force")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    if pruned is None:
        known = ["original"] + [
            r[0] for r in conn.execute("SELECT DISTINCT method FROM decisions ORDER BY 1").fetchall()
        ]
        if method not in known:
            raise ValueError(f"no method {method!r} in the decisions; known: {', '.join(known)}")
    shape = to_tevatron if fmt == "tevatron" else to_bge
    if fmt == "hf":
        import datasets

        # Through a JSONL file: datasets builds its Arrow table from it without holding the collection twice.
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "rows.jsonl"
            _write_jsonl(staged, (to_bge(r) for r in rows(conn, method, subsets, pruned)))
            ds = datasets.Dataset.from_json(str(staged), cache_dir=tmp)
            ds.save_to_disk(str(out))
            if push_to_hub:
                ds.push_to_hub(push_to_hub)
            return len(ds)
    return _write_jsonl(out, (shape(r) for r in rows(conn, method, subsets, pruned)))


def _write_jsonl(path: Path, records) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n
