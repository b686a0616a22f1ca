"""Shared fixtures. Tests that read ../shared/data skip when it is absent, except in CI (CI=true), where
its absence fails them; tests that need the real vLLM engine share one engine per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest

from arhn_pipeline import settings
from arhn_pipeline.schema import create_schema
from arhn_pipeline.store import DuckDBStore

PROJECT = settings.PROJECT_ROOT
# Every LLM stage through the (scripted) engine: the LLM ranker, the LLM judge alone in the cascade. Runs that
# test storage or orchestration use it, so that no CPU embedding (the shipped judge's) takes their time.
SCRIPTED_LLM_OPS = {
    "rankings": {"config": {"ranker": "llm"}},
    "judgments": {"config": {"stages": [{"name": "llm_judge", "kind": "llm"}]}},
}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = settings.shared_data_dir()
    if not path.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the shared data folder {path} is missing")
        pytest.skip(f"needs the team's shared data at {path} (absent on this machine)")
    return path


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    """Every test gets its own DuckDB file, runtime dir and registry location, and none of the caller's ARHN_*
    settings (environment or settings file); models stay shared."""
    models = settings.models_dir()  # the prepared models stay shared: read before ARHN_VAR_DIR moves
    for name in [n for n in os.environ if n.startswith("ARHN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ARHN_SETTINGS_FILE", str(tmp_path / "arhn.env"))  # none, unless a test writes it
    monkeypatch.setenv("ARHN_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("ARHN_MODELS_DIR", str(models))
    monkeypatch.setenv("ARHN_DB", str(tmp_path / "arhn.duckdb"))
    monkeypatch.setenv("ARHN_VLLM_CACHE", str(PROJECT / "var" / "vllm-cache"))
    yield


@pytest.fixture
def db(tmp_path):
    """An open connection to the test's DuckDB file, with every table made."""
    # the configuration DuckDBResource connects with: one process may hold both kinds of connection at once
    conn = duckdb.connect(str(tmp_path / "arhn.duckdb"), config={"custom_user_agent": "dagster"})
    create_schema(conn)
    yield conn
    conn.close()


@pytest.fixture
def store(tmp_path):
    """The test's DuckDB file as the pipeline's store resource (the same file `db` opens)."""
    return DuckDBStore(database=str(tmp_path / "arhn.duckdb"))


def write_jsonl(path: Path, rows: list) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
            fh.write("\n")
    return path


def stored_call_ids(db: Path) -> set[str]:
    """The keys of the answers a DuckDB file's call cache holds (none when the file is not there yet)."""
    if not db.exists():
        return set()
    with duckdb.connect(str(db), read_only=True) as conn:
        return {k for (k,) in conn.execute("SELECT call_id FROM llm_calls").fetchall()}


def write_registry(path: Path, entries: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"sources": entries}), encoding="utf-8")
    return path


def engine(script: str | None, **settings):
    """A scripted engine answering by `script`, or (None) the real vLLM engine with the packaged model."""
    from arhn_pipeline.engine.scripted import ScriptedEngine
    from arhn_pipeline.engine.vllm_engine import VLLMEngine

    return ScriptedEngine(model=script, **settings) if script else VLLMEngine(**settings)


def one_source_pipeline(tmp_path, monkeypatch, source: Path, script: str | None, name: str = "toy", load=None):
    """The shipped definitions over a registry of one BGE source, with a scripted engine answering by `script`
    (None: the real vLLM engine), and an ephemeral instance that knows the partition. `load` builds the
    definitions from an engine (default: `build_defs`)."""
    import dagster as dg

    monkeypatch.setenv(
        "ARHN_SOURCES", str(write_registry(tmp_path / "sources.yaml", {name: {"format": "bge", "path": str(source)}}))
    )
    if load is None:
        from arhn_pipeline.definitions import build_defs as load
    defs = load(engine(script))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", [name])
    return defs, instance


def labelled_entry(tmp_path: Path, name: str, rows: list, false_negatives: set[str]) -> dict:
    """A registry entry of `rows` with a reference (the samples' label format): each negative whose text starts
    with one of `false_negatives` is a false negative, every other negative a true one."""
    from arhn_pipeline.identity import passage_key

    labels = [
        {
            "query_id": row["query_id"],
            "passage_key": passage_key(neg),
            "label": "false_negative" if neg.split()[0] in false_negatives else "negative",
        }
        for row in rows
        for neg in row["neg"]
    ]
    return {
        "format": "bge",
        "path": str(write_jsonl(tmp_path / f"{name}.jsonl", rows)),
        "reference": {"format": "sample_labels", "path": str(write_jsonl(tmp_path / f"{name}.labels.jsonl", labels))},
    }


def gather_then_decide(defs, instance, names, run_config=None) -> list:
    """What `arhn run` does: every partition's evidence first, then each partition's qualification and decisions
    (so each partition with a reference can qualify the judges of the others)."""
    from arhn_pipeline.definitions import job_run_config

    results = []
    for job_name, name in [("gather_evidence", n) for n in names] + [("decide", n) for n in names]:
        job = defs.resolve_job_def(job_name)
        config = job_run_config(job, (run_config or {}).get("ops", {}))
        result = job.execute_in_process(partition_key=name, instance=instance, run_config=config)
        assert result.success
        results.append(result)
    return results
