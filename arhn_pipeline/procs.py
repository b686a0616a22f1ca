"""Process identity on Linux, without heavy imports (the engine watchdog runs on it alone)."""

from __future__ import annotations


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), which with the pid
    names one process even after the pid is reused; None when no such process exists."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]
