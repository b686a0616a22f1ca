"""Streaming readers: one record at a time, so memory does not grow with the source."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from arhn_pipeline.sources.registry import SourceEntry


class SourceError(Exception):
    """The source as a whole cannot be read (missing, unreadable, empty): names the file."""


@dataclass
class Record:
    line: int  # 1-based line in the file, or row index + 1 in a hub dataset
    raw: str  # the line as read (decoded with replacement characters when it was not UTF-8)
    value: object = None
    error: tuple[str, str] | None = None  # (field, reason) when the line could not be decoded


def iter_records(entry: SourceEntry) -> Iterator[Record]:
    records = _iter_jsonl(entry) if entry.path is not None else _iter_hub(entry)
    for n, rec in enumerate(records):
        if entry.limit is not None and n >= entry.limit:
            return
        yield rec


def _iter_jsonl(entry: SourceEntry) -> Iterator[Record]:
    path = entry.path
    assert path is not None  # a file entry
    if not path.is_file():
        raise SourceError(f"source {entry.name!r}: file not found: {path}")
    any_line = False
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise SourceError(f"source {entry.name!r}: cannot open {path}: {exc}") from exc
    with fh:
        for n, data in enumerate(fh, start=1):
            if not data.strip():
                continue
            any_line = True
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raw = data.decode("utf-8", errors="replace").rstrip("\r\n")
                yield Record(n, raw, error=("line", f"invalid UTF-8 at byte {exc.start}"))
                continue
            text = text.rstrip("\r\n")
            try:
                yield Record(n, text, value=json.loads(text))
            except json.JSONDecodeError as exc:
                yield Record(n, text, error=("line", f"malformed JSON: {exc.msg} at column {exc.colno}"))
    if not any_line:
        raise SourceError(f"source {entry.name!r}: file is empty: {path}")


def _iter_hub(entry: SourceEntry) -> Iterator[Record]:
    import datasets

    hub = entry.hub
    assert hub is not None  # a hub entry
    try:
        ds = datasets.load_dataset(hub.dataset, hub.config, split=hub.split, data_files=hub.data_files, streaming=True)
    except Exception as exc:  # datasets raises many types; all mean "cannot read this source"
        raise SourceError(f"source {entry.name!r}: cannot load dataset {hub.dataset!r}: {exc}") from exc
    any_row = False
    for i, row in enumerate(ds):
        if any(row.get(k) != v for k, v in hub.filter.items()):
            continue
        any_row = True
        yield Record(i + 1, json.dumps(row, ensure_ascii=False, default=str), value=row)
    if not any_row:
        raise SourceError(f"source {entry.name!r}: dataset {hub.dataset!r} has no rows matching {hub.filter}")
