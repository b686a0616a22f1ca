"""The `relabeled` asset: a thin shell over rules/decisions.py and the qualification gate (qualify/core.py);
the cleaned triplets are the `cleaned_triplets` view."""

from typing import Any

import dagster as dg
import duckdb as ddb
import polars as pl

from arhn_pipeline import agreement as ag
from arhn_pipeline import shards
from arhn_pipeline.markdown import md_table
from arhn_pipeline.partitions import subset_partitions
from arhn_pipeline.qualify import core as qualify
from arhn_pipeline.rules import decisions as dec
from arhn_pipeline.rules.config import RelabeledConfig
from arhn_pipeline.sources.registry import SourceEntry, load_registry
from arhn_pipeline.store import DuckDBStore, replace_partition, scalar, table_metadata

ONE_DECISION = "one_decision_per_candidate_and_method"
QUALIFIED = "judges_qualified"
AGREEMENT = "agreement_with_reference"

EXAMPLES = """
SELECT d.method, d.query_id, left(q.text, 60), left(p.text, 90), d.action, d.rule, d.snippet_status,
       left(d.snippet, 60), d.rank, d.positive_rank, d.verdict,
       'arhn explain --subset ' || d.subset || ' --query ' || d.query_id || ' --passage ' || d.passage_id
FROM decisions d JOIN queries q USING (subset, query_id) JOIN passages p USING (passage_id)
WHERE d.subset = ? AND d.method = ? AND d.action != 'keep'
ORDER BY d.query_id, d.rank LIMIT 10
"""

ONE_DECISION_SQL = """
SELECT count(*) FROM (
  SELECT m.method, c.query_id, c.passage_id, count(d.action) n
  FROM candidates c CROSS JOIN (SELECT DISTINCT method FROM decisions WHERE subset = $s) m
  LEFT JOIN decisions d ON d.subset = c.subset AND d.method = m.method
       AND d.query_id = c.query_id AND d.passage_id = c.passage_id
  WHERE c.subset = $s GROUP BY ALL HAVING n != 1)
"""


@dg.asset(
    partitions_def=subset_partitions,
    deps=["snippets", "rankings", "judgments", "judge_qualification"],
    code_version=f"gate-2+{dec.RULES_VERSION}",
    kinds={"duckdb"},
    group_name="relabel",
    description="One decision per (method, query, candidate): keep / to_positive / drop_negative / drop_query, "
    "the rule that fired, the evidence (snippet, ranks, verdicts, call ids, the prompt versions and models that "
    "produced them) and the qualification gate's reason. A method whose judge does not qualify is withheld: its "
    "changes are recorded as keep (withheld_unqualified_judge). The cleaned triplets are the `cleaned_triplets` view.",
    check_specs=[
        dg.AssetCheckSpec(ONE_DECISION, asset="relabeled", blocking=True, description="One decision per candidate."),
        dg.AssetCheckSpec(
            QUALIFIED, asset="relabeled", description="Every method's judge qualified (none was withheld)."
        ),
        dg.AssetCheckSpec(
            AGREEMENT,
            asset="relabeled",
            description="Where this partition's registry entry names a reference: every method's precision, "
            "recall, F1 and kappa against it; fails when an applied method's kappa is below min_kappa.",
        ),
    ],
)
def relabeled(context: dg.AssetExecutionContext, config: RelabeledConfig, duckdb: DuckDBStore):
    subset = context.partition_key
    with duckdb.reading() as conn:  # the evidence, read from a snapshot: no write lock while deciding
        proposed = dec.decide_partition(conn, subset, config)
        if not proposed.methods:
            raise dg.Failure(f"no evidence to decide from for {subset!r}: {'; '.join(proposed.skipped)}")
        # the qualification judge_qualification stored (measured once, there); a judge it did not measure (its
        # evidence re-made since) is withheld until that asset runs again
        measured = qualify.stored(conn, subset)
    registry = load_registry()
    references = {name: e for name, e in registry.items() if e.reference is not None}
    verdicts = qualify.gate_verdicts(measured, proposed.judges, config.min_kappa, config.min_reviews)
    decisions = qualify.apply_gate(proposed.frame, verdicts)
    proposed.frame = decisions.clear()  # the gated rows are the ones kept: one set of rows in memory from here
    methods = proposed.methods
    with duckdb.get_connection() as conn:
        replace_partition(conn, "decisions", subset, decisions, methods=methods)
        shown = next((m for m in methods if verdicts[m].qualified), methods[0])
        examples = conn.execute(EXAMPLES, [subset, shown]).fetchall()
        bad = scalar(conn, ONE_DECISION_SQL, {"s": subset})
        agreement = _agreement_check(
            conn, subset, references.get(shards.dataset_of(subset)), methods, verdicts, config.min_kappa
        )
        tables = table_metadata(conn, "decisions", subset)
    withheld = qualify.withheld_methods(decisions, verdicts)
    applied = [m for m, v in verdicts.items() if v.qualified]
    context.log.info(f"{subset}: applied {', '.join(applied) or 'none'}; withheld {', '.join(withheld) or 'none'}")
    for v in verdicts.values():  # the whole reason per method: the run's log, the UI, each decision's gate column
        context.log.debug(f"{v.method}: {v.reason}")
    summary = decisions.group_by("method", "action", "rule").len().sort("method", "action", "rule")
    gate_table = dg.MetadataValue.md(md_table(qualify.SUMMARY_HEADERS, qualify.summary_rows(verdicts.values())))
    changed = (  # lazily: only the four columns it reads are gathered, not a copy of every negative's row
        decisions.lazy()
        .filter(pl.col("role") == "negative")
        .group_by("method")
        .agg(applied=(pl.col("action") != "keep").mean(), proposed=(pl.col("proposed_action") != "keep").mean())
        .collect()
    )
    headers = ["method", "query_id", "query", "passage", "action", "rule", "snippet status", "snippet", "rank",
               "positive rank", "verdict", "full evidence"]  # fmt: skip
    return dg.MaterializeResult(
        metadata={
            **tables,
            "methods": ", ".join(methods),
            "skipped": "; ".join(proposed.skipped) or "none",
            "withheld_methods": ", ".join(withheld) or "none",
            "qualification_gate": gate_table,
            "share_of_negatives_changed": dg.MetadataValue.md(
                md_table(
                    ["method", "applied", "proposed by the rules"],
                    [(m, round(a, 3), round(p, 3)) for m, a, p in changed.sort("method").rows()],
                )
            ),
            "decisions_by_rule": dg.MetadataValue.md(
                md_table(["method", "action", "rule", "candidates"], summary.rows())
            ),
            "relabeled_examples": dg.MetadataValue.md(md_table(headers, examples)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=ONE_DECISION, passed=bad == 0, metadata={"candidates_without_exactly_one_decision": bad}
            ),
            dg.AssetCheckResult(
                check_name=QUALIFIED,
                passed=not withheld,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "withheld": ", ".join(withheld) or "none",
                    "min_kappa": config.min_kappa,
                    "gate": gate_table,
                },
            ),
            agreement,
        ],
    )


def _agreement_check(
    conn: ddb.DuckDBPyConnection,
    subset: str,
    entry: SourceEntry | None,
    methods: list[str],
    verdicts: dict[str, Any],
    min_kappa: float,
) -> dg.AssetCheckResult:
    if entry is None or entry.reference is None or not entry.reference.path.is_file():
        return dg.AssetCheckResult(check_name=AGREEMENT, passed=True, metadata={"reference": "none for this partition"})
    ref = ag.load_reference(entry.reference.format, entry.reference.path)
    predicted = ag.decision_predictions(
        conn.execute(
            "SELECT method, query_id, passage_id, role, proposed_action, proposed_rule FROM decisions WHERE subset = ?",
            [subset],
        ).pl()
    )
    scored = {m: ag.scores(predicted.get(m, {}), ref) for m in methods}
    rows = [[m] + [s[c] for c in ag.COLUMNS] for m, s in scored.items()]
    below = sorted(m for m in methods if verdicts[m].qualified and float(scored[m]["kappa"]) < min_kappa)
    return dg.AssetCheckResult(
        check_name=AGREEMENT,
        passed=not below,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "reference": f"{entry.reference.format}: {entry.reference.path.name}",
            "min_kappa": min_kappa,
            "applied_methods_below_min_kappa": ", ".join(below) or "none",
            "agreement_of_the_proposed_decisions": dg.MetadataValue.md(md_table(["method"] + ag.COLUMNS, rows)),
        },
    )
