"""Processes on Linux, read from /proc, without heavy imports (the engine watchdog runs on this alone)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat this project reads."""

    state: str  # R, S, Z (an ended process nobody has reaped yet), ...
    ppid: int
    pgid: int
    sid: int
    cpu_ticks: int  # user + system time, in clock ticks
    start: str  # start time in clock ticks since boot: with the pid, it names one process even after reuse


def stat(pid: int) -> Stat | None:
    """The process's stat, or None when no such process exists."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except (OSError, IndexError):
        return None
    state, ppid, pgid, sid = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    return Stat(state, ppid, pgid, sid, cpu_ticks=int(fields[11]) + int(fields[12]), start=fields[19])


def process_start(pid: int) -> str | None:
    found = stat(pid)
    return None if found is None else found.start


def alive(pid: int) -> bool:
    """The process exists and has not ended (a zombie has)."""
    found = stat(pid)
    return found is not None and found.state != "Z"


def processes() -> dict[int, Stat]:
    """Every process's stat."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := stat(int(entry.name))) is not None:
            out[int(entry.name)] = found
    return out


def descendants(root: int, table: dict[int, Stat] | None = None) -> set[int]:
    """The processes `root` started, and theirs, still attached to it."""
    table = processes() if table is None else table
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, s in table.items() if s.ppid in frontier and pid not in found}
        found |= frontier
    return found
