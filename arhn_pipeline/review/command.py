"""`arhn review`: serve the review page for one partition, or show, export and import its reviews."""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from arhn_pipeline.review import data

RECHECK = 0.2


@click.command("review")
@click.option("--subset", default=None, help="the partition to review (a registry entry, or one shard of it)")
@click.option("--sample", "size", default=data.DEFAULT_SAMPLE, show_default=True, help="items to draw (once)")
@click.option("--seed", default=0, show_default=True, help="the draw's seed (once drawn, the sample stays)")
@click.option("--reviewer", default=None, help="your name: the printed URL starts your session under it")
@click.option("--host", default="127.0.0.1", show_default=True, help="where the page listens")
@click.option("--port", default=0, show_default=True, help="0: any free port")
@click.option("--reveal-after", is_flag=True, help="after each answer, show what each method decided (never before)")
@click.option(
    "--recheck",
    default=RECHECK,
    show_default=True,
    help="share of the items one reviewer answered that another is also asked, for their agreement",
)
@click.option("--status", is_flag=True, help="print the partition's reviews and estimates, and stop")
@click.option("--export", "export_to", type=click.Path(path_type=Path), default=None, help="write reviews as JSONL")
@click.option("--import", "import_from", type=click.Path(path_type=Path), default=None, help="read reviews JSONL")
def review(
    subset: str | None,
    size: int,
    seed: int,
    reviewer: str | None,
    host: str,
    port: int,
    reveal_after: bool,
    recheck: float,
    status: bool,
    export_to: Path | None,
    import_from: Path | None,
) -> None:
    """A person reviews a sample of a partition's negatives in a page built for it: one candidate at a time,
    the query's terms marked, answered by keyboard (1-4) or click, blind to every machine's decision. The
    sample is stratified by what each method decided and the judge's score band, so the reviews estimate each
    method's precision, recall and Cohen's kappa on the WHOLE partition with a 95% interval; the gate
    (`relabeled`) applies a method on this partition when the interval's lower end reaches min_kappa."""
    from arhn_pipeline.console import open_db as _db

    if export_to is not None:
        if export_to.is_symlink() or export_to.exists():
            raise click.ClickException(f"{export_to} exists: choose another path (reviews are never overwritten)")
        with _db(read_only=True) as conn:
            n = data.export_jsonl(conn, export_to, subset)
        click.echo(f"{n} reviews written to {export_to}")
        return
    if import_from is not None:
        if not import_from.is_file():
            raise click.ClickException(f"{import_from}: not a file")
        with _db() as conn:
            result = data.import_jsonl(conn, import_from)
        for reason in result.quarantined:
            click.echo(f"set aside: {reason}", err=True)
        click.echo(
            f"{import_from}: {result.added} reviews added, {result.already} already stored, "
            f"{len(result.quarantined)} lines set aside"
        )
        _report_all(result.added)
        return
    if subset is None:
        raise click.ClickException("--subset is required (the partition to review)")
    if status:
        _print_status(subset)
        return
    _serve(subset, size, seed, reviewer, host, port, reveal_after, recheck)


def _predictions(conn, subset: str):
    from arhn_pipeline.agreement import decision_predictions
    from arhn_pipeline.rules import decisions as dec
    from arhn_pipeline.rules.config import RelabeledConfig

    proposed = dec.decide_partition(conn, subset, RelabeledConfig())
    predicted = decision_predictions(proposed.frame)
    return {m: predicted.get(m, {}) for m in proposed.methods}, proposed


def _serve(
    subset: str, size: int, seed: int, reviewer: str | None, host: str, port: int, reveal_after: bool, recheck: float
) -> None:
    from urllib.parse import quote

    from arhn_pipeline.console import dagster_instance
    from arhn_pipeline.console import open_db as _db
    from arhn_pipeline.review import assets, page
    from arhn_pipeline.rules.config import RelabeledConfig

    with _db() as conn:
        try:
            sid, drawn, new = data.ensure_sample(conn, subset, size, seed, RelabeledConfig())
        except data.NothingToReview as exc:
            raise click.ClickException(str(exc)) from None
        predicted, proposed = _predictions(conn, subset)
    if new:
        click.echo(f"{subset}: drew {drawn} items (sample {sid}, seed {seed}), stratified by each method's decision")
    else:
        click.echo(f"{subset}: the sample drawn before ({drawn} items, {sid}) is kept; reviews rest on it")
    if not proposed.methods:
        click.echo(f"  no method has decided yet ({'; '.join(proposed.skipped)}): the reviews are kept, and estimate "
                   "the methods once their evidence is stored")  # fmt: skip
    instance = dagster_instance()

    def told() -> None:
        with _db(read_only=True) as conn:
            version = data.version(conn, subset)
        assets.report(instance, subset, version)

    app = page.ReviewApp(
        connect=_db,
        subset=subset,
        token=secrets.token_urlsafe(18),
        predicted=predicted,
        decided={
            (m, q, p): (a, r)
            for m, q, p, a, r in proposed.frame.filter(proposed.frame["role"] == "negative")
            .select("method", "query_id", "passage_id", "proposed_action", "proposed_rule")
            .iter_rows()
        },
        reveal_after=reveal_after,
        recheck=recheck,
        on_answer=page.throttled(told, 30.0),
    )

    def announce(url: str) -> None:
        click.echo(f"review page: {url}" + (f"item?reviewer={quote(reviewer)}" if reviewer else ""))
        click.echo("  blind: no method's decision is shown before you answer; Ctrl-C stops the page")

    try:
        page.serve(app, host, port, announce)
    except KeyboardInterrupt:
        pass
    finally:
        if app.answered:
            told()  # the last answers reach Dagster: judge_qualification and relabeled become stale
        click.echo(f"\n{app.answered} answers this session")
        _print_status(subset)


def _report_all(added: int) -> None:
    """After an import: every partition with reviews tells Dagster its reviews' version."""
    if not added:
        return
    from arhn_pipeline.console import dagster_instance
    from arhn_pipeline.console import open_db as _db
    from arhn_pipeline.review import assets

    instance = dagster_instance()
    with _db(read_only=True) as conn:
        versions = {s: data.version(conn, s) for (s,) in conn.execute("SELECT DISTINCT subset FROM reviews").fetchall()}
    for subset, version in versions.items():
        assets.report(instance, subset, version)


def _print_status(subset: str) -> None:
    from arhn_pipeline.console import open_db as _db
    from arhn_pipeline.markdown import text_table
    from arhn_pipeline.qualify import core as qualify
    from arhn_pipeline.rules.config import RelabeledConfig

    config = RelabeledConfig()
    with _db(read_only=True) as conn:
        drawn = data.items(conn, subset).height
        given = data.reviews(conn, subset)
        predicted, proposed = _predictions(conn, subset)
        rows, _ = qualify.reviewed(conn, subset, proposed) if proposed.methods else ([], None)
    reviewers = sorted(set(given["reviewer"].to_list()))
    click.echo(f"{subset}: {given.height} reviews of {drawn} items drawn, by {', '.join(reviewers) or 'nobody yet'}")
    if not rows:
        return
    verdicts = qualify.gate_verdicts(_frame(rows), proposed.judges, config.min_kappa, config.min_reviews)
    table = []
    for r in rows:
        v = verdicts[r["method"]]
        gate = "applied" if v.qualified else (f"needs ~{v.needs} more" if v.needs else "withheld")
        if r["pairs"] < config.min_reviews:
            gate = f"fewer than {config.min_reviews} reviews"
        table.append(
            (r["method"], r["pairs"], f"{r['precision']:.2f}", f"{r['recall']:.2f}", f"{r['kappa']:.2f}",
             qualify.interval_text(r["kappa_low"], r["kappa_high"]), f"{r['covered']:.0%}", gate)
        )  # fmt: skip
    headers = ["method", "reviewed", "precision", "recall", "kappa", "95% interval", "covered", "gate"]
    click.echo("\n".join(text_table(headers, table, numbers_right=True, rule=True)))
    first = rows[0]
    if first["reviewers_items"]:
        click.echo(f"two reviewers on {first['reviewers_items']} items: kappa {first['reviewers_kappa']:.2f} "
                   "(the human ceiling on this data)")  # fmt: skip
    click.echo(f"gate: min_kappa {config.min_kappa} on the interval's lower end; the partition's reviews decide "
               f"from {config.min_reviews} reviewed negatives (arhn qualify shows the stored table)")  # fmt: skip


def _frame(rows):
    import polars as pl

    from arhn_pipeline.qualify.core import QUALIFICATION_SCHEMA

    return pl.DataFrame(rows, schema=QUALIFICATION_SCHEMA)
