"""What every `arhn` command shares: the pipeline's DuckDB file and the Dagster instance (terminal tables are
markdown.text_table). No command lives here (cli.py and review/command.py hold them)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import click

from arhn_pipeline import settings


def dagster_instance():
    """The persistent Dagster instance the UI reads: DAGSTER_HOME, by default var/dagster with the
    project's dagster.yaml linked in."""
    import dagster as dg

    from arhn_pipeline.runs import reap_dead_runs

    home = settings.dagster_home()
    os.environ.setdefault("DAGSTER_HOME", str(home))
    with _first_use_lock(home):  # several first runs at once: the instance's storage is made by one of them
        instance = dg.DagsterInstance.get()
        instance.get_runs(limit=1)  # run storage
        instance.get_dynamic_partitions("subset")  # event log storage
        instance.all_instigator_state()  # schedule storage
    for line in reap_dead_runs(instance):  # a killed earlier run must not hold the engine's slot
        click.echo(line, err=True)
    return instance


@contextmanager
def _first_use_lock(folder: Path):
    """An exclusive lock on a file in `folder` while the state in it is opened (and, the first time, made)."""
    import fcntl

    with open(folder / ".arhn-init.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_db(read_only: bool = False):
    """The pipeline's tables (the DuckDB file, or DuckLake when ARHN_STORAGE says so); on the file, waits (and
    says so) while a run is writing to it."""
    from arhn_pipeline.storage import from_env
    from arhn_pipeline.store import connect

    path = settings.db_path()
    if read_only and not path.exists() and not from_env().is_lake:
        raise click.ClickException(f"no pipeline database at {path} yet: run `arhn run` (or materialize in the UI)")
    return connect(str(path), read_only=read_only, on_wait=lambda m: click.echo(m, err=True))
