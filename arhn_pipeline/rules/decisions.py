"""Decision rows without Dagster: the evidence each method decides from (SQL over the stored stage rows), and
one decision per (method, query, candidate) built from it by the rules in arhn.py and rlhn.py.

Every decision names the prompt version and model of the evidence it rests on, read from the stored rows:
re-deciding after a prompt edit, without re-running the stage, records the versions that produced the evidence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import duckdb
import polars as pl

from arhn_pipeline.rules import arhn, rlhn
from arhn_pipeline.schema import frame_schema
from arhn_pipeline.vocab import ArhnMethod, ParseStatus, RlhnCount, RlhnTechnique, Role

RULES_VERSION = "arhn-rules-2"

ARHN_EVIDENCE = """
WITH w AS (SELECT query_id, string_agg(DISTINCT template_version, '+' ORDER BY template_version) AS ranking_version,
                  string_agg(DISTINCT model, '+' ORDER BY model) AS ranking_model
           FROM ranking_windows WHERE subset = $s GROUP BY query_id)
SELECT c.query_id, c.passage_id, c.role,
       s.status AS snippet_status, s.snippet, s.call_id AS snippet_call_id, s.model AS snippet_model,
       s.template_version AS snippet_version,
       r.rank, r.positive_rank, r.placed, r.call_ids AS rank_call_ids, w.ranking_version, w.ranking_model,
       bool_or(r.placed) FILTER (WHERE c.role = 'positive' AND r.rank = r.positive_rank)
           OVER (PARTITION BY c.query_id) AS positive_placed
FROM candidates c
LEFT JOIN snippets s USING (subset, query_id, passage_id)
LEFT JOIN rankings r USING (subset, query_id, passage_id)
LEFT JOIN w USING (query_id)
WHERE c.subset = $s
ORDER BY c.query_id, c.role DESC, c.original_rank
"""

RLHN_EVIDENCE = """
SELECT c.query_id, c.passage_id, c.role, v.verdict, v.status AS verdict_status, v.call_id AS verdict_call_id,
       v.stage, v.model, v.template_version
FROM candidates c
LEFT JOIN verdicts v ON v.subset = c.subset AND v.query_id = c.query_id AND v.passage_id = c.passage_id AND v.final
WHERE c.subset = $s
ORDER BY c.query_id, c.role DESC, c.original_rank
"""

DECISION_SCHEMA = frame_schema("decisions")  # schema.py declares the columns


def arhn_evidence(conn: duckdb.DuckDBPyConnection, subset: str) -> pl.DataFrame:
    return conn.execute(ARHN_EVIDENCE, {"s": subset}).pl()


def rlhn_evidence(conn: duckdb.DuckDBPyConnection, subset: str) -> pl.DataFrame:
    return conn.execute(RLHN_EVIDENCE, {"s": subset}).pl()


# The evidence ARHN's rule reads (arhn.Evidence's fields): the rule runs once per distinct combination, which
# is few (ranks are small integers), and its answer is joined back to every row that has it. A partition of
# 1.6 M pairs decides in seconds and in the memory of its frames, not of a Python object per decision.
_ARHN_FIELDS = ["role", "snippet_status", "rank", "positive_rank", "placed", "positive_placed"]


def _text_or_none(column: str) -> pl.Expr:
    """The column's text, or null where it is null or empty."""
    return pl.when(pl.col(column) == "").then(None).otherwise(pl.col(column))


def _joined_models(first: str, second: str) -> pl.Expr:
    """The models of two pieces of evidence: each named once (" | " between two different ones), or null."""
    a, b = _text_or_none(first), _text_or_none(second)
    return (
        pl.when(a.is_null())
        .then(b)
        .when(b.is_null() | (a == b))
        .then(a)
        .otherwise(pl.concat_str([a, b], separator=" | "))
    )


def _decision_frame(rows: pl.DataFrame, subset: str) -> pl.DataFrame:
    """Decision rows in the table's columns; the gate's columns empty, the proposal the rule's."""
    filled = rows.with_columns(
        subset=pl.lit(subset),
        judge=pl.lit(None, pl.String),
        proposed_action=pl.col("action"),
        proposed_rule=pl.col("rule"),
        gate=pl.lit(None, pl.String),
    )
    missing = [pl.lit(None, dtype).alias(name) for name, dtype in DECISION_SCHEMA.items() if name not in filled.columns]
    return filled.with_columns(missing).select([pl.col(name).cast(dtype) for name, dtype in DECISION_SCHEMA.items()])


def arhn_decisions(
    evidence: pl.DataFrame, subset: str, methods: Sequence[ArhnMethod], allow_unverified: bool
) -> pl.DataFrame:
    """One row per (candidate, method), in the evidence's order and the methods' within it."""
    ev = evidence.with_row_index("_row").with_columns(
        pl.col("placed").fill_null(False).cast(pl.Boolean), pl.col("positive_placed").fill_null(False).cast(pl.Boolean)
    )
    ruled = []
    for combo in ev.select(_ARHN_FIELDS).unique().iter_rows(named=True):
        e = arhn.Evidence(**combo)
        for index, method in enumerate(methods):
            action, rule = arhn.decide(e, method, allow_unverified)
            ruled.append({**combo, "_method": index, "method": f"arhn:{method}", "action": str(action), "rule": rule})
    schema: dict[str, pl.DataType | type[pl.DataType]] = {k: ev.schema[k] for k in _ARHN_FIELDS}
    schema.update(_method=pl.Int64, method=pl.String, action=pl.String, rule=pl.String)
    table = pl.DataFrame(ruled, schema=schema)
    rows = (
        ev.join(table, on=_ARHN_FIELDS, how="inner", nulls_equal=True)
        .sort("_row", "_method")
        .with_columns(
            prompt_versions=pl.format(
                "snippets={},rankings={},rules={}",
                _text_or_none("snippet_version").fill_null("-"),
                _text_or_none("ranking_version").fill_null("-"),
                pl.lit(RULES_VERSION),
            ),
            model=_joined_models("snippet_model", "ranking_model"),
        )
    )
    return _decision_frame(rows, subset)


def rlhn_decisions(
    evidence: pl.DataFrame,
    subset: str,
    techniques: Sequence[RlhnTechnique],
    max_flagged: int,
    count: RlhnCount,
) -> pl.DataFrame:
    """One row per (candidate, technique), query by query, each query's rows per technique in the evidence's
    order. RLHN's rule reads a query's verdicts together: it runs once per distinct list of verdicts."""
    negative = pl.col("role") == Role.NEGATIVE
    ev = evidence.with_row_index("_row").with_columns(
        _query_first=pl.col("_row").min().over("query_id"),
        _k=negative.cast(pl.Int64).cum_sum().over("query_id") - 1,  # the negative's place among its query's
        label=pl.when(pl.col("verdict_status") == ParseStatus.DEGENERATE)
        .then(pl.lit(rlhn.DEGENERATE))
        .otherwise(pl.col("verdict")),
    )
    queries = (
        ev.group_by("query_id", maintain_order=True)
        .agg(
            labels=pl.col("label").filter(negative),
            stages=pl.col("stage").filter(negative).drop_nulls().unique(maintain_order=True),
            versions=pl.col("template_version").filter(negative).drop_nulls().unique(maintain_order=True),
        )
        .with_columns(
            prompt_versions=pl.format(
                "judgments={},stage={},rules={}",
                pl.when(pl.col("versions").list.len() > 0)
                .then(pl.col("versions").list.join(","))
                .otherwise(pl.lit("-")),
                pl.when(pl.col("stages").list.len() > 0).then(pl.col("stages").list.join(",")).otherwise(pl.lit("-")),
                pl.lit(RULES_VERSION),
            )
        )
    )
    memo: dict[tuple[str | None, ...], tuple[str, str, list[str], list[str]]] = {}

    def ruled(labels: Sequence[str | None], technique: RlhnTechnique) -> tuple[str, str, list[str], list[str]]:
        key = (technique, *labels)
        if key not in memo:
            (pos_action, pos_rule), negs = rlhn.decide_query(list(labels), technique, max_flagged, count)
            memo[key] = (str(pos_action), pos_rule, [str(a) for a, _ in negs], [r for _, r in negs])
        return memo[key]

    frames = []
    label_lists = queries["labels"].to_list()
    for index, technique in enumerate(techniques):
        decided = [ruled(labels, technique) for labels in label_lists]
        per_query = queries.select("query_id", "prompt_versions").with_columns(
            pl.Series("pos_action", [d[0] for d in decided], pl.String),
            pl.Series("pos_rule", [d[1] for d in decided], pl.String),
        )
        # the negatives' decisions one row each, keyed by (query, place among its negatives): joined to the
        # rows by key, never a query's whole list carried on each of its rows
        per_negative = (
            queries.select("query_id")
            .with_columns(
                pl.Series("neg_action", [d[2] for d in decided], pl.List(pl.String)),
                pl.Series("neg_rule", [d[3] for d in decided], pl.List(pl.String)),
            )
            .explode("neg_action", "neg_rule")
            .drop_nulls("neg_action")
            .with_columns(_k=pl.int_range(pl.len()).over("query_id"))
        )
        frames.append(
            ev.join(per_query, on="query_id", how="left")
            .join(per_negative, on=["query_id", "_k"], how="left")
            .with_columns(
                _method=pl.lit(index),
                method=pl.lit(f"rlhn:{technique}"),
                action=pl.when(negative).then(pl.col("neg_action")).otherwise("pos_action"),
                rule=pl.when(negative).then(pl.col("neg_rule")).otherwise("pos_rule"),
            )
            .drop("neg_action", "neg_rule", "pos_action", "pos_rule")
        )
    if not frames:
        return pl.DataFrame(schema=DECISION_SCHEMA)
    rows = pl.concat(frames).sort("_query_first", "_method", "_row")
    return _decision_frame(rows, subset)


class DecisionSettings(Protocol):
    """What deciding reads of its settings (relabel.config.DecisionConfig)."""

    @property
    def arhn_methods(self) -> Sequence[ArhnMethod]: ...

    @property
    def allow_unverified_snippets(self) -> bool: ...

    @property
    def rlhn_techniques(self) -> Sequence[RlhnTechnique]: ...

    @property
    def rlhn_max_flagged(self) -> int: ...

    @property
    def rlhn_count(self) -> RlhnCount: ...


@dataclass
class PartitionDecisions:
    frame: pl.DataFrame  # DECISION_SCHEMA rows, `judge` filled, before the qualification gate
    methods: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # what could not be decided, and why
    judges: dict[str, str] = field(default_factory=dict)  # method -> judge id
    judge_descriptions: dict[str, str] = field(default_factory=dict)  # judge id -> what it is made of


# The evidence that makes a judge: which models and prompt versions produced it.
EVIDENCE_SOURCES = {
    "arhn": [
        "SELECT DISTINCT 'snippets', model, template_version FROM snippets WHERE subset = $s",
        "SELECT DISTINCT 'rankings', model, template_version FROM ranking_windows WHERE subset = $s",
    ],
    "rlhn": [
        "SELECT DISTINCT 'stage ' || stage_index || ' ' || stage, model, coalesce(template_version, '-') "
        "FROM verdicts WHERE subset = $s",
    ],
}


def judge_identity(
    conn: duckdb.DuckDBPyConnection, subset: str, method: str, settings: DecisionSettings
) -> tuple[str, str]:
    """(id, description) of the judge behind a method's decisions on a partition: the method, the models and
    prompt versions its evidence was made with, the decision settings and the rules' version. Two partitions
    share a judge exactly when these are equal."""
    family = method.split(":", 1)[0]
    parts = sorted(
        f"{what}: {model}@{version}"
        for sql in EVIDENCE_SOURCES[family]
        for what, model, version in conn.execute(sql, {"s": subset}).fetchall()
    )
    chosen = {
        "arhn": {"allow_unverified_snippets": settings.allow_unverified_snippets},
        "rlhn": {"rlhn_max_flagged": settings.rlhn_max_flagged, "rlhn_count": str(settings.rlhn_count)},
    }[family]
    description = f"{method} | {'; '.join(parts)} | {json.dumps(chosen, sort_keys=True)} | {RULES_VERSION}"
    return hashlib.sha256(description.encode()).hexdigest()[:12], description


def decide_partition(conn: duckdb.DuckDBPyConnection, subset: str, settings: DecisionSettings) -> PartitionDecisions:
    """Every configured method's decisions on a partition, from its stored evidence (before the gate)."""
    have = dict(
        conn.execute(
            "SELECT 'rankings', count(*) FROM rankings WHERE subset = $s UNION ALL "
            "SELECT 'verdicts', count(*) FROM verdicts WHERE subset = $s UNION ALL "
            "SELECT 'candidates', count(*) FROM candidates WHERE subset = $s",
            {"s": subset},
        ).fetchall()
    )
    empty = not have["candidates"]  # an empty partition: every method decides nothing, and that is no error
    frames, out = [], PartitionDecisions(pl.DataFrame(schema=DECISION_SCHEMA))
    if settings.arhn_methods and (have["rankings"] or empty):
        frames.append(
            arhn_decisions(
                arhn_evidence(conn, subset), subset, settings.arhn_methods, settings.allow_unverified_snippets
            )
        )
        out.methods += [f"arhn:{m}" for m in settings.arhn_methods]
    elif settings.arhn_methods:
        out.skipped.append("ARHN: rankings not materialized for this partition")
    if settings.rlhn_techniques and (have["verdicts"] or empty):
        frames.append(
            rlhn_decisions(
                rlhn_evidence(conn, subset),
                subset,
                settings.rlhn_techniques,
                settings.rlhn_max_flagged,
                settings.rlhn_count,
            )
        )
        out.methods += [f"rlhn:{t}" for t in settings.rlhn_techniques]
    elif settings.rlhn_techniques:
        out.skipped.append("RLHN: judgments not materialized for this partition")
    for method in out.methods:
        judge, description = judge_identity(conn, subset, method, settings)
        out.judges[method] = judge
        out.judge_descriptions[judge] = description
    if frames:
        out.frame = pl.concat(frames).with_columns(judge=pl.col("method").replace_strict(out.judges))
    return out
