"""The project's one change to Dagster's internals (dagster_patch.py) still fits and is still needed: these fail
when an upgraded Dagster has fixed the spinning wait for a pool slot (remove the patch) or no longer has what
the patch replaces (re-read Dagster's code before extending FITS)."""

from __future__ import annotations

import time
from collections import defaultdict

import dagster as dg

from arhn_pipeline import dagster_patch


def _context_with_a_claim_due_in(seconds: float):
    from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

    context = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    context._pending_claims = {"snippets"}
    context._pending_timeouts = defaultdict(float, {"snippets": time.time() + seconds})
    return context


def test_the_patch_is_written_for_this_dagster_and_what_it_replaces_is_there():
    from dagster._core.execution.plan.active import ActiveExecution
    from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

    assert dagster_patch.fits(), f"Dagster {dg.__version__} is not one of {dagster_patch.FITS}: re-read the patch"
    assert callable(ActiveExecution.sleep_til_ready)
    assert callable(InstanceConcurrencyContext.interval_to_next_pending_claim_check)
    assert not dagster_patch.fits("1.14.0")


def test_dagster_still_spins_while_waiting_for_a_slot_and_the_patched_wait_sleeps():
    """Dagster's own computation (kept on the class before the patch) returns no sleep for a claim due in 5 s;
    the patched one sleeps until it is due."""
    from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

    dagster_patch.sleep_while_waiting_for_slots()
    own = dagster_patch.DAGSTERS_OWN["interval_to_next_pending_claim_check"]
    context = _context_with_a_claim_due_in(5.0)
    assert own(context) == 0.0, "Dagster no longer spins while waiting for a slot: remove dagster_patch.py"
    assert 4.0 < InstanceConcurrencyContext.interval_to_next_pending_claim_check(context) <= 5.0
