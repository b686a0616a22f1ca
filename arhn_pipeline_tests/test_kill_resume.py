"""Kill -9 of the run process in the middle of an LLM stage, then a re-run: the stage completes, no answer
that was stored is asked again (only what the kill caught unstored is re-sent: the batch in flight, and the one
before it if its store had not ended), and no row is duplicated or lost in any table."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from arhn_pipeline_tests.conftest import PROJECT, stored_call_ids


def batches(log):
    out = []
    for line in log.read_text().splitlines():
        if line == "start":
            out.append([])
        else:
            out[-1].append(line)
    return out


def kill_mid_snippets_then_rerun(env: dict[str, str], log: Path, stored_keys: Callable[[], set[str]]) -> None:
    """`slow_run` for sample_geo (1 s per batch of 16) killed with SIGKILL after its 4th batch began, then run
    again to the end; asserts that the kill landed mid-stage, the re-run succeeded, nothing stored before the
    kill (`stored_keys`, read after it) was asked again, and everything sent but not stored was: the batch in
    flight, and the batch before it when the kill came while it was being stored (a batch is stored while the
    engine answers the next), never an earlier one."""
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
    stored = stored_keys()
    sent = {k for b in before for k in b}
    assert stored <= sent
    unstored = sent - stored
    assert set(before[-1]) <= unstored  # the batch in flight had no answer to store
    assert unstored <= set(before[-1]) | set(before[-2])  # every batch before the last two was stored

    rerun = subprocess.run(cmd + ["0"], env=env, cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = batches(log)[len(before) :]
    resent = {k for b in after for k in b}
    assert not resent & stored  # nothing stored before the kill was asked again
    assert resent & sent == unstored  # what the kill left unstored was asked again
    assert len(stored | resent) == 176  # every pair asked, once before or once after


def test_kill_9_mid_stage_then_rerun_completes_without_duplicates(tmp_path):
    env = dict(os.environ, ARHN_DB=str(tmp_path / "k.duckdb"), ARHN_ENGINE="scripted")
    kill_mid_snippets_then_rerun(env, tmp_path / "sent.log", lambda: stored_call_ids(tmp_path / "k.duckdb"))

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
