"""The command line as a user runs it: `arhn`, `dagster asset materialize`, and `dagster dev` serving the UI."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from arhn_pipeline_tests.conftest import PROJECT

BIN = Path(sys.executable).parent


@pytest.fixture
def cli_env(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ, DAGSTER_HOME=str(home), ARHN_ENGINE="scripted", ARHN_DB=str(tmp_path / "cli.duckdb"))
    return env


def run(args, env, timeout=300):
    proc = subprocess.run(args, env=env, cwd=PROJECT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_sources_sync_then_dagster_asset_materialize_one_partition(cli_env):
    out = run([BIN / "arhn", "sources", "sync"], cli_env)
    assert "sample_geo" in out
    run(
        [
            BIN / "dagster",
            "asset",
            "materialize",
            "-m",
            "arhn_pipeline.definitions",
            "--select",
            "raw_triplets",
            "--partition",
            "sample_bio",
        ],
        cli_env,
    )
    with duckdb.connect(cli_env["ARHN_DB"], read_only=True) as conn:
        rows = conn.execute("SELECT subset, count(*) FROM queries GROUP BY subset").fetchall()
    assert rows == [("sample_bio", 16)]


def test_sources_list_names_every_entry(cli_env):
    out = run([BIN / "arhn", "sources", "list"], cli_env)
    for name in ("sample_geo", "sample_bio", "sample_fin", "scifact_train", "rlhn_fiqa"):
        assert name in out


def test_an_unknown_training_variant_is_a_usage_error_before_any_run(cli_env):
    proc = subprocess.run(
        [BIN / "arhn", "run", "--subset", "sample_geo", "--variant", "original", "--variant", "arhn_X"],
        env=cli_env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "unknown variant(s) ['arhn_X']" in proc.stderr
    assert "== gather_evidence" not in proc.stdout  # refused before any run started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _default_signals() -> None:
    """A shell that starts jobs in the background may pass SIGINT/SIGTERM down as ignored; `dagster dev` needs
    them to stop its webserver, daemon and code servers."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def runs(port: int) -> list[dict]:
    """Every run the webserver knows, newest first: id, status, job, tags, asset selection."""
    fields = "runId status jobName tags { key value } assetSelection { path }"
    query = "{ runsOrError { ... on Runs { results { " + fields + " } } } }"
    return graphql(port, query)["data"]["runsOrError"]["results"]


@contextmanager
def dagster_dev(env: dict, timeout: float = 120):
    """`dagster dev -w workspace.yaml` on a free loopback port; yields the port once the assets are served."""
    port = _free_port()
    proc = subprocess.Popen(
        [BIN / "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_default_signals,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if graphql(port, "{ assetNodes { id } }")["data"]["assetNodes"]:
                    break
            except OSError:
                pass
            time.sleep(1)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # its children did not stop: do not leave them running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_dagster_dev_serves_the_ui_with_the_assets(cli_env):
    with dagster_dev(cli_env) as port:
        data = graphql(port, "{ assetNodes { assetKey { path } } }")
        nodes = {"/".join(n["assetKey"]["path"]) for n in data["data"]["assetNodes"]}
        assert {"raw_triplets", "snippets", "rankings", "judgments", "relabeled", "retriever_eval"} <= nodes
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert resp.status == 200 and b"<html" in resp.read().lower()


def test_arhn_explain_tells_why_a_negative_was_relabeled(cli_env):
    env = dict(cli_env, ARHN_SCRIPT="sample_oracle")
    config = Path(env["ARHN_DB"]).with_name("run.yaml")
    config.write_text("ops:\n  rankings:\n    config:\n      ranker: llm\n", encoding="utf-8")
    # sample_bio's planted labels qualify the judge that cleans sample_geo
    printed = run(
        [BIN / "arhn", "run", "--subset", "sample_geo", "--subset", "sample_bio", "--no-train", "--config", config], env
    )
    # the run ends with what it did, read back from the store: per partition each method's gate and changes
    result = printed[printed.index("sample_geo: 16 queries, 160 negatives") :]
    assert result.index("sample_bio: 16 queries, 160 negatives") > 0
    geo = result.splitlines()[1:10]
    assert geo[0].split()[:4] == ["method", "gate", "kappa", "proposed"]
    rf = next(line for line in geo if line.split()[0] == "arhn:R+F")
    assert rf.split()[1:3] == ["applied", "0.906"], rf  # measured on sample_bio's planted labels
    assert "gather_evidence sample_geo: done in" in printed and "DEBUG" not in printed
    assert max(len(line) for line in result[: result.index("DuckDB file")].splitlines()) <= 100
    assert "Loading weights" not in printed  # the libraries' progress bars and load reports go to the log
    log = Path(printed.split("Log of this run (Dagster's events, the engine's lines): ")[1].split()[0])
    assert "STEP_SUCCESS" in log.read_text(encoding="utf-8") or "RUN_SUCCESS" in log.read_text(encoding="utf-8")
    with duckdb.connect(env["ARHN_DB"], read_only=True) as conn:
        pid = conn.execute(
            "SELECT passage_id FROM decisions WHERE method = 'arhn:R+F' AND query_id = 'sample_geo-nile' "
            "AND action = 'to_positive'"
        ).fetchone()[0]
    out = run([BIN / "arhn", "explain", "--subset", "sample_geo", "--query", "sample_geo-nile", "--passage", pid], env)
    assert "how long is the nile river" in out and "Measured from its most distant source" in out
    assert "arhn:R+F         to_positive    R_ranked_above_positive" in out
    assert "snippet: answer_verified" in out and 'raw answer: {"snippet": "Measured from' in out
    assert "rank: 0 (positive at 1)" in out and "raw ranking" in out and '{"ranking": [' in out
    assert "cascade stage 0 trained_judge (judge:dl19_dl20@" in out
    assert "gate: applied: kappa" in out and "sample_bio" in out
    assert "prompt versions: snippets=" in out and "model: scripted:sample_oracle" in out
    assert "also appears in" in out
    whole = run([BIN / "arhn", "explain", "--subset", "sample_geo", "--query", "sample_geo-nile"], env)
    assert whole.count("negative #") == 10 and whole.count("positive #") == 1


def test_arhn_run_goes_on_past_a_partition_that_fails_and_ends_with_a_table_not_a_traceback(cli_env, tmp_path):
    """A device, a directory, a FIFO and a symlink loop as sources beside a good one: each is named for what it
    is, the good partition is gathered and decided, the closing table lists the failed ones, exit status 1."""
    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")
    registry = tmp_path / "sources.yaml"
    entries = {"devzero": "/dev/zero", "adir": str(tmp_path), "fifo": str(tmp_path / "fifo.jsonl")}
    entries |= {"loop": str(tmp_path / "loop.jsonl"), "good": str(PROJECT / "data/samples/sample_geo.jsonl")}
    registry.write_text(
        "sources:\n" + "".join(f"  {k}:\n    format: bge\n    path: {v}\n" for k, v in entries.items()),
        encoding="utf-8",
    )
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"ops": {"rankings": {"config": {"ranker": "llm"}}}}), encoding="utf-8")
    env = dict(cli_env, ARHN_SOURCES=str(registry))
    subsets = [arg for name in entries for arg in ("--subset", name)]
    proc = subprocess.run(
        [BIN / "arhn", "run", *subsets, "--no-train", "--config", config],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = proc.stdout[proc.stdout.index("partition   result") :]
    assert "devzero     failed   gather_evidence / raw_triplets  source 'devzero': /dev/zero: a device" in table
    assert "a directory, not a file" in table and "a FIFO (named pipe)" in table and "a symlink loop" in table
    assert "good        ok" in table and "collection  not run" in table
    for word in ("Traceback", "Stack Trace", "DEBUG", "STEP_FAILURE"):
        assert word not in proc.stdout + proc.stderr
    with duckdb.connect(env["ARHN_DB"], read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM decisions WHERE subset = 'good'").fetchone()[0] > 0


def test_the_phases_a_cluster_orders_run_one_after_another(cli_env):
    """`arhn ingest`, then `arhn run --phase evidence`, then `--phase decide`: each does its part only, and
    together they give what one `arhn run --no-train` gives."""
    env = dict(cli_env, ARHN_SCRIPT="sample_oracle")
    subsets = ["--subset", "sample_geo", "--subset", "sample_bio"]

    def counts() -> tuple[int, ...]:
        with duckdb.connect(env["ARHN_DB"], read_only=True) as conn:
            return tuple(
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("candidates", "snippets", "verdicts", "decisions")
            )

    out = run([BIN / "arhn", "ingest", *subsets], env)
    assert counts()[0] == 2 * 176 and counts()[1:] == (0, 0, 0)
    assert "sample_geo: 16 queries, 160 negatives, 0 lines quarantined; no decisions yet" in out
    run([BIN / "arhn", "run", "--phase", "evidence", *subsets], env)
    evidence = counts()
    assert evidence[1] == 2 * 176 and evidence[2] > 0 and evidence[3] == 0
    out = run([BIN / "arhn", "run", "--phase", "decide", *subsets], env)
    assert counts()[3] > 0 and "== gather_evidence" not in out and "== train_retriever" not in out
    assert "arhn:R+F" in out  # the result table
