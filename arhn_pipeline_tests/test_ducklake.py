"""DuckLake storage with a real PostgreSQL catalog (started here on 127.0.0.1 in a temporary folder): several run
processes at once against one catalog give, row for row, the tables one process gives with the DuckDB file; a
run killed mid LLM stage resumes without asking a stored key again; calls answered by two racing runs are kept
once and counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from arhn_pipeline import storage
from arhn_pipeline.store import CallRecord, DuckDBStore, connect
from arhn_pipeline_tests.conftest import PROJECT, SCRIPTED_LLM_OPS
from arhn_pipeline_tests.helpers.postgres import PostgresServer, binaries
from arhn_pipeline_tests.test_kill_resume import kill_mid_snippets_then_rerun

SAMPLES = ["sample_geo", "sample_bio", "sample_fin"]
# columns that record when or how fast, not what: left out of the row-for-row comparison
TIMING = {"created_at", "stored_at", "made_at", "batch_seconds", "failed_at", "seconds", "train_seconds", "compared_at"}


@pytest.fixture(scope="module")
def pg():
    if binaries() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is missing: scripts/setup.sh --postgres installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh --postgres)")
    with PostgresServer() as server:
        yield server


def lake_env(pg: PostgresServer, tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        ARHN_STORAGE="ducklake",
        ARHN_DUCKLAKE_CATALOG=pg.create(name),
        ARHN_DUCKLAKE_DATA=str(tmp_path / f"{name}_data"),
        ARHN_ENGINE="scripted",
        ARHN_SCRIPT="sample_oracle",
        **extra,
    )


def lake_of(env: dict[str, str]) -> storage.Storage:
    """The DuckLake catalog a run process with `env` writes to."""
    return storage.Storage("ducklake", catalog=env["ARHN_DUCKLAKE_CATALOG"], data_path=env["ARHN_DUCKLAKE_DATA"])


def run_job(job: str, partitions: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.Popen:
    config = tmp_path / "run_config.yaml"
    config.write_text(yaml.safe_dump({"ops": SCRIPTED_LLM_OPS}), encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, "-m", "arhn_pipeline_tests.helpers.run_job", job, "--config", str(config), *partitions],
        env=env,
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> tuple[float, float]:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-4000:]
    marks = dict(line.split() for line in out.splitlines() if line.startswith(("start ", "end ")))
    return float(marks["start"]), float(marks["end"])


def tables(conn: duckdb.DuckDBPyConnection, leave_out: set[str] = TIMING) -> dict[str, list[tuple]]:
    """Every table of the pipeline, its rows sorted, without the timing columns (or `leave_out`)."""
    names = [
        t
        for (t,) in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND NOT temporary"
        ).fetchall()
        if t != "schema_version"
    ]
    out = {}
    for name in names:
        cols = [c for c, *_ in conn.execute(f"DESCRIBE {name}").fetchall() if c not in leave_out]
        listed = ", ".join(f'"{c}"' for c in cols)
        out[name] = conn.execute(f"SELECT {listed} FROM {name} ORDER BY ALL").fetchall()
    return out


def test_three_runs_at_once_on_one_catalog_equal_the_single_file(pg, tmp_path):
    """Three processes (three machines, each with its own engine) gather the evidence of three partitions at
    the same time into one DuckLake catalog; one process does the same three on a DuckDB file. Every run
    succeeds, the runs overlap in time, and every table holds the same rows in both."""
    env = lake_env(pg, tmp_path, "three", ARHN_SCRIPT_LATENCY="0.3")
    procs = [run_job("gather_evidence", [p], env, tmp_path) for p in SAMPLES]
    spans = [finish(p) for p in procs]
    assert max(s for s, _ in spans) < min(e for _, e in spans), f"the runs did not overlap: {spans}"

    file_env = dict(os.environ, ARHN_DB=str(tmp_path / "one.duckdb"), ARHN_ENGINE="scripted")
    file_env.update(ARHN_SCRIPT="sample_oracle")
    finish(run_job("gather_evidence", SAMPLES, file_env, tmp_path))

    with connect(str(tmp_path / "one.duckdb"), read_only=True) as conn:
        single = tables(conn)
    with storage.session(lake_of(env), read_only=True) as conn:
        shared = tables(conn)
    assert set(shared) == set(single)
    for name in sorted(single):
        assert shared[name] == single[name], name
    assert len(single["candidates"]) == 3 * 176 and len(single["llm_calls"]) >= 3 * 176
    assert shared["llm_calls_asked_twice"] == []
    # upkeep (`arhn compact`): fewer data files, the same rows
    with storage.session(lake_of(env)) as conn:
        counts = storage.compact(conn, older_than_hours=0)
        assert counts["data_files_after"] < counts["data_files_before"]
        assert tables(conn) == shared


def test_a_run_killed_mid_llm_stage_on_ducklake_resumes_without_asking_again(pg, tmp_path):
    """SIGKILL in the middle of the snippets stage (the run holding the write lock at times): the next run
    is not blocked, completes, sends only what was not stored, and no row is lost or duplicated."""
    env = lake_env(pg, tmp_path, "killed")
    kill_mid_snippets_then_rerun(env, tmp_path / "sent.log", lambda: _stored_call_ids(env))
    with storage.session(lake_of(env), read_only=True) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT call_id) FROM llm_calls").fetchone() == (176, 176)
        assert conn.execute("SELECT count(*), count(DISTINCT (query_id, passage_id)) FROM snippets").fetchone() == (
            176,
            176,
        )
        for table, n in (("queries", 16), ("candidates", 176), ("passages", 38)):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == n, table
        assert conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '_stage_%'").fetchone()[0] == 0


def _stored_call_ids(env: dict[str, str]) -> set[str]:
    with storage.session(lake_of(env), read_only=True) as conn:
        return {k for (k,) in conn.execute("SELECT call_id FROM llm_calls").fetchall()}


def _record(key: str, answer: str) -> CallRecord:
    return CallRecord(
        call_id=key,
        model="m",
        engine="scripted",
        template="t/x.prompt.yaml",
        template_version="v",
        messages=[{"role": "user", "content": key}],
        sampling={"temperature": 0.0},
        structured=None,
        response=answer,
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        cached_prompt_tokens=None,
        batch_seconds=0.1,
        batch_size=2,
    )


def test_a_key_answered_by_two_racing_runs_is_kept_once_and_counted(pg, tmp_path, monkeypatch):
    """Two stores on one catalog (two machines) both answered key k2: the first answer stays, the second
    store is told k2 was stored already (so its run uses the stored answer), and the repeat is counted."""
    env = lake_env(pg, tmp_path, "race")
    for name in ("ARHN_DUCKLAKE_CATALOG", "ARHN_DUCKLAKE_DATA"):
        monkeypatch.setenv(name, env[name])
    one, two = DuckDBStore(database="", storage="ducklake"), DuckDBStore(database="", storage="ducklake")
    assert one.store_calls([_record("k1", "a1"), _record("k2", "a2")]) == []
    assert two.store_calls([_record("k2", "b2"), _record("k3", "b3")]) == ["k2"]
    found = two.lookup_calls(["k1", "k2", "k3"])
    assert {k: c.response for k, c in found.items()} == {"k1": "a1", "k2": "a2", "k3": "b3"}
    with one.get_connection() as conn:
        assert conn.execute("SELECT call_id FROM llm_calls_asked_twice").fetchall() == [("k2",)]
        assert conn.execute("SELECT count(*) FROM llm_calls").fetchone() == (3,)


def test_reads_go_on_while_another_run_holds_the_write_lock(pg, tmp_path, monkeypatch):
    """A cache look-up (and a stage's pair load, the deciding stages' reads: the same `reading`) reads a
    snapshot without the write lock, so it answers while another run writes; a write waits its turn."""
    import threading

    env = lake_env(pg, tmp_path, "readers")
    for name in ("ARHN_DUCKLAKE_CATALOG", "ARHN_DUCKLAKE_DATA"):
        monkeypatch.setenv(name, env[name])
    store = DuckDBStore(database="", storage="ducklake")
    store.store_calls([_record("k1", "a1")])
    done: dict[str, object] = {}

    def look() -> None:
        done["look"] = {k: c.response for k, c in store.lookup_calls(["k1", "k9"]).items()}

    def write() -> None:
        done["write"] = store.store_calls([_record("k2", "a2")])

    with storage.writing(lake_of(env)):  # another run's write, held
        reader, writer = threading.Thread(target=look), threading.Thread(target=write)
        reader.start(), writer.start()
        reader.join(60)
        assert done.get("look") == {"k1": "a1"}  # answered while the lock is held
        writer.join(2)
        assert writer.is_alive() and "write" not in done  # the write waits for the lock
    writer.join(60)
    assert done["write"] == [] and store.lookup_calls(["k2"])["k2"].response == "a2"


def test_an_ingest_streams_while_another_run_writes_and_takes_the_lock_only_to_swap_its_rows(pg, tmp_path, monkeypatch):
    """On DuckLake the ingest stages the whole source (its passages too) without the write lock: while another
    run holds the lock it reads every line and writes nothing; it waits only for its one swap transaction, and
    then the tables equal an ingest of the same source into a DuckDB file."""
    import threading
    from contextlib import contextmanager

    from arhn_pipeline.raw_triplets.ingest import ingest
    from arhn_pipeline.sources.registry import load_registry

    env = lake_env(pg, tmp_path, "ingestlock")
    for name in ("ARHN_DUCKLAKE_CATALOG", "ARHN_DUCKLAKE_DATA"):
        monkeypatch.setenv(name, env[name])
    store = DuckDBStore(database="", storage="ducklake")
    entry = load_registry(PROJECT / "sources.yaml")["sample_geo"]
    staged, done = threading.Event(), {}

    def run() -> None:
        with store.staged_writer() as (conn, lock):

            @contextmanager
            def swap_lock():
                staged.set()  # every line read and staged: the swap comes next
                with lock():
                    yield

            done["stats"] = ingest(conn, "sample_geo", entry, batch_size=4, commit_lock=swap_lock)

    with store.get_connection():
        pass  # the schema, made before the lock is taken below
    with storage.writing(lake_of(env)):  # another run's write, held
        worker = threading.Thread(target=run)
        worker.start()
        assert staged.wait(120), "the ingest did not stage its source while another run held the lock"
        with store.reading() as conn:  # nothing written yet: no query, no passage
            assert conn.execute(
                "SELECT (SELECT count(*) FROM queries), (SELECT count(*) FROM passages)"
            ).fetchone() == (
                0,
                0,
            )
        worker.join(2)
        assert worker.is_alive() and "stats" not in done  # the swap waits for the lock
    worker.join(120)
    assert done["stats"].queries == 16 and done["stats"].negatives == 160
    with store.reading() as conn:
        lake_tables = tables(conn)
    monkeypatch.setenv("ARHN_STORAGE", "duckdb")
    with connect(str(tmp_path / "one.duckdb")) as file_db:
        ingest(file_db, "sample_geo", entry, batch_size=4)
        assert lake_tables == tables(file_db) and lake_tables["passages"]


def test_the_storage_setting_names_what_is_missing(monkeypatch):
    monkeypatch.setenv("ARHN_STORAGE", "ducklake")
    monkeypatch.delenv("ARHN_DUCKLAKE_CATALOG", raising=False)
    monkeypatch.setenv("ARHN_DUCKLAKE_DATA", "/tmp/x")
    with pytest.raises(storage.StorageError, match="ARHN_DUCKLAKE_CATALOG"):
        storage.from_env()
    monkeypatch.setenv("ARHN_DUCKLAKE_CATALOG", "host=h dbname=d user=u password=secret")
    with pytest.raises(storage.StorageError, match="password"):
        storage.from_env()
    monkeypatch.setenv("ARHN_STORAGE", "sqlite")
    with pytest.raises(storage.StorageError, match="duckdb or ducklake"):
        storage.from_env()
    monkeypatch.setenv("ARHN_STORAGE", "duckdb")
    assert storage.from_env("/x/a.duckdb") == storage.Storage("duckdb", path="/x/a.duckdb")


def test_a_writer_killed_while_holding_the_lock_does_not_block_the_next(pg, tmp_path):
    """The write lock lives in the dead process's PostgreSQL session: the server ends the session and frees
    the lock, so the next writer gets in (here within the 60 s the test allows; in practice at once)."""
    env = lake_env(pg, tmp_path, "lockdeath")
    holder = (
        "import time\n"
        "from arhn_pipeline import storage\n"
        "with storage.writing(storage.from_env()):\n"
        "    print('holding', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], env=env, cwd=PROJECT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    lake = lake_of(env)
    waits: list[str] = []
    import psycopg2

    probe = psycopg2.connect(lake.catalog)  # the lock is taken: a try fails while the holder lives
    probe.autocommit = True
    with probe.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (storage._LOCK_KEY,))
        assert cur.fetchone() == (False,)
    probe.close()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    with storage.writing(lake, on_wait=waits.append):
        took = time.monotonic() - t0
    assert took < 60


def test_dagster_dev_on_the_postgres_instance_runs_a_partition_into_ducklake(pg, tmp_path):
    """The deployment in miniature: `dagster dev` with deploy/dagster.yaml (run storage in PostgreSQL, the
    queued run coordinator, the engine pool) and the tables on DuckLake. A run launched through the webserver
    succeeds, the webserver lists it, its record is in PostgreSQL, and its rows are in the DuckLake catalog."""
    import json
    import shutil

    import psycopg2

    from arhn_pipeline_tests.test_cli import BIN, dagster_dev, graphql, runs
    from arhn_pipeline_tests.test_concurrency import LAUNCH

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    instance_db = pg.create("dagster_instance")
    env = lake_env(pg, tmp_path, "deployed", DAGSTER_HOME=str(home), ARHN_SCRIPT_LATENCY="0.2")
    env["ARHN_DAGSTER_PG_URL"] = f"postgresql+psycopg2://{pg.user}@127.0.0.1:{pg.port}/dagster_instance"
    subprocess.run([BIN / "arhn", "sources", "sync"], env=env, cwd=PROJECT, check=True, capture_output=True)
    ops = {"snippets": {"config": {"batch_size": 16}}, **SCRIPTED_LLM_OPS}
    config = json.dumps({"ops": ops}).replace('"', '\\"')
    with dagster_dev(env) as port:
        launched = graphql(port, LAUNCH % config)["data"]["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        deadline, status = time.monotonic() + 600, "QUEUED"
        while time.monotonic() < deadline and status not in ("SUCCESS", "FAILURE", "CANCELED"):
            time.sleep(1)
            status = runs(port)[0]["status"]
        listed = runs(port)
    assert status == "SUCCESS"
    assert listed[0]["jobName"] == "clean_subset"
    assert {"key": "dagster/partition", "value": "sample_geo"} in listed[0]["tags"]
    session = psycopg2.connect(instance_db)
    try:
        with session.cursor() as cur:
            cur.execute("SELECT run_id, status FROM runs")
            stored = cur.fetchall()
    finally:
        session.close()
    assert (listed[0]["runId"], "SUCCESS") in stored
    with storage.session(lake_of(env), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM candidates WHERE subset = 'sample_geo'").fetchone() == (176,)
        assert conn.execute("SELECT count(*) FROM decisions WHERE subset = 'sample_geo'").fetchone()[0] > 0


def test_the_cluster_walk_through_two_workers_one_killed_equal_one_process(pg, tmp_path, monkeypatch):
    """docs/scaling.md walked on one machine as the cluster's stand-in: the tables on DuckLake and the Dagster
    instance on PostgreSQL (deploy/dagster.yaml); geo in two shards and the reference bio. `arhn ingest --jobs 3`
    reads every shard at once; two workers gather the evidence of different shards at once, and worker A is killed
    (SIGKILL) in the middle of its snippets. The decide sensor then waits for A's shard; worker B takes the
    shard over, its start reaps A's run (failed), and once the shard's evidence is in the sensor requests
    `decide` for every partition, which B runs. Every table equals what one process writes into a DuckDB file
    for the same sources."""
    import shutil

    import psycopg2

    from arhn_pipeline.automation import decide_requests
    from arhn_pipeline_tests.conftest import write_registry
    from arhn_pipeline_tests.test_cli import BIN
    from arhn_pipeline_tests.test_shards import sample

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    instance_db = pg.create("walk_instance")
    registry = write_registry(tmp_path / "sources.yaml", {"geo": sample("sample_geo", 2), "bio": sample("sample_bio")})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"ops": {**SCRIPTED_LLM_OPS, "snippets": {"config": {"batch_size": 8}}}}))
    env = lake_env(pg, tmp_path, "walk", DAGSTER_HOME=str(home), ARHN_SOURCES=str(registry))
    env.update(ARHN_VAR_DIR=str(tmp_path / "var"), ARHN_SCRIPT_LATENCY="0.1")
    env["ARHN_DAGSTER_PG_URL"] = f"postgresql+psycopg2://{pg.user}@127.0.0.1:{pg.port}/walk_instance"
    env.pop("ARHN_FAULT", None)

    def arhn(*args: str, **extra: str) -> subprocess.CompletedProcess:
        where = {k: v for k, v in {**env, **extra}.items() if v}  # an empty value: the variable unset
        return subprocess.run(
            [BIN / "arhn", *args], env=where, cwd=PROJECT, capture_output=True, text=True, timeout=900
        )

    evidence = [str(BIN / "arhn"), "run", "--phase", "evidence", "--no-train", "--config", str(config)]
    # the three partitions ingest at once, each in a process of its own (on DuckLake each takes the write lock
    # only for its swap), and the command ends with a row per partition
    done = arhn("ingest", "--jobs", "3", "--subset", "geo", "--subset", "bio")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr.count("ingesting ") == 3, done.stderr
    ingested = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:]}
    assert {k: v[0] for k, v in ingested.items()} == {"geo.shard0of2": "ok", "geo.shard1of2": "ok", "bio": "ok"}
    assert sum(int(v[2]) for k, v in ingested.items() if k.startswith("geo")) == 160  # geo's negatives, whole
    a = subprocess.Popen(
        [*evidence, "--subset", "geo.shard0of2"],
        env={**env, "ARHN_FAULT": "llm_batch:3"},  # worker A: SIGKILL once its third batch of answers is in
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    b = subprocess.run(
        [*evidence, "--subset", "geo.shard1of2", "--subset", "bio"], env=env, cwd=PROJECT, capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip
    assert a.wait(900) == -signal.SIGKILL and b.returncode == 0, b.stderr[-3000:]

    for name in ("DAGSTER_HOME", "ARHN_DAGSTER_PG_URL", "ARHN_SOURCES"):
        monkeypatch.setenv(name, env[name])
    import dagster as dg

    instance = dg.DagsterInstance.get()
    requests, cursor, reasons = decide_requests(instance, None)
    waiting = "waiting for the evidence of geo.shard0of2"  # bio too: geo's shards are a reference for its judges
    assert requests == [] and reasons == [f"bio: {waiting}", f"geo: {waiting}"], reasons

    taken_over = arhn(*evidence[1:], "--subset", "geo.shard0of2")  # worker B takes the killed worker's shard
    assert taken_over.returncode == 0, taken_over.stderr[-3000:]
    assert "failed: its process" in taken_over.stderr and "(killed or crashed)" in taken_over.stderr
    session = psycopg2.connect(instance_db)
    try:
        with session.cursor() as cur:
            cur.execute("SELECT status, pipeline_name, partition FROM runs ORDER BY create_timestamp")
            recorded = cur.fetchall()
        # three ingests, A's run (failed by the reaper), B's two and its take-over: every other run succeeded
        assert [r for r in recorded if r[0] != "SUCCESS"] == [("FAILURE", "gather_evidence", "geo.shard0of2")]
        assert len(recorded) == 7, recorded
    finally:
        session.close()
    requests, cursor, _ = decide_requests(instance, cursor)
    partitions = sorted(r.partition_key for r in requests)
    assert partitions == ["bio", "geo.shard0of2", "geo.shard1of2"]
    decided = arhn("run", "--phase", "decide", "--no-train", *(x for p in partitions for x in ("--subset", p)))
    assert decided.returncode == 0, decided.stderr[-3000:]

    one = tmp_path / "one"
    single = arhn(
        "run", "--no-train", "--config", str(config), "--subset", "geo", "--subset", "bio",
        ARHN_STORAGE="duckdb", ARHN_VAR_DIR=str(one), ARHN_DB=str(one / "arhn.duckdb"), DAGSTER_HOME="",
        ARHN_DAGSTER_PG_URL="",
    )  # fmt: skip
    assert single.returncode == 0 and (one / "arhn.duckdb").exists(), single.stdout[-3000:] + single.stderr[-3000:]
    assert f"Open the UI:  DAGSTER_HOME={one / 'dagster'} " in single.stdout  # this run's instance, not the default
    leave_out = TIMING | {"batch_size"}  # the batch a call was answered in depends on where the kill fell
    with connect(str(one / "arhn.duckdb"), read_only=True) as conn:
        expected = tables(conn, leave_out)
    with storage.session(lake_of(env), read_only=True) as conn:
        shared = tables(conn, leave_out)
    assert set(shared) == set(expected)
    for name in sorted(expected):
        assert shared[name] == expected[name], name
    assert len(expected["decisions"]) > 0 and shared["llm_calls_asked_twice"] == []
