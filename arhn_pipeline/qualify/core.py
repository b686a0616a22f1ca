"""The qualification gate without Dagster. A judge (a method with the models, prompts and settings behind its
evidence) is scored against every registry entry that has a reference, other than the partition it would
clean, and against the partition's own reviews (review/: a person's answers on a stratified sample, weighted
to the whole partition). With at least `min_reviews` reviewed negatives, the partition's reviews decide;
otherwise the registry's references, pooled. Either way a judge's decisions are applied only when the lower
end of the 95% interval of its Cohen's kappa reaches `min_kappa` (the point estimate is shown beside it). A
judge that nothing has measured is not qualified."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl

from arhn_pipeline import agreement as ag
from arhn_pipeline import shards
from arhn_pipeline.review import core as review_core
from arhn_pipeline.review import data as review_data
from arhn_pipeline.rules import decisions as dec
from arhn_pipeline.schema import frame_schema
from arhn_pipeline.sources.registry import SourceEntry
from arhn_pipeline.vocab import Action

WITHHELD_RULE = "withheld_unqualified_judge"

QUALIFICATION_SCHEMA = frame_schema("judge_qualification")  # schema.py declares the columns
REVIEWS = "reviews"


@dataclass(frozen=True)
class ReferenceOutcome:
    reference: str
    used: bool
    why: str  # what was measured, or why the entry could not serve


def qualify(
    conn: duckdb.DuckDBPyConnection,
    subset: str,
    own: dec.PartitionDecisions,
    references: Mapping[str, SourceEntry],
    settings: dec.DecisionSettings,
) -> tuple[pl.DataFrame, list[ReferenceOutcome]]:
    """Score each of the partition's judges on every reference entry but the partition itself: the decisions
    the same judge made there (same models, prompts and settings), against that entry's labels."""
    rows: list[dict[str, Any]] = []
    outcomes = []
    trained_on = judges_trained_on(conn, subset)
    for name, entry in sorted(references.items()):
        if name == shards.dataset_of(subset):
            outcomes.append(
                ReferenceOutcome(
                    name, False, "the partition being cleaned (or its sub-dataset): never its own reference"
                )
            )
            continue
        if name in trained_on:
            outcomes.append(
                ReferenceOutcome(name, False, f"a judge behind the evidence was trained on it ({trained_on[name]})")
            )
            continue
        assert entry.reference is not None
        if not entry.reference.path.is_file():
            outcomes.append(ReferenceOutcome(name, False, f"reference file not found: {entry.reference.path}"))
            continue
        theirs = _decide_entry(conn, name, entry, settings)
        same = [m for m in own.methods if theirs.judges.get(m) == own.judges[m]]
        if not same:
            why = "no evidence stored (run its stages)" if not theirs.methods else "evidence made by another judge"
            outcomes.append(ReferenceOutcome(name, False, why))
            continue
        try:
            ref = ag.load_reference(entry.reference.format, entry.reference.path)
        except ag.ReferenceFileError as exc:  # one broken reference file never stops the others
            outcomes.append(ReferenceOutcome(name, False, str(exc)))
            continue
        predicted = ag.decision_predictions(theirs.frame)
        for method in same:
            s = ag.scores(predicted.get(method, {}), ref)
            interval = review_core.counts_interval(s["tp"], s["fp"], s["fn"], s["tn"])
            rows.append(
                dict(
                    subset=subset,
                    method=method,
                    judge=own.judges[method],
                    reference=name,
                    reference_format=entry.reference.format,
                    **{k: s[k] for k in ("pairs", "no_prediction", "tp", "fp", "fn", "tn")},
                    **{k: float(s[k]) for k in ("precision", "recall", "f1", "kappa")},
                    kappa_low=interval[0] if interval else None,
                    kappa_high=interval[1] if interval else None,
                )
            )
        outcomes.append(ReferenceOutcome(name, True, f"scored {len(same)} method(s)"))
    review_rows, outcome = reviewed(conn, subset, own, trained_on)
    rows += review_rows
    outcomes.append(outcome)
    return pl.DataFrame(rows, schema=QUALIFICATION_SCHEMA), outcomes


def reviewed(
    conn: duckdb.DuckDBPyConnection,
    subset: str,
    own: dec.PartitionDecisions,
    trained_on: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], ReferenceOutcome]:
    """The partition's own reviews as a reference: each method's weighted estimate on the whole partition.
    `trained_on`: judges_trained_on(conn, subset), when the caller has it already."""
    name = f"{REVIEWS}:{subset}"
    predicted = ag.decision_predictions(own.frame)
    if trained_on is None:
        trained_on = judges_trained_on(conn, subset)
    trained = trained_on.get(f"{subset}:{REVIEWS}")
    held_out = (lambda q: not review_core.train_half(q)) if trained else None
    measured = review_data.measure(conn, subset, {m: predicted.get(m, {}) for m in own.methods}, held_out)
    if measured is None:
        return [], ReferenceOutcome(name, False, f"no reviews of this partition (arhn review --subset {subset})")
    rows = []
    for method, e in measured.estimates.items():
        rows.append(
            dict(
                subset=subset,
                method=method,
                judge=own.judges[method],
                reference=name,
                reference_format=REVIEWS,
                pairs=e.reviewed,
                no_prediction=e.no_prediction,
                **e.counts,
                precision=e.precision,
                recall=e.recall,
                f1=e.f1,
                kappa=e.kappa,
                kappa_low=e.kappa_low,
                kappa_high=e.kappa_high,
                reviewers_items=measured.agreement.items,
                reviewers_kappa=measured.agreement.kappa,
                covered=e.covered,
            )
        )
    who = ", ".join(measured.reviewers)
    note = f"; only the held-out half of the queries ({trained} trained on the other half)" if trained else ""
    reviewed_items = max((e.reviewed for e in measured.estimates.values()), default=0)
    return rows, ReferenceOutcome(
        name, True, f"{reviewed_items} reviewed negatives of {measured.sample} drawn, by {who} (reviews "
        f"{measured.version}){note}"
    )  # fmt: skip


def _decide_entry(
    conn: duckdb.DuckDBPyConnection, name: str, entry: SourceEntry, settings: dec.DecisionSettings
) -> dec.PartitionDecisions:
    """A reference entry's decisions (before the gate): a sharded entry's shards together, for the methods
    whose judge is the same in every shard."""
    if not entry.shards:
        return dec.decide_partition(conn, name, settings)
    parts = [dec.decide_partition(conn, key, settings) for key in shards.keys(name, entry.shards)]
    first = parts[0]
    methods = [m for m in first.methods if all(p.judges.get(m) == first.judges[m] for p in parts)]
    return dec.PartitionDecisions(
        frame=pl.concat([p.frame for p in parts]),
        methods=methods,
        judges={m: first.judges[m] for m in methods},
        judge_descriptions=first.judge_descriptions,
    )


def judges_trained_on(conn: duckdb.DuckDBPyConnection, subset: str) -> dict[str, str]:
    """Registry entries that a trained judge behind the partition's evidence was fitted on -> the judge."""
    from arhn_pipeline import settings
    from arhn_pipeline.trained_judge.core import JudgeModel, judge_path

    models = conn.execute(
        "SELECT DISTINCT model FROM verdicts WHERE subset = $s AND model LIKE 'judge:%' UNION "
        "SELECT DISTINCT model FROM ranking_windows WHERE subset = $s AND model LIKE 'judge:%'",
        {"s": subset},
    ).fetchall()
    out = {}
    for (model,) in models:
        name = model.removeprefix("judge:").rsplit("@", 1)[0]
        try:
            judge = JudgeModel.load(judge_path(name, settings.judges_dir()))
        except FileNotFoundError:
            continue
        out.update({entry: f"judge {name}" for entry in judge.trained_on})
    return out


MIN_REVIEWS = 30


@dataclass(frozen=True)
class GateVerdict:
    method: str
    qualified: bool
    kappa: float | None  # the partition's reviews, or pooled over the references; None when nothing measured it
    pairs: int
    references: list[str]
    reason: str
    kappa_low: float | None = None  # the 95% interval
    kappa_high: float | None = None
    needs: int | None = None  # about how many more reviews would settle a straddling interval

    @property
    def interval(self) -> str:
        return interval_text(self.kappa_low, self.kappa_high)


def interval_text(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"{low:.2f} to {high:.2f}"


def stored(conn: duckdb.DuckDBPyConnection, subset: str) -> pl.DataFrame:
    """The qualification `judge_qualification` stored for the partition: what `relabeled` gates on (measured
    once, by that asset)."""
    columns = ", ".join(QUALIFICATION_SCHEMA)
    rows = conn.execute(f"SELECT {columns} FROM judge_qualification WHERE subset = ?", [subset]).fetchall()
    return pl.DataFrame(rows, schema=QUALIFICATION_SCHEMA, orient="row")


def gate_verdicts(
    qualification: pl.DataFrame, judges: Mapping[str, str], min_kappa: float, min_reviews: int = MIN_REVIEWS
) -> dict[str, GateVerdict]:
    """Per method: the partition's reviews when it has at least `min_reviews` reviewed negatives, else the
    confusion counts of the references pooled; applied when the interval's lower end reaches `min_kappa`."""
    out = {}
    for method, judge in judges.items():
        rows = qualification.filter((pl.col("method") == method) & (pl.col("judge") == judge))
        own = rows.filter(pl.col("reference_format") == REVIEWS)
        rows = rows.filter(pl.col("reference_format") != REVIEWS)
        note = ""
        if own.height:
            r = own.row(0, named=True)
            if r["pairs"] >= min_reviews:
                out[method] = _reviews_verdict(method, r, min_kappa)
                continue
            note = f" (the partition's {r['pairs']} reviewed negatives are fewer than min_reviews {min_reviews})"
        refs = rows["reference"].to_list()
        counts = {k: int(rows[k].sum()) for k in ("tp", "fp", "fn", "tn")}
        pooled = ag.metrics(**counts)
        pairs = int(pooled["pairs"])
        others = qualification.filter((pl.col("method") == method) & (pl.col("judge") != judge))
        if not pairs and not own.height and others.height:
            why = (
                "withheld: judge_qualification measured another judge for this method (its evidence was made "
                "since): materialize judge_qualification for this partition"
            )
            out[method] = GateVerdict(method, False, None, 0, refs, why)
            continue
        if not pairs:
            why = "withheld: no reference entry measured this judge, and no reviews of this partition"
            out[method] = GateVerdict(method, False, None, 0, refs, why + note)
            continue
        kappa = float(pooled["kappa"])
        low, high = review_core.counts_interval(**counts) or (kappa, kappa)
        where = f"{pairs} labelled negatives of {', '.join(refs)}"
        out[method] = GateVerdict(
            method, low >= min_kappa, kappa, pairs, refs, _reason(kappa, low, high, min_kappa, where, None) + note,
            low, high,
        )  # fmt: skip
    return out


def _reviews_verdict(method: str, r: dict[str, Any], min_kappa: float) -> GateVerdict:
    kappa, low, high = r["kappa"], r["kappa_low"], r["kappa_high"]
    low = kappa if low is None else low
    high = kappa if high is None else high
    needs = review_core.more_reviews(kappa, low, r["pairs"], min_kappa)
    where = f"{r['pairs']} reviewed negatives of this partition, weighted to all of it"
    if r["reviewers_items"]:
        where += f"; two reviewers agree at kappa {r['reviewers_kappa']:.2f} on {r['reviewers_items']} items"
    return GateVerdict(
        method, low >= min_kappa, kappa, r["pairs"], [r["reference"]],
        _reason(kappa, low, high, min_kappa, where, needs), low, high, needs,
    )  # fmt: skip


def _reason(kappa: float, low: float, high: float, min_kappa: float, where: str, needs: int | None) -> str:
    figure = f"kappa {kappa:.3f} (95% interval {low:.3f} to {high:.3f})"
    if low >= min_kappa:
        return f"applied: {figure}, lower end >= {min_kappa}, on {where}"
    if kappa > min_kappa:
        more = f"; needs about {needs} more reviews" if needs else ""
        return f"withheld: {figure} straddles {min_kappa}, on {where}{more}"
    return f"withheld: {figure} < {min_kappa}, on {where}"


# A combined method's decisions are gated rule by rule by the method that makes that rule alone, when it is
# measured: R+F's relabels stand on R's qualification, its filtering on F's (a strong R must not carry a coin F).
COMPONENTS = {"arhn:R+F": {"R_ranked_above_positive": "arhn:R", "F_answer_snippet_below_positive": "arhn:F"}}


def rule_verdict(method: str, rule: str, verdicts: Mapping[str, GateVerdict]) -> GateVerdict:
    component = COMPONENTS.get(method, {}).get(rule)
    return verdicts[component] if component is not None and component in verdicts else verdicts[method]


def apply_gate(frame: pl.DataFrame, verdicts: Mapping[str, GateVerdict]) -> pl.DataFrame:
    """Decisions of unqualified judges become `keep` with the rule `withheld_unqualified_judge` (what the rule
    proposed stays in `proposed_action` and `proposed_rule`, and why in `gate`); qualified ones stand."""
    pairs = frame.select("method", "proposed_rule").unique()
    table = pl.DataFrame(
        [(m, r, v.qualified, v.reason) for m, r in pairs.iter_rows() for v in [rule_verdict(m, r, verdicts)]],
        schema={"method": pl.String, "proposed_rule": pl.String, "_qualified": pl.Boolean, "_reason": pl.String},
        orient="row",
    )
    gated = frame.join(table, on=["method", "proposed_rule"], how="left", maintain_order="left")
    changed = ~pl.col("_qualified") & (pl.col("proposed_action") != Action.KEEP)
    return gated.with_columns(
        action=pl.when(changed).then(pl.lit(str(Action.KEEP))).otherwise(pl.col("action")),
        rule=pl.when(changed).then(pl.lit(WITHHELD_RULE)).otherwise(pl.col("rule")),
        gate=pl.col("_reason"),
    ).drop("_qualified", "_reason")


def withheld_methods(gated: pl.DataFrame, verdicts: Mapping[str, GateVerdict]) -> list[str]:
    """Methods whose judge did not qualify, and combined methods with a proposed change withheld (a part of
    theirs did not qualify), in the order of `verdicts`."""
    with_withheld_rows = set(gated.filter(pl.col("rule") == WITHHELD_RULE)["method"].to_list())
    return [m for m, v in verdicts.items() if m in with_withheld_rows or (not v.qualified and m not in COMPONENTS)]


SUMMARY_HEADERS = ["method", "gate", "kappa", "95% interval", "measured on"]


def summary_rows(verdicts: Iterable[GateVerdict]) -> list[tuple[Any, ...]]:
    """The gate in a few words per method (the whole reason is in each decision's `gate` column): compact
    enough for the UI to show inline."""
    rows = []
    for v in verdicts:
        gate = "applied" if v.qualified else "withheld" + (f" (needs ~{v.needs} more reviews)" if v.needs else "")
        if v.kappa is None:
            where = "nothing: no reference, no reviews"
        elif v.references and v.references[0].startswith(f"{REVIEWS}:"):
            where = f"{v.pairs} reviewed negatives of this partition"
        else:
            where = f"{v.pairs} labelled negatives of {', '.join(v.references)}"
        rows.append((v.method, gate, "-" if v.kappa is None else f"{v.kappa:.3f}", v.interval, where))
    return rows
