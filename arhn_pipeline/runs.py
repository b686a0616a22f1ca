"""Runs whose process died: found, marked failed with the reason, and their pool slots freed.

Dagster's run monitoring cannot tell that the process of a run started by the default run launcher or by
`execute_in_process` (what `arhn run` uses) has died, so such a run would stay STARTED and keep the
`llm_engine` slot it holds forever, blocking every later LLM step. Every run of this project records its
process (host, pid and the process's start time, so a reused pid is not mistaken for it) as run tags when
its resources start; `reap_dead_runs` marks a STARTED run failed when that process no longer exists and
frees the slots of every ended run. The `dead_run_sensor` calls it every 30 seconds where the daemon runs
(`dagster dev`), and `arhn` calls it before it starts runs.

Also here: Dagster 1.13's wait for a pool slot computes its sleep as `min(0, ...)`, i.e. never sleeps, so a
step waiting for the slot spins a core at 100% (dagster-io/dagster#20367 describes the same bug);
`sleep_while_waiting_for_slots` makes it sleep until the next check is due.
"""

from __future__ import annotations

import os
import socket
import time

import dagster as dg
from dagster._core.storage.dagster_run import FINISHED_STATUSES, DagsterRunStatus, RunsFilter

from arhn_pipeline.procs import process_start

HOST_TAG, PID_TAG, START_TAG = "arhn/host", "arhn/pid", "arhn/pid_start"


def process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), START_TAG: process_start(pid) or ""}


def record_run_process(instance: dg.DagsterInstance | None, run: dg.DagsterRun | None) -> None:
    """Tag the run with the process that executes it (called when the run's resources start)."""
    if instance is None or run is None or run.tags.get(PID_TAG) == str(os.getpid()):
        return
    instance.add_run_tags(run.run_id, process_tags())


def _process_gone(tags: dict[str, str]) -> str | None:
    """Why the run's recorded process is gone, or None while it runs (or when it ran on another host)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG):
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


def sleep_while_waiting_for_slots() -> None:
    """Make a step that waits for a pool slot sleep until its next claim is due instead of spinning, and
    stop on SIGTERM / SIGINT while it waits (Dagster only records a signal there and acts on it once the step
    starts, i.e. once another run frees the slot)."""
    from dagster._core.errors import DagsterExecutionInterruptedError
    from dagster._core.execution.plan.active import ActiveExecution
    from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
    from dagster._utils.interrupts import check_captured_interrupt

    if getattr(InstanceConcurrencyContext, "_arhn_sleeps", False):
        return
    sleep_til_ready = ActiveExecution.sleep_til_ready

    def sleep_or_stop(self: ActiveExecution) -> None:
        slots = self._instance_concurrency_context
        if slots is not None and slots.has_pending_claims() and check_captured_interrupt():
            raise DagsterExecutionInterruptedError("interrupted while waiting for a pool slot")
        sleep_til_ready(self)

    ActiveExecution.sleep_til_ready = sleep_or_stop  # type: ignore[method-assign]

    def interval_to_next_pending_claim_check(self) -> float:
        if not self._pending_claims or not self._pending_timeouts:
            return 0.0
        return max(0.0, min(self._pending_timeouts.values()) - time.time())

    InstanceConcurrencyContext.interval_to_next_pending_claim_check = interval_to_next_pending_claim_check  # type: ignore[method-assign]
    InstanceConcurrencyContext._arhn_sleeps = True  # type: ignore[attr-defined]
