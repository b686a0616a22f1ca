"""Stop an engine's processes when the process that started them ends, however it ended.

vLLM runs its engine in child processes; a parent killed with SIGKILL (or by the out-of-memory killer)
cannot stop them, and they would keep their gigabytes. `guard()` starts this module as a small separate
process, before the engine starts, that follows the parent: every process the parent starts from then on
(children and their children, even once re-parented) is remembered; when the parent is gone they get
SIGTERM, then SIGKILL after a grace period. `stop()` ends the watchdog when the engine is shut down.

    python -m arhn_pipeline.engine.watchdog PARENT_PID PARENT_START
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from arhn_pipeline.procs import descendants, processes
from arhn_pipeline.procs import process_start as _start

POLL_SECONDS = 0.2
GRACE_SECONDS = 3.0


def guard() -> subprocess.Popen:
    """Start a watchdog over the processes this process starts from now on."""
    me = os.getpid()
    return subprocess.Popen(
        [sys.executable, "-m", "arhn_pipeline.engine.watchdog", str(me), _start(me) or ""],
        start_new_session=True,  # a signal to the parent's process group must not reach the watchdog
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(watchdog: subprocess.Popen | None) -> None:
    """End a watchdog whose engine was shut down normally."""
    if watchdog is not None and watchdog.poll() is None:
        watchdog.terminate()
        try:
            watchdog.wait(timeout=5)
        except subprocess.TimeoutExpired:
            watchdog.kill()


def main(argv: list[str]) -> None:
    parent, parent_start = int(argv[0]), argv[1]
    me = os.getpid()
    tracked: dict[int, str] = {}
    # when the parent leads its own process group (a command started from a shell, a run process), that group
    # is its job: a process it started an instant before dying, before a poll saw it, is found there
    leader = processes().get(parent)
    own_group = leader is not None and leader.pgid == parent
    stopped = False

    def _stop(*_: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while not stopped:
        if _start(parent) != parent_start:
            break
        table = processes()
        for pid in descendants(parent, table) - {me}:
            tracked.setdefault(pid, table[pid].start)
        tracked = {p: s for p, s in tracked.items() if _start(p) == s}
        time.sleep(POLL_SECONDS)
    if stopped:
        return
    if own_group:
        for pid, found in processes().items():
            if found.pgid == parent and pid != me and pid not in tracked:
                tracked[pid] = found.start
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in tracked.items():
            if _start(pid) == start:  # a reused pid belongs to another process
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and any(_start(p) == s for p, s in tracked.items()):
            time.sleep(0.1)


if __name__ == "__main__":
    main(sys.argv[1:])
