"""What `arhn run` prints while its runs execute: the stages' own lines (progress, what they did) and one line
per failed step with its reason, never Dagster's event chatter or a stack trace (both stay in the run's log, in
the UI). A Dagster logger, chosen by `arhn run` in each run's config; runs started elsewhere keep Dagster's
default console logger."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

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
            record.msg, record.args = f"{step}: {meta.get('orig_message', '')}" if step else meta["orig_message"], ()
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
    handler = logging.StreamHandler(sys.stderr)
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


def route_engine_logs(path: Path) -> None:
    """vLLM's own log lines (and Python warnings) to `path` instead of the terminal. vLLM reads its logging
    configuration when it is imported, in this process and in the engine's worker processes: this sets it in the
    environment they inherit (a VLLM_LOGGING_CONFIG_PATH the user set is kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "plain"}},
        "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }
    config_path = path.with_suffix(".logging.json")
    config_path.write_text(json.dumps(config), encoding="utf-8")
    os.environ.setdefault("VLLM_LOGGING_CONFIG_PATH", str(config_path))
    logging.captureWarnings(True)
    warnings_log = logging.getLogger("py.warnings")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    warnings_log.addHandler(handler)
    warnings_log.propagate = False
    for name in ("transformers", "sentence_transformers", "torch"):  # their own loggers: load reports, hints
        lib = logging.getLogger(name)
        lib.addHandler(handler)
        lib.propagate = False
