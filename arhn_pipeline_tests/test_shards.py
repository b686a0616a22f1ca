"""Sharded partitions: a registry entry with `shards: N` is N partitions, split by a hash of the query id; their
rows together are the unsharded partition's, every quarantine row is stored once, and the decisions are the
same as the unsharded partition's."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from arhn_pipeline import shards
from arhn_pipeline.raw_triplets.ingest import NoValidRows, ingest
from arhn_pipeline.schema import create_schema
from arhn_pipeline.sources.registry import RegistryError, load_registry
from arhn_pipeline_tests.conftest import (
    PROJECT,
    SCRIPTED_LLM_OPS,
    engine,
    gather_then_decide,
    write_jsonl,
    write_registry,
)

SAMPLES = PROJECT / "data" / "samples"


def sample(name: str, shards_: int | None = None) -> dict:
    entry = {
        "format": "bge",
        "path": str(SAMPLES / f"{name}.jsonl"),
        "reference": {"format": "sample_labels", "path": str(SAMPLES / "labels.jsonl")},
    }
    return {**entry, "shards": shards_} if shards_ else entry


def test_shard_keys_parse_back_and_a_query_always_lands_in_one_shard():
    assert shards.keys("msmarco_passage", 3) == [f"msmarco_passage.shard{i}of3" for i in range(3)]
    assert shards.keys("nq", None) == ["nq"]
    assert shards.parse("msmarco_passage.shard2of3") == ("msmarco_passage", 2, 3)
    assert shards.parse("msmarco_passage") is None and shards.dataset_of("nq") == "nq"
    assert shards.dataset_of("nq.shard0of2") == "nq"
    counts = [0, 0, 0, 0]
    for i in range(4000):
        s = shards.shard_of(f"q{i}", 4)
        assert s == shards.shard_of(f"q{i}", 4)
        counts[s] += 1
    assert min(counts) > 850  # about a quarter each


def test_the_registry_lists_every_shard_and_resolves_each(tmp_path):
    path = write_registry(tmp_path / "sources.yaml", {"geo": sample("sample_geo", 3), "bio": sample("sample_bio")})
    registry = load_registry(path)
    assert sorted(registry.names()) == ["bio", "geo.shard0of3", "geo.shard1of3", "geo.shard2of3"]
    assert registry.partitions(["geo", "bio"]) == ["geo.shard0of3", "geo.shard1of3", "geo.shard2of3", "bio"]
    assert registry.entry("geo.shard1of3").shard == 1 and registry.entry("bio").shard is None
    with pytest.raises(RegistryError, match="its partitions are"):
        registry.entry("geo")
    with pytest.raises(RegistryError, match="is not a partition of 'geo'"):
        registry.entry("geo.shard1of4")
    with pytest.raises(RegistryError, match="no shards"):
        registry.entry("bio.shard0of2")


def _tables(conn, subset_like: str) -> dict[str, list]:
    out = {}
    for table in ("queries", "candidates", "quarantine"):
        cols = [c for c, *_ in conn.execute(f"DESCRIBE {table}").fetchall() if c != "subset"]
        out[table] = conn.execute(
            f"SELECT {', '.join(cols)} FROM {table} WHERE subset LIKE ? ORDER BY ALL", [subset_like]
        ).fetchall()
    return out


@pytest.mark.parametrize("reader", ["columnar", "per_line"])
def test_the_shards_together_hold_exactly_the_unsharded_rows(tmp_path, reader):
    """A file with bad lines, a repeated query id (identical and conflicting) and a repeated passage: ingested
    whole and as 3 shards, the union of the shards equals the whole, each query is in the shard its id says,
    and a line quarantined before its id is known is stored once (in shard 0)."""
    rows = [json.loads(line) for line in (SAMPLES / "sample_geo.jsonl").read_text().splitlines()]
    lines = [json.dumps(r) for r in rows]
    lines += ["{not json", json.dumps({"query": "", "pos": ["a"], "neg": ["b"]}), lines[0]]
    conflicting = dict(rows[1], neg=rows[1]["neg"][:-1])
    lines += [json.dumps(conflicting), json.dumps(dict(rows[2], neg=rows[2]["neg"] + rows[2]["neg"][:1]))]
    source = write_jsonl(tmp_path / "mixed.jsonl", lines)
    registry = load_registry(
        write_registry(
            tmp_path / "sources.yaml",
            {
                "whole": {"format": "bge", "path": str(source)},
                "parts": {"format": "bge", "path": str(source), "shards": 3},
            },
        )
    )
    conn = duckdb.connect(str(tmp_path / "s.duckdb"))
    create_schema(conn)
    ingest(conn, "whole", registry.entry("whole"), reader=reader)
    for key in shards.keys("parts", 3):
        ingest(conn, key, registry.entry(key), reader=reader)
    whole, parts = _tables(conn, "whole"), _tables(conn, "parts.shard%")
    assert parts == whole
    assert len(whole["quarantine"]) >= 4
    for key in shards.keys("parts", 3):
        index = shards.parse(key)[1]
        ids = [q for (q,) in conn.execute("SELECT query_id FROM queries WHERE subset = ?", [key]).fetchall()]
        assert all(shards.shard_of(q, 3) == index for q in ids)
    unknown_id = conn.execute(
        "SELECT DISTINCT subset FROM quarantine WHERE subset LIKE 'parts.%' AND field IN ('line', 'query')"
    ).fetchall()
    assert unknown_id == [("parts.shard0of3",)]


def test_a_shard_with_no_query_says_so(tmp_path):
    source = write_jsonl(tmp_path / "one.jsonl", [{"query": "q", "pos": ["a"], "neg": ["b"]}])
    registry = load_registry(
        write_registry(tmp_path / "sources.yaml", {"one": {"format": "bge", "path": str(source), "shards": 2}})
    )
    conn = duckdb.connect(str(tmp_path / "s.duckdb"))
    create_schema(conn)
    outcomes = {}
    for key in shards.keys("one", 2):
        try:
            ingest(conn, key, registry.entry(key))
            outcomes[key] = "ok"
        except NoValidRows as exc:
            outcomes[key] = str(exc)
    assert sum(v == "ok" for v in outcomes.values()) == 1
    assert any("falls in shard" in v and "fewer queries than shards" in v for v in outcomes.values()), outcomes


def _decisions(db: Path) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as conn:
        cols = [c for c, *_ in conn.execute("DESCRIBE decisions").fetchall() if c != "subset"]
        return conn.execute(
            f"SELECT {shards.DATASET_SQL} AS dataset, {', '.join(cols)} FROM decisions ORDER BY ALL"
        ).fetchall()


def test_a_sharded_partition_gives_the_decisions_of_the_unsharded_one(tmp_path, monkeypatch):
    """The same two sub-datasets, once whole and once with geo in two shards, through every per-partition
    stage (scripted engine): the same decisions, the gate included (a shard never qualifies a judge on its own
    sub-dataset's other shard, and a sharded reference is read whole)."""
    from arhn_pipeline.definitions import build_defs
    from arhn_pipeline.store import DuckDBStore

    found = {}
    for label, geo_shards in (("whole", None), ("sharded", 2)):
        folder = tmp_path / label
        folder.mkdir()
        registry = write_registry(
            folder / "sources.yaml", {"geo": sample("sample_geo", geo_shards), "bio": sample("sample_bio")}
        )
        monkeypatch.setenv("ARHN_SOURCES", str(registry))
        keys = load_registry(registry).names()
        defs = build_defs(engine("sample_oracle"), DuckDBStore(database=str(folder / "arhn.duckdb")))
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("subset", keys)
        gather_then_decide(defs, instance, keys, {"ops": SCRIPTED_LLM_OPS})
        found[label] = _decisions(folder / "arhn.duckdb")
        with duckdb.connect(str(folder / "arhn.duckdb"), read_only=True) as conn:
            changed = conn.execute(
                f"SELECT count(*) FROM decisions WHERE {shards.DATASET_SQL} = 'geo' AND action != 'keep'"
            ).fetchone()
            assert changed is not None and changed[0] > 0  # decisions that matter, not only keeps
    assert found["sharded"] == found["whole"]
    assert any(row[0] == "geo" for row in found["whole"])
