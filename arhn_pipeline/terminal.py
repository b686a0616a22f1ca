"""What `arhn run` prints while its runs execute: the stages' own lines (progress, what they did) and one line
per failed step with its reason, never Dagster's event chatter or a stack trace (both stay in the run's log, in
the UI). A Dagster logger, chosen by `arhn run` in each run's config; runs started elsewhere keep Dagster's
default console logger."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import dagster as dg

TERMINAL_LOGGER = "arhn_terminal"


def error_reason(error: Any) -> str:
    """The first line of the innermost error's message (Dagster wraps user code's errors), without the
    exception's dotted class name."""
    while getattr(error, "cause", None) is not None and "Error occurred while executing" in str(error.message):
        error = error.cause
    message = (getattr(error, "message", None) or str(error)).strip().splitlines()
    first = message[0] if message else "unknown error"
    return re.sub(r"^[\w.]+(Error|Exception|Failure|Interrupt)\w*: ", "", first)


class _Lines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        meta = getattr(record, "dagster_meta", None)
        if meta is None:
            return True
        event = meta.get("dagster_event")
        step = meta.get("step_key") or ""
        if event is None:
            message = meta.get("orig_message", "")
            record.msg, record.args = (
                f"{step}: {message}" if step and not message.startswith(f"{step}:") else message,
                (),
            )
            return True
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            record.msg, record.args = f"{step} failed: {error_reason(data.error if data else None)}", ()
            return True
        return False


@dg.logger(
    config_schema=None,
    description="arhn run's terminal: the stages' lines and one line per failed step, no stack traces",
)
def terminal_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger(TERMINAL_LOGGER, level=logging.INFO)
    handler = logging.StreamHandler(TERMINAL_ERR or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_Lines())
    logger.addHandler(handler)
    return logger


def step_failures(result: Any) -> list[tuple[str, str]]:
    """(step, reason) of each failed step of an in-process run's result."""
    return [
        (e.step_key or "", error_reason(e.step_failure_data.error if e.step_failure_data else None))
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    ]


FILE_LOGGER = "arhn_file"


@dg.logger(
    config_schema={"path": dg.Field(str, description="the run's log file (appended to)")},
    description="arhn run's log file: every Dagster event at DEBUG, with the engine's own lines beside them",
)
def file_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger(FILE_LOGGER, level=logging.DEBUG)
    handler = logging.FileHandler(init_context.logger_config["path"], encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)
    return logger


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Where arhn run's own lines go while the process's stdout and stderr point at its log file (`quiet`).
TERMINAL_ERR: TextIO | None = None


@dataclass
class Terminal:
    out: TextIO
    err: TextIO


@contextlib.contextmanager
def quiet(path: Path | None) -> Iterator[Terminal]:
    """While open, file descriptors 1 and 2 of this process, and so of every process it starts (vLLM's engine
    core, its C++ and Triton warnings, tqdm bars, the trainer's prints), write to the log file `path`; the
    returned streams still reach the terminal, for the run's own lines. `path` None: nothing is redirected."""
    global TERMINAL_ERR
    if path is None:
        yield Terminal(sys.stdout, sys.stderr)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    out = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    err = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # bars into a file are noise there too
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    TERMINAL_ERR = err
    try:
        yield Terminal(out, err)
    finally:
        TERMINAL_ERR = None
        for stream in (sys.stdout, sys.stderr, out, err):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        out.close()
        err.close()
