"""Streaming readers: one record at a time, so memory does not grow with the source.

A file is read as bytes, line by line, never more than `max_line_bytes` of one line in memory. Gzip files
(`.gz` of any supported format, or any file starting with gzip's magic bytes) are read directly; other
compressed, UTF-16/32 and binary files are named as such once, before any line is read, instead of being
quarantined line by line. Every line that cannot become a JSON value gets its own quarantine reason.
"""

from __future__ import annotations

import errno
import gzip
import json
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
import pyarrow as pa

from arhn_pipeline.sources.registry import SourceEntry


class SourceError(Exception):
    """The source as a whole cannot be read (missing, unreadable, empty, not UTF-8 text): names the file."""


# A line longer than this is quarantined as too_large without being held in memory (raw_triplets config).
MAX_LINE_BYTES = 16 * 1024 * 1024
# The columnar reader's bytes per chunk (lines are never split across chunks).
CHUNK_BYTES = 16 * 1024 * 1024
# How much of a too-large or undecodable line the quarantine keeps.
RAW_PREVIEW_CHARS = 2_000

_COMPRESSED = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
    b"7z\xbc\xaf\x27\x1c": "7z",
}
_WIDE_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}
_UTF8_BOM = b"\xef\xbb\xbf"
T = TypeVar("T")


@dataclass
class Record:
    line: int  # 1-based line in the file, or row index + 1 in a hub dataset
    raw: str  # the line as read (decoded with replacement characters when it was not UTF-8)
    value: object = None
    error: tuple[str, str] | None = None  # (field, reason) when the line could not be decoded


class DuplicateKeyError(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return obj


def decode_line(text: str) -> tuple[object, tuple[str, str] | None]:
    """(value, None) for a line holding one JSON value, or (None, (field, reason)). Never raises."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        return None, ("line", f"malformed JSON: {exc.msg} at column {exc.colno}")
    except DuplicateKeyError as exc:
        return None, (exc.key, f"duplicate key {exc.key!r} in one JSON object (which value is meant is unknowable)")
    except RecursionError:
        return None, ("line", "JSON nested too deeply to read (more levels than any row format has)")
    if "\\u" in text or "\\U" in text:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            return None, ("line", f"lone surrogate escape (\\u{ord(exc.object[exc.start]):04x}): not a character")
        except RecursionError:
            return None, ("line", "JSON nested too deeply to read (more levels than any row format has)")
    return value, None


def iter_records(entry: SourceEntry, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Record]:
    records = _iter_jsonl(entry, max_line_bytes) if entry.path is not None else _iter_hub(entry)
    for n, rec in enumerate(records):
        if entry.limit is not None and n >= entry.limit:
            return
        yield rec


def not_a_regular_file(path: Path) -> str | None:
    """What the path is when it is not a regular file (a directory, a FIFO, a device, a symlink loop, nothing),
    or None. Never opens it: a FIFO or /dev/zero would block or never end."""
    import stat

    try:
        mode = path.stat().st_mode  # follows symlinks
    except FileNotFoundError:
        return "file not found" if not path.is_symlink() else "a symlink to nothing (file not found)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop, not a file"
        return f"cannot read it: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory, not a file (name a .jsonl file inside it)"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    return "not a regular file"


def _open(entry: SourceEntry) -> IO[bytes]:
    """The file's bytes, gunzipped when it is gzip; a SourceError naming the file for anything that is not
    (possibly gzipped) UTF-8 text."""
    path = entry.path
    assert path is not None  # a file entry
    where = f"source {entry.name!r}: {entry.location}"
    what = not_a_regular_file(path)
    if what:
        raise SourceError(f"{where}: {what}")
    try:
        fh: IO[bytes] = path.open("rb")
        head = fh.read(4)
        fh.seek(0)
    except OSError as exc:
        raise SourceError(f"{where}: cannot open: {exc.strerror or exc}") from exc
    if head[:2] == b"\x1f\x8b":
        unzipped = gzip.GzipFile(fileobj=fh, mode="rb")
        try:
            unzipped.read(1)
            unzipped.seek(0)
            fh = unzipped  # type: ignore[assignment]
        except gzip.BadGzipFile:  # gzip's magic bytes but no gzip header: read as the text it may be
            fh.seek(0)
        except (OSError, EOFError) as exc:
            fh.close()
            raise SourceError(f"{where}: a damaged gzip file: {exc}") from exc
    try:
        sample = fh.read(64 * 1024)
    except (OSError, EOFError) as exc:
        fh.close()
        raise SourceError(f"{where}: a damaged gzip file: {exc}") from exc
    problem = _not_text(sample)
    if problem:
        fh.close()
        raise SourceError(f"{where}: {problem}")
    fh.seek(0)
    return fh


def _not_text(sample: bytes) -> str | None:
    # compressed data starts with its format's magic bytes and is mostly bytes that are not UTF-8
    undecodable = sample.decode("utf-8", errors="replace").count("\ufffd")
    for magic, kind in _COMPRESSED.items():
        if sample.startswith(magic) and undecodable * 10 > len(sample):
            return f"a {kind}-compressed file; decompress it (or gzip it: .gz files are read directly)"
    for bom, kind in _WIDE_BOMS.items():
        rest = sample[len(bom) :]
        if sample.startswith(bom) and rest.count(b"\x00") * 5 >= len(rest) > 0:  # wide text: NULs in ASCII
            return f"{kind}-encoded text; convert it to UTF-8 (iconv -f {kind} -t UTF-8)"
    # a file of text lines of which most are not UTF-8 is not a JSON-lines file with some bad lines
    lines = [line for line in sample.split(b"\n")[:-1] if line.strip()]
    bad = 0
    for line in lines:
        try:
            bad += b"\x00" in line or not line.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
    if len(lines) >= 4 and bad * 2 > len(lines):
        if b"\x00" in sample:
            return f"binary data: {bad} of its first {len(lines)} lines hold NUL bytes or are not UTF-8"
        return (
            f"not UTF-8 text: {bad} of its first {len(lines)} lines are not valid UTF-8 (Latin-1 or another "
            "encoding?); convert it to UTF-8"
        )
    return None


def _lines(fh: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes, int | None]]:
    """(line number, bytes, size when over the limit): a line over the limit is cut to its first bytes, the
    rest skipped without being held in memory."""
    n = 0
    while True:
        data = fh.readline(max_line_bytes + 1)
        if not data:
            return
        n += 1
        if len(data) <= max_line_bytes or data.endswith(b"\n"):
            yield n, data, None
            continue
        size, rest = len(data), data
        while rest and not rest.endswith(b"\n"):
            rest = fh.readline(1 << 20)
            size += len(rest)
        yield n, data[: RAW_PREVIEW_CHARS * 4], size


def _line_record(n: int, data: bytes, too_large: int | None, max_line_bytes: int) -> Record | None:
    """One line's record (None for a blank line): its JSON value, or why it has none."""
    if n == 1 and data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    if not data.strip():
        return None
    if too_large is not None:
        raw = data.decode("utf-8", errors="replace")[:RAW_PREVIEW_CHARS]
        reason = f"too_large: {too_large} bytes, over the {max_line_bytes}-byte line limit (max_line_bytes)"
        return Record(n, raw, error=("line", reason))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raw = data.decode("utf-8", errors="replace").rstrip("\r\n")
        return Record(n, raw, error=("line", f"invalid UTF-8 at byte {exc.start}"))
    text = text.rstrip("\r\n")
    value, error = decode_line(text)
    return Record(n, text, value=value, error=error)


@dataclass
class _Progress:
    line: int = 0  # lines read so far
    any_line: bool = False  # a non-blank line was met


def _read_file(entry: SourceEntry, read: Callable[[IO[bytes], _Progress], Iterator[T]]) -> Iterator[T]:
    """`read` over the source's bytes (gunzipped): a file damaged past its first block, or one without a
    non-blank line, is a SourceError naming the file (and the line it got to)."""
    fh = _open(entry)
    progress = _Progress()
    try:
        yield from read(fh, progress)
    except (OSError, EOFError) as exc:  # a gzip file cut short or damaged past its first block
        raise SourceError(
            f"source {entry.name!r}: {entry.location}: unreadable after line {progress.line}: {exc}"
        ) from exc
    finally:
        fh.close()
    if not progress.any_line:
        raise SourceError(f"source {entry.name!r}: file is empty: {entry.location}")


def _iter_jsonl(entry: SourceEntry, max_line_bytes: int) -> Iterator[Record]:
    def read(fh: IO[bytes], progress: _Progress) -> Iterator[Record]:
        for progress.line, data, too_large in _lines(fh, max_line_bytes):
            rec = _line_record(progress.line, data, too_large, max_line_bytes)
            if rec is not None:
                progress.any_line = True
                yield rec

    return _read_file(entry, read)


@dataclass
class LineChunk:
    """Consecutive lines of a source for the columnar ingest: `texts` holds each line's JSON text (its line
    ending kept) at `lines`; `records` are the lines the columnar reader does not take (too large, not
    UTF-8), each with its error, as the line-by-line reader gives them."""

    lines: np.ndarray  # int64 line numbers, ascending
    texts: pa.Array  # large_string, parallel to `lines`
    records: list[Record]


_ASCII_WS = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)


def _chunk(data: bytes | memoryview, first_line: int, max_line_bytes: int) -> tuple[LineChunk, int]:
    """Split `data` (whole lines) into a LineChunk; also returns the number of lines it held."""
    buf = np.frombuffer(data, dtype=np.uint8)
    step = 1 << 20  # newlines found a MiB at a time: no temporary array the size of the chunk
    ends = np.concatenate([np.flatnonzero(buf[i : i + step] == 10) + i for i in range(0, len(buf), step)])
    if buf[-1] != 10:
        ends = np.append(ends, len(buf))
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    count = len(ends)
    numbers = np.arange(first_line + 1, first_line + 1 + count, dtype=np.int64)
    keep = np.ones(count, dtype=bool)
    records: list[Record] = []
    # blank lines (skipped) start with whitespace or are empty; so do a few others, which are looked at alone
    lengths = ends - starts
    first = buf[np.minimum(starts, len(buf) - 1)]  # an empty line's "first byte" is its newline
    odd = np.flatnonzero((lengths == 0) | np.isin(first, _ASCII_WS) | (lengths > max_line_bytes))
    for i in odd.tolist():
        keep[i] = False
        line = bytes(data[starts[i] : ends[i]])
        newline = int(ends[i] < len(buf))
        too_large = len(line) + newline if len(line) > max_line_bytes else None
        rec = _line_record(
            int(numbers[i]), line[: RAW_PREVIEW_CHARS * 4] if too_large else line, too_large, max_line_bytes
        )
        if rec is not None and (rec.error or too_large):
            records.append(rec)
        elif rec is not None:
            keep[i] = True  # a JSON line that starts with whitespace
    if not _utf8(data, len(buf)):
        for i in np.flatnonzero(keep).tolist():
            line = bytes(data[starts[i] : ends[i]])
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                keep[i] = False
                rec = _line_record(int(numbers[i]), line, None, max_line_bytes)
                assert rec is not None
                records.append(rec)
    offsets = np.append(starts, len(buf)).astype(np.int64)
    texts = pa.LargeStringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(data))
    records.sort(key=lambda r: r.line)
    if keep.all():
        return LineChunk(numbers, texts, records), count
    return LineChunk(numbers[keep], texts.filter(pa.array(keep)), records), count


def _utf8(data: bytes | memoryview, size: int) -> bool:
    """Whether `data` is valid UTF-8, checked in place (decoding it would make a string of its size)."""
    whole = pa.LargeStringArray.from_buffers(1, pa.py_buffer(np.array([0, size], dtype=np.int64)), pa.py_buffer(data))
    try:
        whole.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _limited(chunk: LineChunk, room: int) -> LineChunk:
    """The chunk's first `room` records (lines taken and lines with an error, in line order)."""
    numbers = np.sort(np.concatenate([chunk.lines, np.array([r.line for r in chunk.records], dtype=np.int64)]))
    if len(numbers) <= room:
        return chunk
    last = numbers[room - 1] if room > 0 else 0
    keep = chunk.lines <= last
    return LineChunk(
        chunk.lines[keep], chunk.texts.filter(pa.array(keep)), [r for r in chunk.records if r.line <= last]
    )


def iter_line_chunks(
    entry: SourceEntry, max_line_bytes: int = MAX_LINE_BYTES, chunk_bytes: int | None = None
) -> Generator[LineChunk, None, None]:
    """The source in chunks of whole lines, for the columnar ingest. The same lines, line numbers, limit and
    errors as iter_records; a hub dataset's rows come as their JSON text, row index + 1 as the line."""
    taken = 0
    size = chunk_bytes or CHUNK_BYTES
    for chunk in _file_chunks(entry, max_line_bytes, size) if entry.path else _hub_chunks(entry, max(1, size // 1024)):
        if entry.limit is not None:
            chunk = _limited(chunk, entry.limit - taken)
        taken += len(chunk.lines) + len(chunk.records)
        if len(chunk.lines) or chunk.records:
            yield chunk
        if entry.limit is not None and taken >= entry.limit:
            return


def _file_chunks(entry: SourceEntry, max_line_bytes: int, chunk_bytes: int) -> Iterator[LineChunk]:
    def read(fh: IO[bytes], progress: _Progress) -> Iterator[LineChunk]:
        carry, start = b"", True
        while True:
            # one buffer per chunk, read into and shared with the chunk's texts (no copy of the chunk's bytes:
            # a few transient copies of this size per chunk fragmented the heap, and the peak grew with the file)
            buf = bytearray(len(carry) + chunk_bytes)
            buf[: len(carry)] = carry
            size = len(carry) + _read_into(fh, memoryview(buf)[len(carry) :])
            got = size > len(carry)
            skip = len(_UTF8_BOM) if start and buf.startswith(_UTF8_BOM) else 0
            start = start and size == 0
            data = memoryview(buf)[skip:size]
            if not got:
                if not len(data):
                    return
                whole, carry = data, b""
            else:
                newline = buf.rfind(b"\n", skip, size)
                cut = newline + 1 - skip if newline >= 0 else 0
                if cut == 0 and len(data) > max_line_bytes + 1:  # one line over the limit: skipped, not held
                    head, total = bytes(data[: RAW_PREVIEW_CHARS * 4]), len(data)
                    tail = bytes(data[-1:])
                    while not tail.endswith(b"\n"):
                        tail = fh.readline(1 << 20)
                        if not tail:
                            break
                        total += len(tail)
                    progress.line += 1
                    rec = _line_record(progress.line, head, total, max_line_bytes)
                    carry, progress.any_line = b"", True
                    if rec is not None:
                        yield LineChunk(np.empty(0, dtype=np.int64), pa.array([], pa.large_string()), [rec])
                    continue
                if cut == 0:
                    carry = bytes(data)
                    continue
                whole, carry = data[:cut], bytes(data[cut:])
            chunk, count = _chunk(whole, progress.line, max_line_bytes)
            progress.line += count
            progress.any_line = progress.any_line or bool(len(chunk.lines) or chunk.records)
            yield chunk

    return _read_file(entry, read)


def _read_into(fh: IO[bytes], view: memoryview) -> int:
    """Fill `view` from `fh` (fewer bytes only at the end of the file); returns how many were read."""
    total = 0
    while total < len(view):
        n = fh.readinto(view[total:])  # type: ignore[attr-defined]
        if not n:
            break
        total += n
    return total


def _hub_chunks(entry: SourceEntry, rows: int = 20_000) -> Iterator[LineChunk]:
    batch: list[Record] = []
    for rec in _iter_hub(entry):
        batch.append(rec)
        if len(batch) >= rows:
            yield _records_chunk(batch)
            batch = []
    if batch:
        yield _records_chunk(batch)


def _records_chunk(records: list[Record]) -> LineChunk:
    lines = np.array([r.line for r in records], dtype=np.int64)
    return LineChunk(lines, pa.array([r.raw for r in records], pa.large_string()), [])


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
