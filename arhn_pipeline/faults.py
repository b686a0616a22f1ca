"""Named points where a fault-injection test may kill the process (SIGKILL, as the out-of-memory killer or a
`kill -9` would), to check that every such death leaves nothing that stops the next run.

    ARHN_FAULT=POINT[:N]   the Nth time (default: the first) the process reaches POINT, it kills itself

Points: ingest_batch (a batch staged, the partition not yet swapped), llm_batch (the engine answered a batch,
the answers not yet stored), stage_start (an asset begins, the ones before it materialized), table_write (a
partition's rows deleted inside their transaction, the new ones not yet written), training_step (the
retriever mid-training). Unset, each point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def point(name: str) -> None:
    from arhn_pipeline import settings

    wanted = settings.value("ARHN_FAULT")
    if not wanted:
        return
    target, _, nth = wanted.partition(":")
    if target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
