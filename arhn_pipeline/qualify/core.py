"""The qualification gate without Dagster. A judge (a method with the models, prompts and settings behind its
evidence) is scored against every registry entry that has a reference, other than the partition it would
clean; its decisions are applied only when its pooled Cohen's kappa there reaches `min_kappa`. A judge that
no reference has measured is not qualified."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl

from arhn_pipeline import agreement as ag
from arhn_pipeline import shards
from arhn_pipeline.relabel import decisions as dec
from arhn_pipeline.sources.registry import SourceEntry
from arhn_pipeline.vocab import Action

WITHHELD_RULE = "withheld_unqualified_judge"

QUALIFICATION_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "subset": pl.String,
    "method": pl.String,
    "judge": pl.String,
    "reference": pl.String,
    "reference_format": pl.String,
    "pairs": pl.Int64,
    "no_prediction": pl.Int64,
    "tp": pl.Int64,
    "fp": pl.Int64,
    "fn": pl.Int64,
    "tn": pl.Int64,
    "precision": pl.Float64,
    "recall": pl.Float64,
    "f1": pl.Float64,
    "kappa": pl.Float64,
}


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
            rows.append(
                dict(
                    subset=subset,
                    method=method,
                    judge=own.judges[method],
                    reference=name,
                    reference_format=entry.reference.format,
                    **{k: s[k] for k in ("pairs", "no_prediction", "tp", "fp", "fn", "tn")},
                    **{k: float(s[k]) for k in ("precision", "recall", "f1", "kappa")},
                )
            )
        outcomes.append(ReferenceOutcome(name, True, f"scored {len(same)} method(s)"))
    return pl.DataFrame(rows, schema=QUALIFICATION_SCHEMA), outcomes


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


@dataclass(frozen=True)
class GateVerdict:
    method: str
    qualified: bool
    kappa: float | None  # pooled over the references; None when no reference measured the judge
    pairs: int
    references: list[str]
    reason: str


def gate_verdicts(qualification: pl.DataFrame, judges: Mapping[str, str], min_kappa: float) -> dict[str, GateVerdict]:
    """Per method: pool the confusion counts of the rows measured for its judge, and compare kappa."""
    out = {}
    for method, judge in judges.items():
        rows = qualification.filter((pl.col("method") == method) & (pl.col("judge") == judge))
        refs = rows["reference"].to_list()
        counts = {k: int(rows[k].sum()) for k in ("tp", "fp", "fn", "tn")}
        pooled = ag.metrics(**counts)
        pairs = int(pooled["pairs"])
        if not pairs:
            out[method] = GateVerdict(method, False, None, 0, refs, "withheld: no reference entry measured this judge")
            continue
        kappa = float(pooled["kappa"])
        where = ", ".join(refs)
        if kappa >= min_kappa:
            reason = f"applied: kappa {kappa:.3f} >= {min_kappa} on {pairs} labelled negatives of {where}"
        else:
            reason = f"withheld: kappa {kappa:.3f} < {min_kappa} on {pairs} labelled negatives of {where}"
        out[method] = GateVerdict(method, kappa >= min_kappa, kappa, pairs, refs, reason)
    return out


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


def summary_rows(verdicts: Iterable[GateVerdict]) -> list[tuple[Any, ...]]:
    return [
        (v.method, "yes" if v.qualified else "no", "-" if v.kappa is None else f"{v.kappa:.3f}", v.pairs, v.reason)
        for v in verdicts
    ]
