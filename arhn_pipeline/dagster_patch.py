"""The one place the project changes Dagster's internals, for the Dagster version it was written against.

Dagster 1.13's wait for a pool slot computes its sleep as `min(0, ...)`, i.e. never sleeps, so a step waiting
for the `llm_engine` slot spins a core at 100% (dagster-io/dagster#20367 describes the same bug), and a signal
that arrives while it waits is only acted on once the step starts. `sleep_while_waiting_for_slots` makes the
wait sleep until the next claim check is due and stop on SIGTERM / SIGINT. It is applied only on the Dagster
minor versions in FITS (elsewhere: a warning, Dagster left as it is); test_dagster_patch.py fails when an
upgraded Dagster no longer has the bug (remove the patch) or no longer has what the patch replaces."""

from __future__ import annotations

import time
import warnings

import dagster as dg

FITS = ("1.13.",)  # Dagster versions whose internals the patch was read against
DAGSTERS_OWN: dict[str, object] = {}  # the replaced methods, as Dagster wrote them (the test calls them)


def fits(version: str = dg.__version__) -> bool:
    return version.startswith(FITS)


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
    if not fits():
        warnings.warn(
            f"Dagster {dg.__version__}: the pool-slot wait patch (arhn_pipeline/dagster_patch.py) was written for "
            f"{', '.join(FITS)} and is not applied; check whether this version still spins while waiting",
            stacklevel=2,
        )
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

    DAGSTERS_OWN["interval_to_next_pending_claim_check"] = (
        InstanceConcurrencyContext.interval_to_next_pending_claim_check
    )
    DAGSTERS_OWN["sleep_til_ready"] = sleep_til_ready
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = interval_to_next_pending_claim_check  # type: ignore[method-assign]
    InstanceConcurrencyContext._arhn_sleeps = True  # type: ignore[attr-defined]
