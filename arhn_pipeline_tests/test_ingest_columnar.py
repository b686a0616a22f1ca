"""The columnar reader gives the same tables as the line-by-line reader, row for row: on every real file in
../shared/data, on the bad-input corpus (test_bad_input.BAD_LINES and the planted lines of test_ingest), on
Tevatron rows with titles, and on arbitrary lines (a property test). Same passage ids, so stored calls and
decisions keep their keys."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import replace

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arhn_pipeline.identity import normalize_text, passage_key
from arhn_pipeline.raw_triplets import columnar
from arhn_pipeline.raw_triplets.ingest import IngestStats, Limits, ingest
from arhn_pipeline.schema import create_schema
from arhn_pipeline.sources import readers
from arhn_pipeline.sources.readers import SourceError
from arhn_pipeline.sources.registry import SourceEntry
from arhn_pipeline_tests.test_bad_input import BAD_LINES, bad_lines, good, line

TABLES = {
    "queries": "subset, query_id, text, prompt, type, line",
    "candidates": "subset, query_id, passage_id, role, original_rank, original_score, source_passage_id",
    "quarantine": "subset, line, field, reason, scope, raw",
    "passages": "passage_id, title, text",
}


DEFAULT_LIMITS = Limits()


def both(tmp_path, entry: SourceEntry, limits: Limits = DEFAULT_LIMITS) -> tuple[IngestStats | str, IngestStats | str]:
    """Ingest `entry` with each reader into its own fresh DuckDB file; assert every table is the same."""
    results, tables = [], []
    for reader in ("per_line", "columnar"):
        conn = duckdb.connect(str(tmp_path / f"{reader}-{entry.name}.duckdb"))
        create_schema(conn)
        try:
            results.append(ingest(conn, entry.name, entry, limits=limits, reader=reader))
        except SourceError as exc:
            results.append(str(exc))
        tables.append(
            {t: conn.execute(f"SELECT {cols} FROM {t} ORDER BY ALL").fetchall() for t, cols in TABLES.items()}
        )
        conn.close()
    for table in TABLES:
        assert tables[0][table] == tables[1][table], f"{entry.name}: {table} differs"
    if isinstance(results[0], IngestStats) and isinstance(results[1], IngestStats):
        assert results[0].per_line == results[0].lines  # the reference reads every line itself
        assert replace(results[0], per_line=0) == replace(results[1], per_line=0)
    else:
        assert results[0] == results[1]
    return results[0], results[1]


REAL_FILES = [
    "train/scifact_train_bm25_hardneg.jsonl",
    "judged/trec_dl19_bm25_hardneg_human_grades.jsonl",
    "judged/trec_dl20_bm25_hardneg_human_grades.jsonl",
    "llm_labels/rlhn/fiqa.stage_1.gpt-4o-mini.jsonl",
    "llm_labels/rlhn/msmarco_passage.stage_1.gpt-4o-mini.jsonl",
]


@pytest.mark.parametrize("relpath", REAL_FILES)
def test_real_files_give_identical_tables(shared_data, tmp_path, relpath):
    fmt = "tevatron" if ".stage_" in relpath else "bge"
    stats, fast = both(tmp_path, SourceEntry(name="real", format=fmt, path=shared_data / relpath))
    assert isinstance(stats, IngestStats) and isinstance(fast, IngestStats) and stats.queries > 0
    assert fast.per_line == 0  # every line of a clean file is taken by the columnar path


def test_every_flagembedding_sample_gives_identical_tables(shared_data, tmp_path):
    for path in sorted((shared_data / "samples" / "flagembedding").glob("*.jsonl")):
        both(tmp_path, SourceEntry(name=re.sub(r"\W", "_", path.stem).lower(), format="bge", path=path))


@pytest.fixture(params=["one chunk", "many chunks"])
def chunking(request, monkeypatch):
    """The default chunk size, and chunks of a few lines (repeats and fallbacks across chunk boundaries)."""
    if request.param == "many chunks":
        monkeypatch.setattr(readers, "CHUNK_BYTES", 300)


def test_the_bad_input_corpus_gives_identical_tables(tmp_path, chunking):
    lines = [line(good(1))]
    for _, bad, _, _ in BAD_LINES:
        lines += [bad, line(good(len(lines)))]
    lines += [
        b'{"query": "truncated", "pos": ["a"], "neg": ["b"',
        line({"pos": ["a"], "neg": ["b"]}),
        line(good(2, pos=[])),
        line(good(3, neg="b")),
        line(good(5, neg=["x\x07y"])),
        line(good(1, neg=["different"])),  # a conflicting repeat of query 1
        line(good(1)),  # an identical repeat
        line(good(7, neg=["answer passage 7", "n7"])),  # a negative equal to the positive
        line(good(8, neg=["n8", "n8 ", "m8"])),  # a repeated negative (equal once normalized)
        line(good(10, neg_scores=[1.0])),  # scores do not match the negatives
        line(good(11, neg_scores=[1, 2.5], pos_ids=[7], neg_ids=["a", "b"], query_id=5)),  # ints where allowed
        line(good(12, query_id=0)),  # a falsy id: `query_id or qid or derived`
        line(good(13, query_id="", qid="x13")),
        line(good(14, qid=True)),  # a bool is not an id
        b'{"query": "q15", "pos": ["a15"], "neg": ["b15"], "type": "t", "extra": {"nested": {"k": 1, "k": 2}}}',
        b'{"query": "q16", "pos": ["a16"], "neg": ["b16",]}',  # a trailing comma (DuckDB would take it)
        line(good(17, neg=["caf\u00e9 \u00a0 na\u0308ive\u2003x", "\u3000wide  space\u2029"])),
        line(good(18, pos=["e\u0301 composed"], neg=["\u00e9 composed", "other"])),  # equal once NFC
        b"   " + line(good(19)),  # leading whitespace
        b"\xff\xfe not utf-8",
        b"",
        b"  \t ",
        line(good(20)) + b"\r",
    ]
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    limits = Limits(max_line_bytes=20_000, max_text_chars=1_000)
    stats, _ = both(tmp_path, SourceEntry(name="corpus", format="bge", path=path), limits)
    assert isinstance(stats, IngestStats)
    assert stats.quarantined_rows >= len(BAD_LINES) + 8 and stats.duplicate_lines >= 1


def test_a_line_over_the_limit_and_a_limit_on_rows_give_identical_tables(tmp_path, chunking):
    path = tmp_path / "big.jsonl"
    rows = [line(good(i)) for i in range(30)]
    rows[3] = line(good(3, pos=["w" * 300_000]))  # over max_line_bytes, and over one read of the chunk reader
    path.write_bytes(b"\n".join(rows))  # no newline at the end
    both(tmp_path, SourceEntry(name="big", format="bge", path=path), Limits(max_line_bytes=100_000))
    both(tmp_path, SourceEntry(name="sliced", format="bge", path=path, limit=7), Limits(max_line_bytes=100_000))


def test_tevatron_rows_with_titles_ids_and_faults_give_identical_tables(tmp_path, chunking):
    def psg(i, **over):
        return {"docid": f"d{i}", "title": f"Title {i}", "text": f"text {i}", **over}

    rows = [
        {"query_id": "1", "query": "q1", "positive_passages": [psg(1)], "negative_passages": [psg(2), psg(3)]},
        {"query_id": 2, "query": "q2", "positive_passages": [psg(4, title="")], "negative_passages": [psg(5, docid=9)]},
        {"query_id": "3", "query": "q3", "positive_passages": [psg(6)], "negative_passages": [{"title": "no text"}]},
        {"query_id": "4", "query": "q4", "positive_passages": [psg(7)], "negative_passages": [psg(7)]},
        {
            "query_id": "5",
            "query": "q5",
            "positive_passages": [psg(8, score=1)],
            "negative_passages": [psg(9, score=None)],
        },
        {"query_id": "6", "query": "q6", "positive_passages": [psg(10)], "negative_passages": [psg(11, text="a\x01")]},
    ]
    text = "\n".join(json.dumps(r) for r in rows)
    text += (
        '\n{"query_id": "7", "query": "q7", "positive_passages": [{"text": "a", "text": "b"}], '
        '"negative_passages": [{"text": "c"}]}'
    )
    path = tmp_path / "tev.jsonl"
    path.write_text(text + "\n", encoding="utf-8")
    stats, _ = both(tmp_path, SourceEntry(name="tev", format="tevatron", path=path))
    assert isinstance(stats, IngestStats) and stats.queries == 3


@pytest.mark.parametrize("fmt", ["bge", "tevatron"])
def test_a_left_out_repeat_does_not_give_its_passage_text(tmp_path, chunking, fmt):
    """A line left out as a repeat of an earlier query id may hold a passage that a later kept line gives in
    another raw form (spaces, Unicode form; same id): the kept line's text is stored, as the line-by-line path
    stores it; and a chunk whose repeats hold passages in one form only gives the same tables too."""

    def row(query_id: str, pos: list[str], neg: list[str], title: str | None = None) -> dict:
        if fmt == "bge":
            return {"query_id": query_id, "query": f"q {query_id}", "pos": pos, "neg": neg}
        passages = [{"title": title, "text": t} if title is not None else {"text": t} for t in pos + neg]
        return {
            "query_id": query_id,
            "query": f"q {query_id}",
            "positive_passages": passages[: len(pos)],
            "negative_passages": passages[len(pos) :],
        }

    rows = [
        row("A", ["first answer"], ["n1", "shared plain"]),
        row("A", ["x  y", "cafe\u0301"], ["n2"]),  # a conflicting repeat: left out, with two variant texts
        row("A", ["first answer"], ["n1", "shared plain"]),  # an identical repeat
        row("B", ["x y", "caf\u00e9"], ["n3", "shared plain"]),  # kept: the same two passages, normal form
        row("C", ["only plain"], ["shared plain", "n4"]),
    ]
    if fmt == "tevatron":  # a title given in two forms on one text
        rows += [
            row("D", ["titled"], ["n5"], title="T  one"),
            row("D", ["t"], ["n6"]),
            row("E", ["titled"], ["n7"], title="T one"),
        ]
    text = "\n".join(json.dumps(r).replace("\\\\u", "\\u") for r in rows) + "\n"
    path = tmp_path / f"repeats-{fmt}.jsonl"
    path.write_text(text, encoding="utf-8")
    stats, _ = both(tmp_path, SourceEntry(name=f"repeats_{fmt}", format=fmt, path=path))
    assert isinstance(stats, IngestStats) and stats.duplicate_lines == 1
    conn = duckdb.connect(str(tmp_path / f"columnar-repeats_{fmt}.duckdb"))
    stored = {t for (t,) in conn.execute("SELECT text FROM passages").fetchall()}
    assert {"x y", "caf\u00e9"} <= stored and not {"x  y", "cafe\u0301"} & stored


def test_the_sql_whitespace_class_is_pythons():
    spaces = "".join(chr(c) for c in range(sys.maxunicode + 1) if re.fullmatch(r"\s", chr(c)))
    assert columnar.WS_CLASS == "[" + "".join(f"\\x{{{ord(c):x}}}" for c in spaces) + "]"
    conn = duckdb.connect()
    texts = ["  a\u00a0\u2003b\t\nc  ", "e\u0301\u1680x\u205fy", "\u3000\u2028z\x1c\x1f", "plain"]
    got = conn.execute(f"SELECT list_transform($t, lambda x: {columnar.normalized_sql('x')})", {"t": texts}).fetchone()[
        0
    ]
    assert got == [normalize_text(t) for t in texts]


@settings(
    max_examples=int(os.environ.get("ARHN_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    lines=st.lists(bad_lines, min_size=1, max_size=12),
    extra=st.lists(st.text(max_size=12), max_size=4),
    chunk=st.sampled_from([readers.CHUNK_BYTES, 64, 200]),
)
def test_arbitrary_lines_give_identical_tables(tmp_path_factory, monkeypatch, lines, extra, chunk):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    monkeypatch.setattr(readers, "CHUNK_BYTES", chunk)

    texts = [line(good(0, query=q or "empty", neg=[q + " n", "m"])) for q in extra]
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines + texts) + b"\n" + line(good(0, query="the last, valid line")) + b"\n")
    both(tmp_path, SourceEntry(name="fuzz", format="bge", path=path))


def test_passage_ids_equal_passage_key(tmp_path):
    rows = [good(i, pos=[f"Caf\u00e9  {i}\u00a0"], neg=[f"  e\u0301 {i}", f"x\u2003{i}"]) for i in range(3)]
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b"\n".join(line(r) for r in rows) + b"\n")
    conn = duckdb.connect(str(tmp_path / "ids.duckdb"))
    create_schema(conn)
    ingest(conn, "ids", SourceEntry(name="ids", format="bge", path=path))
    stored = dict(conn.execute("SELECT text, passage_id FROM passages").fetchall())
    assert stored == {t: passage_key(t) for r in rows for t in r["pos"] + r["neg"]}


def test_lines_near_the_plain_line_shortcut_give_identical_tables(tmp_path, chunking):
    """A line of printable ASCII with single spaces and no escape skips the per-text character checks; texts
    that sit at the edge of that rule (a space at either end, double spaces, raw DEL, tab, NBSP and accents, an
    escape, a text of one space, `, "` inside a text) must come out as the line-by-line path makes them."""
    raw_lines = [
        '{"query": "q1", "pos": [" lead"], "neg": ["trail ", "ok one"]}',
        '{"query": "q2", "pos": ["p, "], "neg": [" ", "n2"]}',
        '{"query": "q3", "pos": ["mid  double"], "neg": ["n3"]}',
        '{"query": "q4", "pos": ["del\x7fchar"], "neg": ["n4"]}',
        '{"query": "q5", "pos": ["tab\there"], "neg": ["n5"]}',
        '{"query": "q6", "pos": ["caf\u00e9\u00a0 x"], "neg": ["e\u0301 n6"]}',
        '{"query": "q7", "pos": ["esc\\u0041pe \\"quoted\\""], "neg": ["n7 "]}',
        '{"query":"q8","pos":["packed"],"neg":["n8"]}',
        '{"query": "q9" , "pos": [ "spaced json" ] , "neg": [ "n9" ] }',
        '{"query": "q10", "pos": ["a"], "neg": ["b",]}',
        '{"query": " q11 ", "pos": ["a"], "neg": ["b"]}',
    ]
    path = tmp_path / "plain.jsonl"
    path.write_bytes("\n".join(raw_lines).encode("utf-8") + b"\n")
    _, col = both(tmp_path, SourceEntry(name="plain", format="bge", path=path))
    # a text of one space, a raw DEL, a raw tab (not JSON) and a trailing comma are quarantined; the rest kept
    assert isinstance(col, IngestStats) and (col.queries, col.quarantined_rows) == (7, 4)


# texts from the characters that decide whether a line is plain: spaces, a comma and quote, a backslash, DEL,
# a tab, NBSP, an accent and a combining one
_EDGE_TEXT = st.text(alphabet=' ab,"\\\x7f\t\u00a0\u00e9\u0301', min_size=0, max_size=8)


@settings(
    max_examples=int(os.environ.get("ARHN_PROPERTY_EXAMPLES", "150")) // 3,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(
        st.tuples(
            _EDGE_TEXT, st.lists(_EDGE_TEXT, min_size=1, max_size=3), st.lists(_EDGE_TEXT, min_size=1, max_size=3)
        ),
        min_size=1,
        max_size=6,
    ),
    ascii_only=st.booleans(),
    separators=st.sampled_from([(", ", ": "), (",", ":"), (" , ", " :  ")]),
    fmt=st.sampled_from(["bge", "tevatron"]),
)
def test_texts_at_the_plain_line_edge_give_identical_tables(tmp_path_factory, rows, ascii_only, separators, fmt):
    """Lines written with or without escapes and with any spacing between tokens, in both row formats (Tevatron
    passages with the same texts as titles): the plain-line shortcut never changes a table (ids, texts,
    quarantine rows) from what the line-by-line path makes."""
    tmp_path = tmp_path_factory.mktemp("edge")

    def row(i: int, q: str, pos: list[str], neg: list[str]) -> dict:
        if fmt == "bge":
            return {"query": f"q{i} {q}", "pos": pos, "neg": neg}
        return {
            "query_id": f"q{i}",
            "query": f"q{i} {q}",
            "positive_passages": [{"docid": f"p{j}", "title": t, "text": t} for j, t in enumerate(pos)],
            "negative_passages": [{"docid": f"n{j}", "title": t, "text": t + " n"} for j, t in enumerate(neg)],
        }

    lines = [
        json.dumps(row(i, q, pos, neg), ensure_ascii=ascii_only, separators=separators)
        for i, (q, pos, neg) in enumerate(rows)
    ]
    path = tmp_path / "edge.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8") + b"\n")
    both(tmp_path, SourceEntry(name="edge", format=fmt, path=path))
