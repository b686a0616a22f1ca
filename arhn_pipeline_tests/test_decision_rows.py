"""Decision rows made by frames (rules/decisions.py) are, row for row and in order, the rules' own answers
(rules/arhn.py, rules/rlhn.py) on each candidate's evidence: every kind of evidence, missing values included."""

from __future__ import annotations

import itertools

import polars as pl

from arhn_pipeline.rules import arhn, decisions, rlhn
from arhn_pipeline.vocab import ArhnMethod, RlhnCount, RlhnTechnique

RULES = decisions.RULES_VERSION


def test_arhn_rows_are_the_rule_on_each_candidates_evidence():
    statuses = [None, "answer_verified", "answer_unverified", "no_answer", "answer_echoed"]
    rows = []
    combos = itertools.product(statuses, [None, 0, 2, 5], [None, 1, 3], [True, False, None], [True, False, None])
    for i, (status, rank, positive_rank, placed, positive_placed) in enumerate(combos):
        role = "positive" if i % 9 == 0 else "negative"
        rows.append(
            dict(
                query_id=f"q{i // 7}",
                passage_id=f"p{i}",
                role=role,
                snippet_status=status,
                snippet="s" if status else None,
                snippet_call_id=f"c{i}",
                snippet_model=["m1", None, ""][i % 3],
                snippet_version=["v1", None][i % 2],
                rank=rank,
                positive_rank=positive_rank,
                placed=placed,
                rank_call_ids=[f"r{i}"],
                ranking_version=["w", None, ""][i % 3],
                ranking_model=["m2", "m1", None, "m1"][i % 4],
                positive_placed=positive_placed,
            )  # fmt: skip
        )
    evidence = pl.DataFrame(rows, infer_schema_length=None)
    methods = [ArhnMethod.R, ArhnMethod.F, ArhnMethod.RF]
    for allow in (False, True):
        frame = decisions.arhn_decisions(evidence, "s", methods, allow)
        expected = [
            (f"arhn:{m}", r["passage_id"], *arhn.decide(
                arhn.Evidence(r["role"], r["snippet_status"], r["rank"], r["positive_rank"], bool(r["placed"]),
                              bool(r["positive_placed"])), m, allow))
            for r in rows
            for m in methods
        ]  # fmt: skip
        assert frame.select("method", "passage_id", "action", "rule").rows() == expected
        named = [list(dict.fromkeys(p for p in (r["snippet_model"], r["ranking_model"]) if p)) for r in rows]
        models = [" | ".join(n) if n else None for n in named for _ in methods]
        assert frame["model"].to_list() == models  # each model once, none when neither names one
        assert ("m1 | m2" in models) and (None in models) and ("m1" in models)
        versions = [
            f"snippets={r['snippet_version'] or '-'},rankings={r['ranking_version'] or '-'},rules={RULES}"
            for r in rows
            for _ in methods
        ]
        assert frame["prompt_versions"].to_list() == versions


def test_rlhn_rows_are_the_rule_on_each_querys_verdicts():
    queries = {
        "all_judged": ["better", "none", "worse", "none"],
        "one_missing": ["better", None, "none"],
        "degenerate": ["none", "none"],
        "unparsed": ["unparsed", "better"],
        "many_flagged": ["better"] * 5,
        "nothing_flagged": ["none", "none", "none"],
    }
    rows = []
    for q, verdicts in queries.items():
        rows.append(dict(query_id=q, passage_id=f"{q}-pos", role="positive", verdict=None, verdict_status=None,
                         verdict_call_id=None, stage=None, model=None, template_version=None))  # fmt: skip
        for k, v in enumerate(verdicts):
            status = "degenerate" if q == "degenerate" and k == 1 else ("unparsed" if v == "unparsed" else "parsed")
            rows.append(dict(query_id=q, passage_id=f"{q}-n{k}", role="negative", verdict=v, verdict_status=status,
                             verdict_call_id=f"c{q}{k}", stage="judge" if v else None, model="m" if v else None,
                             template_version="t1" if v else None))  # fmt: skip
    rows.append(dict(query_id="positive_only", passage_id="po", role="positive", verdict=None, verdict_status=None,
                     verdict_call_id=None, stage=None, model=None, template_version=None))  # fmt: skip
    evidence = pl.DataFrame(rows, infer_schema_length=None)
    techniques = list(RlhnTechnique)
    frame = decisions.rlhn_decisions(evidence, "s", techniques, 3, RlhnCount.better_and_worse)
    expected = []
    for q in [*queries, "positive_only"]:
        group = [r for r in rows if r["query_id"] == q]
        labels = [
            "degenerate" if r["verdict_status"] == "degenerate" else r["verdict"]
            for r in group
            if r["role"] == "negative"
        ]
        for t in techniques:
            pos, negs = rlhn.decide_query(labels, t, 3, RlhnCount.better_and_worse)
            decided = iter(negs)
            expected += [
                (f"rlhn:{t}", r["passage_id"], *(pos if r["role"] == "positive" else next(decided))) for r in group
            ]
    assert frame.select("method", "passage_id", "action", "rule").rows() == expected
    versions = dict(frame.select("query_id", "prompt_versions").unique().rows())
    assert versions["all_judged"] == f"judgments=t1,stage=judge,rules={decisions.RULES_VERSION}"
    assert versions["positive_only"] == f"judgments=-,stage=-,rules={decisions.RULES_VERSION}"
