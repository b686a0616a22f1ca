"""Kill -9 of the run process in the middle of an LLM stage, then a re-run: the stage completes, no answer
that was stored is asked again (only the batch in flight at the kill is re-sent), and no row is duplicated
or lost in any table."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from arhn_pipeline_tests.conftest import PROJECT


def batches(log):
    out = []
    for line in log.read_text().splitlines():
        if line == "start":
            out.append([])
        else:
            out[-1].append(line)
    return out


def kill_mid_snippets_then_rerun(env: dict[str, str], log: Path) -> None:
    """`slow_run` for sample_geo (1 s per batch of 16) killed with SIGKILL after its 4th batch began, then run
    again to the end; asserts that the kill landed mid-stage, the re-run succeeded, nothing answered before
    the kill was asked again, and the batch in flight was re-sent."""
    cmd = [sys.executable, "-m", "arhn_pipeline_tests.helpers.slow_run", "sample_geo", str(log)]
    proc = subprocess.Popen(
        cmd + ["1.0"],
        env=env,
        cwd=PROJECT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (log.exists() and len(batches(log)) >= 4):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = batches(log)
    assert 4 <= len(before) < 11, "the kill must land in the middle of the 11 batches"
    stored_before = {k for b in before[:-1] for k in b}  # batches answered before the one in flight

    rerun = subprocess.run(cmd + ["0"], env=env, cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = batches(log)[len(before) :]
    resent = {k for b in after for k in b}
    assert not resent & stored_before  # nothing answered before the kill was asked again
    assert resent & set(before[-1]) == set(before[-1]) - stored_before  # the batch in flight was re-sent
    assert len(stored_before | resent) == 176  # every pair asked, once before or once after


def test_kill_9_mid_stage_then_rerun_completes_without_duplicates(tmp_path):
    env = dict(os.environ, ARHN_DB=str(tmp_path / "k.duckdb"), ARHN_ENGINE="scripted")
    kill_mid_snippets_then_rerun(env, tmp_path / "sent.log")

    with duckdb.connect(str(tmp_path / "k.duckdb"), read_only=True) as conn:
        calls = conn.execute("SELECT count(*), count(DISTINCT call_id) FROM llm_calls").fetchone()
        assert calls == (176, 176)
        rows = conn.execute("SELECT count(*), count(DISTINCT (query_id, passage_id)) FROM snippets").fetchone()
        assert rows == (176, 176)
        for table, n in (("queries", 16), ("candidates", 176)):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == n
        assert conn.execute("SELECT count(*) FROM passages").fetchone()[0] == 38
        leftovers = conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '_stage_%'").fetchone()
        assert leftovers[0] == 0
