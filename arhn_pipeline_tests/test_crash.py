"""A crash frees what it held: `arhn run` killed with SIGKILL while it holds the engine pool's slot leaves a
STARTED run and a held slot behind; the next `arhn` command marks that run failed with the reason and frees
the slot, and its own run completes. A run waiting for the slot sleeps (it does not spin a core) and stops on
SIGTERM. With the real engine: vLLM's processes end within ten seconds of their parent's SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from arhn_pipeline.procs import alive, descendants, stat
from arhn_pipeline.runs import PID_TAG
from arhn_pipeline_tests.conftest import PROJECT

ARHN = Path(sys.executable).parent / "arhn"


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def run_env(**extra) -> dict[str, str]:
    return dict(os.environ, ARHN_ENGINE="scripted", ARHN_SCRIPT="sample_oracle", **extra)


def start_run(subset: str, latency: float, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [ARHN, "run", "--subset", subset, "--no-train"],
        env=run_env(ARHN_SCRIPT_LATENCY=str(latency)),
        cwd=PROJECT,
        start_new_session=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def pool(instance: dg.DagsterInstance):
    return instance.event_log_storage.get_concurrency_info("llm_engine")


def wait_for(condition, what: str, seconds: float = 240):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def cpu_seconds(pid: int) -> float:
    found = stat(pid)
    assert found is not None, f"process {pid} is gone"
    return found.cpu_ticks / os.sysconf("SC_CLK_TCK")


def test_a_killed_run_is_marked_failed_and_frees_the_engine_slot(home, tmp_path):
    instance = dg.DagsterInstance.get()
    first = start_run("sample_geo", latency=5.0, log=tmp_path / "first.log")
    held = wait_for(lambda: pool(instance).claimed_slots, "the first run to hold the engine slot")
    dead_run = held[0].run_id
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.STARTED  # what a kill leaves
    assert instance.get_run_by_id(dead_run).tags[PID_TAG] == str(first.pid)
    assert pool(instance).active_run_ids == {dead_run}

    second = subprocess.run(
        [ARHN, "run", "--subset", "sample_geo", "--no-train"],
        env=run_env(),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert f"Run {dead_run} failed: its process (pid {first.pid}" in second.stderr
    dead = instance.get_run_by_id(dead_run)
    assert dead.status == dg.DagsterRunStatus.FAILURE
    failure = instance.all_logs(dead_run, of_type=dg.DagsterEventType.RUN_FAILURE)[-1]
    assert "no longer exists (killed or crashed)" in failure.message
    assert not pool(instance).claimed_slots and not pool(instance).pending_steps


def test_a_run_waiting_for_the_slot_sleeps_and_stops_on_sigterm(home, tmp_path):
    instance = dg.DagsterInstance.get()
    holder = start_run("sample_geo", latency=30.0, log=tmp_path / "holder.log")
    try:
        wait_for(lambda: pool(instance).claimed_slots, "the first run to hold the engine slot")
        waiter = start_run("sample_bio", latency=0.0, log=tmp_path / "waiter.log")
        wait_for(lambda: pool(instance).pending_steps, "the second run to wait for the slot")
        cpu_before, wall_before = cpu_seconds(waiter.pid), time.monotonic()
        time.sleep(15)
        busy = (cpu_seconds(waiter.pid) - cpu_before) / (time.monotonic() - wall_before)
        # spinning took 97-99% of a core; polling the pool (each waiting step claims about once a second,
        # with events written each time) takes a few to 30% on 2 loaded cores
        assert busy < 0.5, f"a run waiting for the slot used {busy:.0%} of a core"
        waiter.send_signal(signal.SIGTERM)
        try:
            waiter.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(waiter.pid, signal.SIGKILL)
            raise AssertionError("a run waiting for the slot ignored SIGTERM") from None
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    from arhn_pipeline.runs import reap_dead_runs

    reap_dead_runs(instance)
    assert not pool(instance).claimed_slots
    statuses = {r.status for r in instance.get_runs()}
    assert dg.DagsterRunStatus.STARTED not in statuses, statuses


@pytest.mark.vllm
@pytest.mark.parametrize("when", ["after_a_batch", "during_start_up"])
def test_vllm_processes_end_with_their_parent(tmp_path, when):
    """A process that started the real engine is killed with SIGKILL (after answering a batch, or while the
    engine is still starting): within ten seconds no process it started is left."""
    script = (
        "import sys\n"
        "from arhn_pipeline.engine.vllm_engine import VLLMEngine\n"
        "from arhn_pipeline.engine.base import LLMRequest, Sampling\n"
        "engine = VLLMEngine()\n"
        "engine._dtype\n"
        "print('STARTING', flush=True)\n"
        "engine.generate([LLMRequest(messages=(('user', 'Say yes.'),), template='t', template_version='1',"
        " sampling=Sampling(max_tokens=4))])\n"
        "print('ANSWERED', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=PROJECT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        marker = "ANSWERED" if when == "after_a_batch" else "STARTING"
        next(line for line in proc.stdout if line.startswith(marker))
        if when == "during_start_up":  # the watchdog and vLLM's first engine process exist, the engine is loading
            wait_for(lambda: len(descendants(proc.pid)) >= 2, "vLLM's engine process", seconds=120)
        kids = descendants(proc.pid)
        proc.kill()  # SIGKILL of the parent alone, as the out-of-memory killer would
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p) for p in kids):
            time.sleep(0.2)
        left = [p for p in kids if alive(p)]
        assert not left, f"processes left 10 s after their parent was killed: {left}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.vllm
def test_arhn_run_starts_the_engine_once_for_every_partition(home, tmp_path):
    """Two partitions with the real engine: one engine start-up in all, each partition still its own
    Dagster runs (gather_evidence, decide) with its own materializations."""
    from arhn_pipeline_tests.conftest import write_jsonl, write_registry

    entries = {}
    for name in ("lakes", "hills"):
        rows = [
            {
                "query_id": f"{name}{i}",
                "query": f"where are {name} {i}",
                "pos": [f"{name} {i} lie here."],
                "neg": [f"Nothing about {name} {i}.", f"Another text {i}."],
            }
            for i in range(2)
        ]
        entries[name] = {"format": "bge", "path": str(write_jsonl(tmp_path / f"{name}.jsonl", rows))}
    env = dict(os.environ, ARHN_ENGINE="vllm", ARHN_SOURCES=str(write_registry(tmp_path / "sources.yaml", entries)))
    result = subprocess.run(
        [ARHN, "run", "--subset", "lakes", "--subset", "hills", "--no-train"],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # the engine's lines are in the run's log file, which the run names at its end
    log = Path(result.stdout.split("Log of this run (Dagster's events, the engine's lines): ")[1].split()[0])
    assert log.read_text(encoding="utf-8").count("vLLM engine started in") == 1, result.stdout[-4000:]
    assert "vLLM engine started in" not in result.stdout + result.stderr  # not on the terminal
    instance = dg.DagsterInstance.get()
    for asset in ("snippets", "relabeled"):
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) >= {"lakes", "hills"}, asset
    assert "snippets: 6/6 new calls answered" in result.stderr  # progress, in the terminal


def _started_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> str:
    import uuid

    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

    run_id = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="gather_evidence", run_id=run_id, status=DagsterRunStatus.STARTED, tags=tags))
    return run_id


def test_a_run_whose_machine_died_is_failed_by_another_hosts_reaper_once_its_heartbeat_stops(home, monkeypatch):
    """Two STARTED runs recorded by a machine that is not this one, each holding an engine slot: the one whose
    heartbeat stopped longer ago than the limit is failed and its slot freed; the beating one is left alone."""
    from arhn_pipeline import runs

    monkeypatch.setenv("ARHN_HEARTBEAT_LIMIT_SECONDS", "300")
    instance = dg.DagsterInstance.get()
    other = {runs.HOST_TAG: "gpu-node-7.cluster.example", runs.PID_TAG: "4242", runs.START_TAG: "1"}
    dead = _started_run(instance, {**other, runs.HEARTBEAT_TAG: f"{time.time() - 900:.0f}"})
    alive = _started_run(instance, {**other, runs.HEARTBEAT_TAG: f"{time.time() - 20:.0f}"})
    storage = instance.event_log_storage
    storage.set_concurrency_slots("llm_engine", 2)
    for run_id in (dead, alive):
        assert storage.claim_concurrency_slot("llm_engine", run_id, "snippets").is_claimed
    handled = runs.reap_dead_runs(instance)
    assert any(dead in line and "heartbeat from gpu-node-7.cluster.example stopped" in line for line in handled)
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(alive).status == dg.DagsterRunStatus.STARTED
    assert storage.get_concurrency_run_ids() == {alive}  # the dead machine's slot is free


def test_a_live_run_renews_its_heartbeat_until_it_ends(home, monkeypatch):
    from dagster._core.storage.dagster_run import DagsterRunStatus

    from arhn_pipeline import runs

    monkeypatch.setenv("ARHN_HEARTBEAT_SECONDS", "0.2")
    instance = dg.DagsterInstance.get()
    run_id = _started_run(instance, {})
    runs.record_run_process(instance, instance.get_run_by_id(run_id))
    first = float(instance.get_run_by_id(run_id).tags[runs.HEARTBEAT_TAG])
    time.sleep(1.5)
    assert float(instance.get_run_by_id(run_id).tags[runs.HEARTBEAT_TAG]) > first
    instance.report_run_failed(instance.get_run_by_id(run_id), "ended")
    time.sleep(0.6)
    ended = instance.get_run_by_id(run_id).tags[runs.HEARTBEAT_TAG]
    time.sleep(1.0)
    assert instance.get_run_by_id(run_id).tags[runs.HEARTBEAT_TAG] == ended
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
