"""A throw-away PostgreSQL server on 127.0.0.1, in a temporary folder (Debian's `postgresql` package: initdb and
pg_ctl), for the DuckLake tests and bench/scale.py.

PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user the package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def binaries() -> Path | None:
    """The folder of initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """`with PostgresServer() as pg:` a running server in a new temporary folder (removed afterwards; under
    the system's temporary folder, which the `postgres` user can reach when the tests run as root);
    `pg.conninfo(dbname)` for libpq, `pg.create(dbname)` for a new database."""

    def __init__(self, user: str = "arhn"):
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.bin, self.user, self.port = bin_dir, user, _free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="arhn-pg-"))
        self.data = self.folder / "pgdata"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        out = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")

    def __enter__(self) -> PostgresServer:
        if self._as:
            shutil.chown(self.folder, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8")
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c max_connections=200 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.folder / "log"), "-w", "start"
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.create("postgres_ready_check")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(
            [*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.folder, ignore_errors=True)

    def conninfo(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={self.user}"

    def create(self, dbname: str) -> str:
        """A new database; returns its connection string."""
        import psycopg2

        conn = psycopg2.connect(self.conninfo("postgres"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{dbname}"')
        finally:
            conn.close()
        return self.conninfo(dbname)
