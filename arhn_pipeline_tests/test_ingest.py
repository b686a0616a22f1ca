"""raw_triplets ingest into a real DuckDB file: formats, bad input, idempotency."""

import json
import os
import subprocess
import sys

import pytest

from arhn_pipeline.raw_triplets.ingest import STAGING_PREFIX, ingest
from arhn_pipeline.sources.readers import SourceError
from arhn_pipeline.sources.registry import SourceEntry, load_registry
from arhn_pipeline_tests.conftest import PROJECT, write_jsonl, write_registry


def entry(path, fmt="bge", name="t"):
    return SourceEntry(name=name, format=fmt, path=path)


def good(i, **over):
    row = {"query": f"question {i}", "pos": [f"answer passage {i}"], "neg": [f"other {i} a", f"other {i} b"]}
    row.update(over)
    return row


def counts(db, subset):
    return {
        t: db.execute(f"SELECT count(*) FROM {t} WHERE subset = ?", [subset]).fetchone()[0]
        for t in ("queries", "candidates", "quarantine")
    }


def test_embedded_samples_ingest_completely(db):
    registry = load_registry(PROJECT / "sources.yaml")
    for name in ("sample_geo", "sample_bio", "sample_fin"):
        stats = ingest(db, name, registry[name])
        assert stats.queries == 16 and stats.negatives == 160 and stats.quarantined_rows == 0
    # passages shared between queries are stored once
    assert db.execute("SELECT count(*) FROM passages").fetchone()[0] == 114


def test_planted_bad_lines_are_each_quarantined_with_reason_and_good_lines_kept(tmp_path, db):
    lines = [
        json.dumps(good(1)),
        '{"query": "truncated", "pos": ["a"], "neg": ["b"',  # malformed JSON
        json.dumps({"pos": ["a"], "neg": ["b"]}),  # missing query
        json.dumps(good(2, pos=[])),  # empty pos
        json.dumps(good(3, neg="b")),  # neg not a list
        json.dumps(good(4)),
        json.dumps(good(5, neg=["x\x07y"])),  # control character
        json.dumps(good(6, neg=[])),  # empty negative list
        json.dumps(good(1, neg=["different"])),  # duplicate query id, different content
        json.dumps(good(4)),  # identical repeat: folded
        json.dumps(good(7, neg=["answer passage 7", "n7"])),  # a negative identical to the positive
        json.dumps(good(8, neg=["n8", "n8 ", "m8"])),  # a repeated negative
        json.dumps(good(9, neg=["answer passage 9"])),  # its only negative equals the positive
        json.dumps(good(10, neg_scores=[1.0])),  # scores do not match negatives
    ]
    path = tmp_path / "bad.jsonl"
    with path.open("wb") as fh:
        for i, line in enumerate(lines):
            fh.write(line.encode("utf-8") + b"\n")
            if i == 5:
                fh.write(b'{"query": "caf\xe9", "pos": ["a"], "neg": ["b"]}\n')  # Latin-1 byte: invalid UTF-8
    stats = ingest(db, "bad", entry(path))

    quarantined = db.execute(
        "SELECT line, field, reason, scope FROM quarantine WHERE subset = 'bad' ORDER BY line, field"
    ).fetchall()
    by_line = {(line, field): (reason, scope) for line, field, reason, scope in quarantined}
    expected = {
        (2, "line"): "malformed JSON",
        (3, "query"): "required field is missing",
        (4, "pos"): "at least 1",
        (5, "neg"): "valid list",
        (7, "line"): "invalid UTF-8 at byte",
        (8, "neg[0]"): "control character U+0007",
        (9, "neg"): "at least 1",
        (10, "query_id"): "different content (first at line 1)",
        (11, "row"): "identical repeat of line 6",
        (12, "pos[0]"): None,
        (13, "neg[1]"): "duplicate of neg[0]",
        (14, "neg"): "no negative left",
        (15, "row"): "neg_scores has 1 entries but neg has 2",
    }
    expected[(12, "neg[0]")] = expected.pop((12, "pos[0]"))
    expected[(12, "neg[0]")] = "negative identical to positive pos[0]"
    assert set(by_line) == set(expected)
    for key, fragment in expected.items():
        assert fragment in by_line[key][0], (key, by_line[key])
    assert by_line[(12, "neg[0]")][1] == "candidate" and by_line[(13, "neg[1]")][1] == "candidate"

    assert stats.lines == 15
    assert stats.quarantined_rows == 10 and stats.duplicate_lines == 1 and stats.duplicate_passages == 2
    kept = db.execute("SELECT text FROM queries WHERE subset = 'bad' ORDER BY line").fetchall()
    assert [k[0] for k in kept] == ["question 1", "question 4", "question 7", "question 8"]
    negs = db.execute(
        "SELECT p.text FROM candidates c JOIN passages p USING (passage_id) JOIN queries q USING (subset, query_id) "
        "WHERE c.subset = 'bad' AND q.text = 'question 8' AND role = 'negative' ORDER BY original_rank"
    ).fetchall()
    assert [n[0] for n in negs] == ["n8", "m8"]
    # the raw line is kept for inspection, byte errors shown as replacement characters
    raw = db.execute("SELECT raw FROM quarantine WHERE subset = 'bad' AND line = 7").fetchone()[0]
    assert raw.startswith('{"query": "caf\ufffd"')


def test_rematerializing_replaces_rows_exactly_and_leaves_other_partitions(tmp_path, db):
    a = write_jsonl(tmp_path / "a.jsonl", [good(i) for i in range(5)])
    b = write_jsonl(tmp_path / "b.jsonl", [good(i) for i in range(3)] + ["not json"])
    ingest(db, "a", entry(a))
    ingest(db, "b", entry(b))
    before = (counts(db, "a"), counts(db, "b"))
    ingest(db, "a", entry(a))
    ingest(db, "a", entry(a))
    assert (counts(db, "a"), counts(db, "b")) == before
    assert before[0] == {"queries": 5, "candidates": 15, "quarantine": 0}
    write_jsonl(a, [good(i) for i in range(2)])
    ingest(db, "a", entry(a))
    assert counts(db, "a") == {"queries": 2, "candidates": 6, "quarantine": 0}
    assert counts(db, "b") == before[1]


def test_failed_ingest_keeps_previous_rows(tmp_path, db):
    a = write_jsonl(tmp_path / "a.jsonl", [good(i) for i in range(3)])
    ingest(db, "a", entry(a))
    a.write_text("")
    with pytest.raises(SourceError, match=r"file is empty: .*a\.jsonl"):
        ingest(db, "a", entry(a))
    assert counts(db, "a")["queries"] == 3


def test_staged_rows_leave_no_file_behind_and_a_killed_ingests_are_removed(tmp_path, db):
    temp = tmp_path / "arhn.duckdb.tmp"  # DuckDB's temporary directory for this database file
    a = write_jsonl(tmp_path / "a.jsonl", [good(i) for i in range(5)] + ["not json"])
    ingest(db, "a", entry(a))
    assert counts(db, "a") == {"queries": 5, "candidates": 15, "quarantine": 1}
    assert not temp.exists()  # made for the staged rows, removed with them
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = temp / f"{STAGING_PREFIX}{int(gone.stdout)}-killed"  # left by an ingest whose process has ended
    orphan.mkdir(parents=True)
    (orphan / "candidates-000001.parquet").write_bytes(b"PAR1")
    running = temp / f"{STAGING_PREFIX}{os.getppid()}-running"  # another ingest, still going
    running.mkdir()
    b = write_jsonl(tmp_path / "b.jsonl", [good(i) for i in range(3)])
    ingest(db, "b", entry(b))
    assert sorted(p.name for p in temp.iterdir()) == [running.name]
    b.write_text("not json\n")
    with pytest.raises(SourceError, match="none of its 1 lines is a valid row"):
        ingest(db, "b", entry(b))
    assert sorted(p.name for p in temp.iterdir()) == [running.name]
    assert counts(db, "b") == {"queries": 3, "candidates": 9, "quarantine": 0}
    assert db.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '_stage_%'").fetchone() == (0,)


def test_missing_file_is_a_clear_error(tmp_path, db):
    with pytest.raises(SourceError, match=r"source 't': .*nope\.jsonl: file not found"):
        ingest(db, "t", entry(tmp_path / "nope.jsonl"))


def test_hub_source_is_read_through_datasets(tmp_path, db):
    rows = [
        {
            "query_id": str(i),
            "query": f"q{i}",
            "positive_passages": [{"docid": f"p{i}", "title": "", "text": f"pos {i}"}],
            "negative_passages": [{"docid": f"n{i}", "title": "", "text": f"neg {i}"}],
            "subset": "fiqa" if i % 2 else "nq",
        }
        for i in range(6)
    ]
    data = write_jsonl(tmp_path / "hub.jsonl", rows)
    hub = {"dataset": "json", "data_files": [str(data)], "filter": {"subset": "fiqa"}}
    registry = write_registry(tmp_path / "sources.yaml", {"fiqa_part": {"format": "tevatron", "hub": hub}})
    stats = ingest(db, "fiqa_part", load_registry(registry)["fiqa_part"])
    assert stats.queries == 3
    assert {r[0] for r in db.execute("SELECT query_id FROM queries").fetchall()} == {"1", "3", "5"}


@pytest.mark.parametrize(
    ("relpath", "fmt", "queries", "negatives_per_query"),
    [
        ("samples/flagembedding/examples_finetune_embedder_example_data_retrieval_msmarco.jsonl", "bge", 10, 25),
        ("samples/flagembedding/examples_finetune_embedder_example_data_retrieval_nli.jsonl", "bge", None, 1),
        ("llm_labels/rlhn/fiqa.stage_1.gpt-4o-mini.jsonl", "tevatron", 25, 15),
        ("llm_labels/rlhn/msmarco_passage.stage_1.gpt-4o-mini.jsonl", "tevatron", 25, 25),
        ("train/scifact_train_bm25_hardneg.jsonl", "bge", 809, 15),
    ],
)
def test_real_files_from_shared_data(shared_data, db, relpath, fmt, queries, negatives_per_query):
    path = shared_data / relpath
    stats = ingest(db, "real", entry(path, fmt))
    lines = sum(1 for line in path.open("rb") if line.strip())
    assert stats.queries + stats.quarantined_rows + stats.duplicate_lines == lines
    if queries is not None:
        assert stats.queries == queries and stats.quarantined_rows == 0
    per_query = db.execute(
        "SELECT max(n), min(n) FROM (SELECT count(*) n FROM candidates WHERE role = 'negative' GROUP BY query_id)"
    ).fetchone()
    assert per_query[0] == negatives_per_query


def test_every_flagembedding_sample_is_read_or_quarantined_with_a_reason(shared_data, db):
    for path in sorted((shared_data / "samples" / "flagembedding").glob("*.jsonl")):
        stats = ingest(db, path.stem, entry(path))
        lines = sum(1 for line in path.open("rb") if line.strip())
        assert stats.queries + stats.quarantined_rows + stats.duplicate_lines == lines, path.name
        reasons = db.execute("SELECT count(*) FROM quarantine WHERE subset = ? AND reason = ''", [path.stem]).fetchone()
        assert reasons[0] == 0


def test_limit_reads_a_slice(tmp_path, db):
    path = write_jsonl(tmp_path / "a.jsonl", [good(i) for i in range(10)])
    stats = ingest(db, "a", SourceEntry(name="a", format="bge", path=path, limit=4))
    assert stats.lines == 4 and stats.queries == 4
