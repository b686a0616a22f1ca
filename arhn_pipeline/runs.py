"""Runs whose process died: found, marked failed with the reason, and their pool slots freed.

Dagster's run monitoring cannot tell that the process of a run started by the default run launcher or by
`execute_in_process` (what `arhn run` uses) has died, so such a run would stay STARTED and keep the
`llm_engine` slot it holds forever, blocking every later LLM step. Every run of this project records its
process (host, pid and the process's start time, so a reused pid is not mistaken for it) as run tags when
its resources start, and renews a heartbeat tag every 30 s while it runs; `reap_dead_runs` marks a STARTED
run failed when that process no longer exists (on this host) or its heartbeat stopped (a run of another
machine: the machine died) and frees the slots of every ended run. The `dead_run_sensor` calls it every 30
seconds where the daemon runs (`dagster dev`), and `arhn` calls it before it starts runs.

(Dagster's wait for a pool slot, which spins, is mended in dagster_patch.py.)
"""

from __future__ import annotations

import os
import socket
import threading
import time

import dagster as dg
from dagster._core.storage.dagster_run import FINISHED_STATUSES, DagsterRunStatus, RunsFilter

from arhn_pipeline import settings
from arhn_pipeline.procs import process_start

HOST_TAG, PID_TAG, START_TAG = "arhn/host", "arhn/pid", "arhn/pid_start"
HEARTBEAT_TAG = "arhn/heartbeat"  # seconds since the epoch, renewed every HEARTBEAT_SECONDS while the run lives
HEARTBEAT_SECONDS = 30.0


def process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), START_TAG: process_start(pid) or ""}


def record_run_process(instance: dg.DagsterInstance | None, run: dg.DagsterRun | None) -> None:
    """Tag the run with the process that executes it (called when the run's resources start), and keep its
    heartbeat while it is not finished: a run whose machine died is found by any machine's reaper."""
    if instance is None or run is None or run.tags.get(PID_TAG) == str(os.getpid()):
        return
    instance.add_run_tags(run.run_id, {**process_tags(), HEARTBEAT_TAG: f"{time.time():.3f}"})
    threading.Thread(target=_beat, args=(instance, run.run_id), name="arhn-heartbeat", daemon=True).start()


def _beat(instance: dg.DagsterInstance, run_id: str) -> None:
    every = settings.number("ARHN_HEARTBEAT_SECONDS") or HEARTBEAT_SECONDS
    while True:
        time.sleep(every)
        try:
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                return
            instance.add_run_tags(run_id, {HEARTBEAT_TAG: f"{time.time():.3f}"})
        except Exception:  # noqa: BLE001 (a heartbeat missed is retried; the run itself goes on)
            continue


def _process_gone(tags: dict[str, str]) -> str | None:
    """Why the run's recorded process is gone, or None while it runs. On this host: its process is checked. On
    another: its heartbeat, older than ARHN_HEARTBEAT_LIMIT_SECONDS means its machine (or process) died."""
    if tags.get(HOST_TAG) != socket.gethostname():
        beat = tags.get(HEARTBEAT_TAG)
        limit = settings.number("ARHN_HEARTBEAT_LIMIT_SECONDS") or 600.0
        silent = time.time() - float(beat) if beat else 0.0
        if silent > limit:
            return f"its heartbeat from {tags.get(HOST_TAG)} stopped {silent:.0f} s ago (limit {limit:.0f} s)"
        return None
    if not tags.get(PID_TAG):
        return None
    pid = int(tags[PID_TAG])
    start = process_start(pid)
    if start is None:
        return f"its process (pid {pid} on {tags[HOST_TAG]}) no longer exists"
    if tags.get(START_TAG) and start != tags[START_TAG]:
        return f"its process (pid {pid} on {tags[HOST_TAG]}) ended; the pid now belongs to another process"
    return None


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark every STARTED run whose process is gone as failed (with the reason) and free the pool slots
    of every ended run; return a line per run handled."""
    done = []
    records = instance.get_run_records(
        filters=RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING])
    )
    for record in records:
        run = record.dagster_run
        why = _process_gone(dict(run.tags))
        if why is None:
            continue
        message = f"Run {run.run_id} failed: {why} (killed or crashed); its pool slots are freed"
        instance.report_run_failed(run, message)
        done.append(message)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holders = storage.get_concurrency_run_ids()
        if holders:
            ended = instance.get_run_records(filters=RunsFilter(run_ids=list(holders), statuses=FINISHED_STATUSES))
            for record in ended:
                freed = storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
                if freed:
                    done.append(f"freed the pool slots of ended run {record.dagster_run.run_id}")
    return done


@dg.sensor(
    name="dead_run_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks runs whose process died (kill -9, out of memory) as failed and frees their pool slots.",
)
def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    handled = reap_dead_runs(context.instance)
    for line in handled:
        context.log.info(line)
    return dg.SkipReason("; ".join(handled) or "no run whose process died")
