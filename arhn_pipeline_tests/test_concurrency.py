"""The webserver, a run and a reader of the DuckDB file at the same time.

DuckDB lets one process open a file for writing and, meanwhile, no other process open it at all. The
pipeline's steps therefore open the file only for short pieces of work (an LLM stage: load its pairs, look up
the call cache, store each answered batch, write its rows), never while the engine generates; readers
(`arhn explain`, `arhn export`, a notebook through `store.connect`) wait for the current piece to finish.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from arhn_pipeline.store import connect
from arhn_pipeline_tests.conftest import PROJECT
from arhn_pipeline_tests.test_cli import BIN, dagster_dev, graphql, runs


def test_a_reader_waits_for_a_writer_in_another_process_then_reads(tmp_path):
    db = tmp_path / "x.duckdb"
    holder = textwrap.dedent(
        f"""
        import duckdb, sys, time
        conn = duckdb.connect({str(db)!r})
        conn.execute("CREATE TABLE t AS SELECT 42 AS v")
        print("holding", flush=True)
        time.sleep(3)
        conn.close()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    waits = []
    with connect(str(db), read_only=True, wait_seconds=60, on_wait=waits.append) as conn:
        assert conn.execute("SELECT v FROM t").fetchone() == (42,)
    assert proc.wait(timeout=30) == 0
    assert len(waits) == 1 and "in use by another process" in waits[0]


def test_a_reader_gives_up_with_the_lock_error_after_its_wait(tmp_path):
    import duckdb

    db = tmp_path / "x.duckdb"
    holder = f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('holding', flush=True); time.sleep(20)"
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        with pytest.raises(duckdb.IOException, match="(?i)lock"):
            with connect(str(db), read_only=True, wait_seconds=0.5):
                pass
    finally:
        proc.kill()
        proc.wait()


LAUNCH = """mutation {
  launchRun(executionParams: {
    selector: {repositoryLocationName: "arhn_pipeline.definitions", repositoryName: "__repository__",
               jobName: "clean_subset"},
    executionMetadata: {tags: [{key: "dagster/partition", value: "sample_geo"}]},
    runConfigData: "%s"
  }) { __typename ... on PythonError { message } }
}"""


def test_webserver_run_and_reader_at_once(tmp_path):
    """`dagster dev` serves the UI and runs clean_subset for sample_geo (an engine that takes 1 s per batch of
    16 requests); meanwhile this process reads the DuckDB file again and again. Every read succeeds, some
    land in the middle of the snippets stage (the call table partly filled), the webserver answers
    throughout, the run succeeds, and afterwards no table has a duplicated or missing row."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    db = tmp_path / "shared.duckdb"
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        ARHN_ENGINE="scripted",
        ARHN_SCRIPT="sample_oracle",
        ARHN_SCRIPT_LATENCY="1",
        ARHN_DB=str(db),
    )
    subprocess.run([BIN / "arhn", "sources", "sync"], env=env, cwd=PROJECT, check=True, capture_output=True)
    config = json.dumps({"ops": {"snippets": {"config": {"batch_size": 16}}}}).replace('"', '\\"')
    seen_calls, reads, ui_answers = [], 0, 0
    with dagster_dev(env) as port:
        launched = graphql(port, LAUNCH % config)["data"]["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        deadline = time.monotonic() + 600
        status = "QUEUED"
        while time.monotonic() < deadline:
            status = runs(port)[0]["status"]
            ui_answers += 1
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            if db.exists():
                with connect(str(db), read_only=True, wait_seconds=120) as conn:
                    tables = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
                    if "llm_calls" in tables:
                        seen_calls.append(conn.execute("SELECT count(*) FROM llm_calls").fetchone()[0])
                    reads += 1
            time.sleep(0.3)
    assert status == "SUCCESS"
    with connect(str(db), read_only=True) as conn:
        pairs = conn.execute("SELECT count(*) FROM candidates WHERE subset = 'sample_geo'").fetchone()[0]
        calls, distinct_calls = conn.execute("SELECT count(*), count(DISTINCT call_id) FROM llm_calls").fetchone()
        for table in ("snippets", "rankings"):
            n, distinct = conn.execute(
                f"SELECT count(*), count(DISTINCT (query_id, passage_id)) FROM {table} WHERE subset = 'sample_geo'"
            ).fetchone()
            assert n == distinct == pairs, table
        decisions, distinct_decisions = conn.execute(
            "SELECT count(*), count(DISTINCT (method, query_id, passage_id)) FROM decisions WHERE subset = 'sample_geo'"
        ).fetchone()
    assert pairs == 176 and calls == distinct_calls
    assert decisions == distinct_decisions > 0
    assert reads >= 10 and ui_answers >= reads
    # the reader got in while the snippets stage was answering its batches (176 snippet calls in 11 batches)
    assert any(0 < n < pairs for n in seen_calls), seen_calls


def test_three_first_runs_started_together_on_a_new_state_folder_all_succeed(tmp_path):
    """No state folder yet: three `arhn run` at once (one partition each, one DuckDB file) each make the Dagster
    instance and the tables as they start; one makes them, the others wait for it, all three succeed."""
    var = tmp_path / "new-state"  # does not exist
    config = tmp_path / "run.yaml"
    ops = {
        "rankings": {"config": {"ranker": "llm"}},
        "judgments": {"config": {"stages": [{"name": "j", "kind": "llm"}]}},
    }
    config.write_text(json.dumps({"ops": ops}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARHN_", "DAGSTER_"))}
    env |= {"ARHN_VAR_DIR": str(var), "ARHN_MODELS_DIR": os.environ["ARHN_MODELS_DIR"], "ARHN_ENGINE": "scripted"}
    procs = [
        subprocess.Popen(
            [BIN / "arhn", "run", "--subset", subset, "--no-train", "--config", config],
            env=env,
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for subset in ("sample_geo", "sample_bio", "sample_fin")
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
        assert "Traceback" not in out
    from arhn_pipeline.store import connect

    with connect(str(var / "arhn.duckdb"), read_only=True) as conn:
        subsets = {s for (s,) in conn.execute("SELECT DISTINCT subset FROM decisions").fetchall()}
    assert subsets == {"sample_geo", "sample_bio", "sample_fin"}
