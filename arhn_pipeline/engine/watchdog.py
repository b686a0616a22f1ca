"""Stop an engine's processes when the process that started them ends, however it ended.

vLLM runs its engine in child processes; a parent killed with SIGKILL (or by the out-of-memory killer)
cannot stop them, and they would keep their gigabytes. `guard(children)` starts this module as a small
separate process that watches the parent: when the parent is gone it sends the children SIGTERM, then
SIGKILL after a grace period. It exits by itself once the children are gone (a normal shutdown).

    python -m arhn_pipeline.engine.watchdog PARENT_PID PARENT_START CHILD_PID:CHILD_START ...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from arhn_pipeline.procs import process_start as _start

POLL_SECONDS = 0.5
GRACE_SECONDS = 3.0


def guard(children: list[int]) -> subprocess.Popen | None:
    """Start a watchdog for `children` of this process; None when there is nothing to watch."""
    watched = [f"{pid}:{start}" for pid in children if (start := _start(pid))]
    if not watched:
        return None
    me = os.getpid()
    return subprocess.Popen(
        [sys.executable, "-m", "arhn_pipeline.engine.watchdog", str(me), _start(me) or "", *watched],
        start_new_session=True,  # a signal to the parent's process group must not reach the watchdog
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _alive(pid: int, start: str) -> bool:
    return _start(pid) == start  # a reused pid belongs to another process


def main(argv: list[str]) -> None:
    parent, parent_start = int(argv[0]), argv[1]
    children = [(int(p), s) for p, s in (item.split(":", 1) for item in argv[2:])]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        children = [(p, s) for p, s in children if _alive(p, s)]
        if not children:
            return
        if not _alive(parent, parent_start):
            break
        time.sleep(POLL_SECONDS)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in children:
            if _alive(pid, start):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and any(_alive(p, s) for p, s in children):
            time.sleep(0.1)


if __name__ == "__main__":
    main(sys.argv[1:])
