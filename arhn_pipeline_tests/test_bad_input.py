"""Bad input of every kind met so far: each line gets its own quarantine reason naming line and field, each
whole-file fault one clear error naming the file, and no single line or registry entry stops anything else.
Ends with a property test: arbitrary bytes and JSON values never make the ingest raise, and every line is
either kept or quarantined."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arhn_pipeline.raw_triplets.ingest import Limits, NoValidRows, ingest
from arhn_pipeline.sources.readers import SourceError
from arhn_pipeline.sources.registry import SourceEntry, load_registry
from arhn_pipeline_tests.conftest import write_registry


def good(i: int, **over) -> dict:
    row = {"query": f"question {i}", "pos": [f"answer passage {i}"], "neg": [f"other {i} a", f"other {i} b"]}
    row.update(over)
    return row


def line(row: dict) -> bytes:
    return json.dumps(row).encode("utf-8")


def quarantined(db, subset: str) -> dict[int, tuple[str, str]]:
    rows = db.execute("SELECT line, field, reason FROM quarantine WHERE subset = ? AND scope = 'row'", [subset])
    return {n: (field, reason) for n, field, reason in rows.fetchall()}


def kept_lines(db, subset: str) -> list[int]:
    return [n for (n,) in db.execute("SELECT line FROM queries WHERE subset = ? ORDER BY line", [subset]).fetchall()]


# (name, the bad line, field, reason fragment): each is written between two good lines
BAD_LINES = [
    ("lone surrogate", b'{"query": "q \\ud800", "pos": ["a"], "neg": ["b"]}', "line", "lone surrogate escape"),
    ("nested 5,000 deep", b'{"query": ' + b"[" * 5000 + b"]" * 5000 + b"}", "line", "nested too deeply"),
    ("duplicate key", b'{"query": "q", "pos": ["a"], "neg": ["b"], "neg": ["c"]}', "neg", "duplicate key 'neg'"),
    ("NaN score", line(good(9, neg_scores=[0.5, float("nan")])), "neg_scores[1]", "finite number"),
    ("Infinity score", line(good(9, pos_scores=[float("inf")])), "pos_scores[0]", "finite number"),
    ("a JSON array", b'["q", ["a"], ["b"]]', "row", "expected a JSON object, got list"),
    ("a bare number", b"42", "row", "expected a JSON object, got int"),
    ("a huge passage", line(good(9, neg=["x" * 2_000, "y"])), "neg[0]", "too_large: 2000 characters"),
    ("a huge line", line(good(9, pos=["z" * 25_000])), "line", "too_large: 250"),
    ("a null query", b'{"query": null, "pos": ["a"], "neg": ["b"]}', "query", "valid string"),
    ("whitespace query", line(good(9, query="  \t ")), "query", "empty text"),
    ("a number as passage", b'{"query": "q", "pos": [3], "neg": ["b"]}', "pos[0]", "valid string"),
    ("NUL character", line(good(9, neg=["a\x00b"])), "neg[0]", "control character U+0000"),
]


@pytest.mark.parametrize("kind,bad,field,reason", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_a_bad_line_is_quarantined_with_its_reason_and_the_others_are_kept(tmp_path, db, kind, bad, field, reason):
    path = tmp_path / "t.jsonl"
    path.write_bytes(line(good(1)) + b"\n" + bad + b"\n" + line(good(2)) + b"\n")
    limits = Limits(max_line_bytes=20_000, max_text_chars=1_000)
    stats = ingest(db, "t", SourceEntry(name="t", format="bge", path=path), limits=limits)
    assert kept_lines(db, "t") == [1, 3]
    assert stats.lines == 3 and stats.quarantined_rows == 1
    got_field, got_reason = quarantined(db, "t")[2]
    assert got_field == field and reason in got_reason, (got_field, got_reason)


def test_a_utf8_byte_order_mark_costs_no_row(tmp_path, db):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line(good(1)) + b"\n" + line(good(2)) + b"\n")
    stats = ingest(db, "bom", SourceEntry(name="bom", format="bge", path=path))
    assert stats.queries == 2 and stats.quarantined_rows == 0


def test_a_too_large_line_is_never_held_whole(tmp_path, db):
    """A 40 MB line with a 1 MB limit: quarantined with its size, its raw text kept only as a preview."""
    path = tmp_path / "big.jsonl"
    with path.open("wb") as fh:
        fh.write(line(good(1)) + b"\n")
        fh.write(b'{"query": "q", "pos": ["' + b"a" * 40_000_000 + b'"], "neg": ["b"]}\n')
        fh.write(line(good(2)) + b"\n")
    ingest(db, "big", SourceEntry(name="big", format="bge", path=path), limits=Limits(max_line_bytes=1_000_000))
    assert kept_lines(db, "big") == [1, 3]
    assert quarantined(db, "big")[2] == (
        "line",
        "too_large: 40000042 bytes, over the 1000000-byte line limit (max_line_bytes)",
    )
    assert len(db.execute("SELECT raw FROM quarantine WHERE subset = 'big'").fetchone()[0]) <= 2_000


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".gz", ".jsonl"])
def test_gzip_files_are_read_directly(tmp_path, db, suffix):
    path = tmp_path / f"t{suffix}"
    path.write_bytes(gzip.compress(line(good(1)) + b"\n" + line(good(2)) + b"\n"))
    stats = ingest(db, "gz", SourceEntry(name="gz", format="bge", path=path))
    assert stats.queries == 2 and stats.quarantined_rows == 0


def _zip(data: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("t.jsonl", data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _incompressible_lines(n: int) -> bytes:
    import random

    rng = random.Random(0)
    return b"".join(line(good(i, query=f"{rng.getrandbits(128):x}")) + b"\n" for i in range(n))


WHOLE_FILE = [
    ("bzip2", bz2.compress, "a bzip2-compressed file"),
    ("xz", lzma.compress, "a xz-compressed file"),
    ("zip", lambda d: _zip(_incompressible_lines(500)), "a zip-compressed file"),
    ("UTF-16", lambda d: d.decode().encode("utf-16"), "UTF-16-encoded text; convert it to UTF-8"),
    ("binary", lambda d: bytes(range(256)) * 64, "binary data"),
    ("Latin-1", lambda d: "\n".join(f'{{"query": "caf\u00e9 {i}"}}' for i in range(9)).encode("latin-1"), "not UTF-8"),
    ("truncated gzip", lambda d: gzip.compress(_incompressible_lines(4000))[:60_000], "unreadable after line"),
]


@pytest.mark.parametrize("kind,encode,message", WHOLE_FILE, ids=[w[0] for w in WHOLE_FILE])
def test_a_file_that_is_not_utf8_json_lines_is_named_once_and_keeps_the_stored_rows(
    tmp_path, db, kind, encode, message
):
    path = tmp_path / "t.jsonl"
    path.write_bytes(line(good(1)) + b"\n")
    entry = SourceEntry(name="t", format="bge", path=path)
    ingest(db, "t", entry)
    path.write_bytes(encode(line(good(1)) + b"\n" + line(good(2)) + b"\n"))
    with pytest.raises(SourceError, match=f"source 't': .*t.jsonl: .*{message}"):
        ingest(db, "t", entry)
    assert kept_lines(db, "t") == [1]
    assert quarantined(db, "t") == {}


def test_a_file_with_no_valid_row_keeps_the_stored_rows_and_says_why(tmp_path, db):
    path = tmp_path / "passwd.jsonl"
    path.write_text(line(good(1)).decode() + "\n")
    entry = SourceEntry(name="p", format="bge", path=path)
    ingest(db, "p", entry)
    path.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    with pytest.raises(
        NoValidRows, match=r"none of its 2 lines is a valid row \(2 x malformed JSON.*stored rows are kept"
    ):
        ingest(db, "p", entry)
    assert kept_lines(db, "p") == [1]


def test_a_broken_registry_entry_fails_only_its_own_partition(tmp_path, monkeypatch):
    rows = tmp_path / "ok.jsonl"
    rows.write_text(line(good(1)).decode() + "\n")
    monkeypatch.setenv("ARHN_SECRET_DIR", str(tmp_path))
    registry_file = write_registry(
        tmp_path / "sources.yaml",
        {
            "ok": {"format": "bge", "path": "${ARHN_SECRET_DIR}/ok.jsonl"},
            "misspelt": {"format": "bgee", "path": str(rows)},
            "unset": {"format": "bge", "path": "${ARHN_NOT_SET_ANYWHERE}/x.jsonl"},
            "not_a_mapping": "just a string",
            "both": {"format": "bge", "path": str(rows), "hub": {"dataset": "x"}},
        },
    )
    registry = load_registry(registry_file)
    assert list(registry) == ["ok"]
    assert sorted(registry.names()) == ["both", "misspelt", "not_a_mapping", "ok", "unset"]
    assert "entry 'misspelt': format: Input should be 'bge' or 'tevatron' (got 'bgee')" in registry.problems["misspelt"]
    assert "unset variable in path '${ARHN_NOT_SET_ANYWHERE}/x.jsonl'" in registry.problems["unset"]
    assert "expected a mapping of settings, got str" in registry.problems["not_a_mapping"]
    assert "exactly one of `path` or `hub`" in registry.problems["both"]
    # the expanded value never shows: logs and metadata name the entry's path as written
    assert registry["ok"].location == "${ARHN_SECRET_DIR}/ok.jsonl"
    assert str(tmp_path) not in registry["ok"].location
    with pytest.raises(Exception, match="format: Input should be"):
        registry.entry("misspelt")


def test_the_cli_names_a_broken_registry_and_a_missing_database_in_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from arhn_pipeline.cli import main

    monkeypatch.setenv("ARHN_VAR_DIR", str(tmp_path / "not" / "made" / "yet"))
    monkeypatch.setenv("ARHN_DB", str(tmp_path / "not" / "made" / "yet" / "arhn.duckdb"))
    result = CliRunner().invoke(main, ["qualify"])
    assert result.exit_code == 1 and "no pipeline database at" in result.output and result.exception is not None
    assert "Traceback" not in result.output

    (tmp_path / "sources.yaml").write_text("sources: [this is: not a mapping\n")
    monkeypatch.setenv("ARHN_SOURCES", str(tmp_path / "sources.yaml"))
    result = CliRunner().invoke(main, ["sources", "list"])
    assert result.exit_code == 1 and "is not valid YAML" in result.output

    write_registry(tmp_path / "sources.yaml", {"misspelt": {"format": "bgee", "path": "x.jsonl"}})
    result = CliRunner().invoke(main, ["sources", "list"])
    assert result.exit_code == 0 and "misspelt" in result.output and "[broken]" in result.output
    result = CliRunner().invoke(main, ["run", "--subset", "misspelt", "--no-train"])
    assert result.exit_code == 2 and "format: Input should be 'bge' or 'tevatron'" in result.output


# --- property test: arbitrary lines never stop the ingest, and every line is accounted for ---

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["query", "pos", "neg", "neg_scores", "qid", "x"]) | st.text(max_size=4),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)
bad_lines = st.one_of(
    st.binary(max_size=200).filter(lambda b: b"\n" not in b and b"\r" not in b),
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", errors="surrogatepass")),
    st.builds(
        lambda q, p, n: line({"query": q, "pos": p, "neg": n}),
        st.text(max_size=8),
        st.lists(st.text(max_size=6), max_size=3),
        st.lists(st.text(max_size=6), max_size=3),
    ),
)


@settings(
    max_examples=int(os.environ.get("ARHN_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    derandomize=os.environ.get("CI") == "true",  # CI runs the same examples each time; runs elsewhere explore
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(lines=st.lists(bad_lines, min_size=1, max_size=12))
def test_arbitrary_lines_never_raise_and_every_line_is_kept_or_quarantined(tmp_path, db, lines):
    """The ingest keeps or quarantines every line; the one exception, by design, is a file most of whose lines
    are not UTF-8 text (named as such once): then nothing is stored."""
    path = tmp_path / "fuzz.jsonl"
    # one valid line last, so that the file always has a row to keep (a file without one is refused whole)
    path.write_bytes(b"\n".join(lines) + b"\n" + line(good(0, query="the last, valid line")) + b"\n")
    data = path.read_bytes()
    data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # a byte-order mark is not a line's content
    non_blank = [raw for raw in data.split(b"\n") if raw.strip()]
    before = db.execute("SELECT count(*) FROM quarantine WHERE subset = 'fuzz'").fetchone()[0]  # earlier examples
    try:
        stats = ingest(db, "fuzz", SourceEntry(name="fuzz", format="bge", path=path))
    except SourceError as exc:
        not_text = sum(1 for raw in non_blank if b"\x00" in raw or not _is_utf8(raw))
        damaged_gzip = path.read_bytes().startswith(b"\x1f\x8b") and "damaged gzip" in str(exc)
        assert damaged_gzip or (len(non_blank) >= 4 and not_text * 2 > len(non_blank)), exc
        assert db.execute("SELECT count(*) FROM quarantine WHERE subset = 'fuzz'").fetchone()[0] == before
        return
    folded = db.execute(
        "SELECT count(*) FROM quarantine WHERE subset = 'fuzz' AND reason LIKE 'identical repeat%'"
    ).fetchone()[0]
    assert stats.lines == len(non_blank)
    assert stats.lines == stats.queries + stats.quarantined_rows + stats.duplicate_lines
    assert len(kept_lines(db, "fuzz")) == stats.queries and folded == stats.duplicate_lines
    assert len(quarantined(db, "fuzz")) == stats.quarantined_rows + stats.duplicate_lines


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_every_stage_after_ingest_handles_an_empty_partition(tmp_path, monkeypatch):
    """A partition with no stored rows (its ingest never kept one): each later stage materializes, writes
    nothing and fails no check about its rows, with the scorer and with the LLM ranker. (`judges_qualified`
    fails as it does for any partition here: the registry has no entry with a reference.)"""
    import dagster as dg

    from arhn_pipeline_tests.conftest import one_source_pipeline, write_jsonl
    from arhn_pipeline_tests.test_arhn_pipeline import LLM_RANKER

    source = write_jsonl(tmp_path / "toy.jsonl", [good(1)])
    defs, instance = one_source_pipeline(tmp_path, monkeypatch, source, "sample_oracle")
    stages = ("snippets", "rankings", "judgments", "judge_qualification", "relabeled")
    for run_config in ({}, LLM_RANKER):
        for name in stages:
            result = dg.materialize(
                [a for a in defs.assets if a.key.to_user_string() == name],
                partition_key="toy",
                instance=instance,
                resources=defs.resources,
                run_config=run_config if name == "rankings" else {},
                raise_on_error=False,
            )
            assert result.success, name
            failed = [
                e for e in result.get_asset_check_evaluations() if not e.passed and e.check_name != "judges_qualified"
            ]
            assert not failed, (name, failed)
    import duckdb

    with duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True) as conn:
        for table in ("snippets", "rankings", "verdicts", "decisions"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0


def test_a_broken_reference_file_names_its_line_and_stops_nothing(tmp_path):
    from arhn_pipeline.agreement import ReferenceFileError, load_reference

    path = tmp_path / "labels.jsonl"
    path.write_text('{"query_id": "q1", "passage_key": "k1", "label": "false_negative"}\n{"query_id": "q2"}\n')
    with pytest.raises(ReferenceFileError, match=r"labels.jsonl line 2: not a sample_labels row \(KeyError"):
        load_reference("sample_labels", path)
    path.write_text("not json\n")
    with pytest.raises(ReferenceFileError, match=r"line 1: not a human_grades row"):
        load_reference("human_grades", path)
