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


def _joined(*parts: str | None) -> str | None:
    named = list(dict.fromkeys(p for p in parts if p))
    return " | ".join(named) if named else None


def arhn_decisions(
    evidence: pl.DataFrame, subset: str, methods: Sequence[ArhnMethod], allow_unverified: bool
) -> pl.DataFrame:
    rows = []
    for ev in evidence.iter_rows(named=True):
        e = arhn.Evidence(
            role=ev["role"],
            snippet_status=ev["snippet_status"],
            rank=ev["rank"],
            positive_rank=ev["positive_rank"],
            placed=bool(ev["placed"]),
            positive_placed=bool(ev["positive_placed"]),
        )
        versions = (
            f"snippets={ev['snippet_version'] or '-'},rankings={ev['ranking_version'] or '-'},rules={RULES_VERSION}"
        )
        for method in methods:
            action, rule = arhn.decide(e, method, allow_unverified)
            rows.append(
                dict(
                    subset=subset,
                    method=f"arhn:{method}",
                    query_id=ev["query_id"],
                    passage_id=ev["passage_id"],
                    role=ev["role"],
                    action=action,
                    rule=rule,
                    snippet_status=ev["snippet_status"],
                    snippet=ev["snippet"],
                    snippet_call_id=ev["snippet_call_id"],
                    rank=ev["rank"],
                    positive_rank=ev["positive_rank"],
                    rank_call_ids=ev["rank_call_ids"],
                    verdict=None,
                    verdict_call_id=None,
                    prompt_versions=versions,
                    model=_joined(ev["snippet_model"], ev["ranking_model"]),
                    judge=None,
                    proposed_action=action,
                    proposed_rule=rule,
                    gate=None,
                )
            )
    return pl.DataFrame(rows, schema=DECISION_SCHEMA)


def rlhn_decisions(
    evidence: pl.DataFrame,
    subset: str,
    techniques: Sequence[RlhnTechnique],
    max_flagged: int,
    count: RlhnCount,
) -> pl.DataFrame:
    rows = []
    for (qid,), group in evidence.group_by("query_id", maintain_order=True):
        negs = group.filter(pl.col("role") == Role.NEGATIVE)
        stages = ",".join(negs["stage"].drop_nulls().unique(maintain_order=True).to_list()) or "-"
        versions = (
            f"judgments={','.join(negs['template_version'].drop_nulls().unique(maintain_order=True).to_list()) or '-'}"
            f",stage={stages},rules={RULES_VERSION}"
        )
        labels = [
            "degenerate" if s == ParseStatus.DEGENERATE else v
            for v, s in zip(negs["verdict"].to_list(), negs["verdict_status"].to_list(), strict=True)
        ]
        for technique in techniques:
            pos_decision, neg_decisions = rlhn.decide_query(labels, technique, max_flagged, count)
            decided = iter(neg_decisions)
            for ev in group.iter_rows(named=True):
                action, rule = pos_decision if ev["role"] == Role.POSITIVE else next(decided)
                rows.append(
                    dict(
                        subset=subset,
                        method=f"rlhn:{technique}",
                        query_id=qid,
                        passage_id=ev["passage_id"],
                        role=ev["role"],
                        action=action,
                        rule=rule,
                        snippet_status=None,
                        snippet=None,
                        snippet_call_id=None,
                        rank=None,
                        positive_rank=None,
                        rank_call_ids=None,
                        verdict=ev["verdict"],
                        verdict_call_id=ev["verdict_call_id"],
                        prompt_versions=versions,
                        model=ev["model"],
                        judge=None,
                        proposed_action=action,
                        proposed_rule=rule,
                        gate=None,
                    )
                )
    return pl.DataFrame(rows, schema=DECISION_SCHEMA)


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
