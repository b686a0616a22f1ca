"""RLHN: verdict parsing, the techniques, the margin stage on real text, and the cascade through Dagster."""

import json
import re

import dagster as dg
import duckdb
import numpy as np
import pytest

from arhn_pipeline import embeddings
from arhn_pipeline.engine.base import LLMRequest
from arhn_pipeline.engine.scripted import CALLS, register_script
from arhn_pipeline.judgments import core
from arhn_pipeline.rules import rlhn
from arhn_pipeline_tests.conftest import PROJECT, one_source_pipeline, write_jsonl


@pytest.mark.parametrize(
    ("response", "labels", "status"),
    [
        ('{"better": [2], "worse": [1]}', ["worse", "better", "none"], "parsed"),
        ('{"better": [], "worse": []}', ["none"] * 3, "parsed"),
        ('{"better": [2, 9], "worse": [2]}', ["none", "better", "none"], "repaired"),
        ("no", ["unparsed"] * 3, "unparsed"),
        ('{"better": [1]}', ["unparsed"] * 3, "unparsed"),
        ('{"better": "1", "worse": []}', ["unparsed"] * 3, "unparsed"),
        ("<verdict><better>[Doc (1)]</better></verdict>", ["unparsed"] * 3, "unparsed"),
    ],
)
def test_parse_verdict_never_reads_failure_as_nothing_flagged(response, labels, status):
    verdict = core.parse_verdict(response, 3)
    assert (verdict.labels, verdict.status) == (labels, status)
    assert verdict.flagged == (status == "unparsed" or any(lab in ("better", "worse") for lab in labels))


B, W, N = "better", "worse", "none"


@pytest.mark.parametrize(
    ("verdicts", "technique", "count", "expected_pos", "expected_negs"),
    [
        ([B, W, N], "rlhn", "better_and_worse", "keep", ["to_positive", "to_positive", "keep"]),
        ([B, W, N], "rlhn", "better", "keep", ["to_positive", "keep", "keep"]),
        ([B, W, N], "hn_remove", "better_and_worse", "keep", ["drop_negative", "drop_negative", "keep"]),
        ([B, N, N], "remove", "better_and_worse", "drop_query", ["drop_query"] * 3),
        ([N, N, N], "remove", "better_and_worse", "keep", ["keep"] * 3),
        ([B, W, N], "default", "better_and_worse", "keep", ["keep"] * 3),
        (["unparsed"] * 3, "rlhn", "better_and_worse", "keep", ["keep"] * 3),
        ([None, None], "hn_remove", "better_and_worse", "keep", ["keep"] * 2),
    ],
)
def test_rlhn_techniques(verdicts, technique, count, expected_pos, expected_negs):
    pos, negs = rlhn.decide_query(verdicts, technique, max_flagged=8, count=count)
    assert pos[0] == expected_pos and [a for a, _ in negs] == expected_negs


def test_more_than_max_flagged_drops_the_query():
    pos, negs = rlhn.decide_query([B] * 9 + [N], "rlhn", max_flagged=8)
    assert pos == ("drop_query", "drop_query_more_than_8_flagged") and {a for a, _ in negs} == {"drop_query"}
    assert rlhn.decide_query([B] * 8 + [N], "rlhn", max_flagged=8)[1][0][0] == "to_positive"
    assert rlhn.decide_query(["unparsed"] * 9, "rlhn")[1][0] == ("keep", "keep_verdict_unparsed")


def test_margin_stage_on_real_text_flags_a_paraphrased_answer_not_an_unrelated_passage():
    rows = {
        json.loads(line)["query_id"]: json.loads(line) for line in (PROJECT / "data/samples/sample_geo.jsonl").open()
    }
    row = rows["sample_geo-everest"]
    model = embeddings.load()
    q, pos = (
        model.encode([row["query"]], normalize_embeddings=True)[0],
        model.encode(row["pos"], normalize_embeddings=True),
    )
    neg = model.encode(row["neg"], normalize_embeddings=True)
    labels, scores = core.margin_labels(q, pos, neg, margin=0.1)
    by_id = dict(zip(row["neg_ids"], labels, strict=True))
    assert by_id["sample_geo-everest-fn"] == "worse"  # "the summit ... stands 8,848.86 m above sea level"
    assert by_id["sample_geo-everest-rel"] == "none"  # the first ascent: same mountain, not the answer
    assert all(label == "none" for pid, label in by_id.items() if not pid.startswith("sample_geo-everest"))
    pos_score = float(pos[0] @ q)
    assert all((lab != "none") == (s >= 0.9 * pos_score) for lab, s in zip(labels, scores, strict=True))
    assert np.isclose(np.linalg.norm(q), 1.0)


# Stage 1 ("cheap"): flags the first negative of every query whose text mentions "alpha"; stage 2 ("strong"):
# confirms it as better for one query, and answers garbage for another.
PASSAGE = re.compile(r'<passage id="(\d+)">\n(.*?)\n</passage>', re.DOTALL)


@register_script("cheap_judge")
def cheap_judge(req: LLMRequest) -> str:
    prompt = req.messages[-1][1]
    return json.dumps({"better": [], "worse": [req.labels[0]] if "alpha" in prompt else []})


@register_script("strong_judge")
def strong_judge(req: LLMRequest) -> str:
    prompt = req.messages[-1][1]
    if "garbled" in prompt:
        return "I think passage one."
    return json.dumps({"better": [req.labels[0]], "worse": []})


def toy_rows():
    def row(qid, query, negs):
        return {"query_id": qid, "query": query, "pos": [f"positive for {qid}"], "neg": negs}

    return [
        row("a", "what is alpha", ["alpha is a letter", "rivers flow"]),
        row("b", "garbled alpha question", ["alpha again", "mountains"]),
        row("c", "what is beta", ["beta is a letter", "lakes"]),
    ]


def test_two_stage_cascade_sends_only_flagged_queries_to_stage_two(tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "toy.jsonl", toy_rows())
    defs, instance = one_source_pipeline(tmp_path, monkeypatch, source, "cheap_judge")
    stages = [{"name": "cheap", "kind": "llm"}, {"name": "strong", "kind": "llm", "model": "strong_judge"}]
    before = CALLS["strong_judge"]
    run_config = {
        "ops": {
            "judgments": {"config": {"stages": stages}},
            "relabeled": {"config": {"rlhn_techniques": ["rlhn", "hn_remove"]}},
        }
    }
    result = dg.materialize(
        [a for a in defs.assets if a.key.to_user_string() in ("raw_triplets", "judgments", "relabeled")],
        partition_key="toy",
        instance=instance,
        resources=defs.resources,
        run_config=run_config,
    )
    assert result.success
    assert CALLS["strong_judge"] - before == 2  # queries a and b: the ones stage 1 flagged
    conn = duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True)
    seen = conn.execute(
        "SELECT stage, list(DISTINCT query_id ORDER BY query_id) FROM verdicts GROUP BY stage ORDER BY stage"
    ).fetchall()
    assert seen == [("cheap", ["a", "b", "c"]), ("strong", ["a", "b"])]
    final = dict(
        conn.execute(
            "SELECT query_id || ':' || split_part(p.text, ' ', 1), stage || '/' || verdict FROM verdicts v "
            "JOIN passages p USING (passage_id) WHERE final"
        ).fetchall()
    )
    assert final == {
        "a:alpha": "strong/better",
        "a:rivers": "strong/none",
        "b:alpha": "strong/unparsed",
        "b:mountains": "strong/unparsed",
        "c:beta": "cheap/none",
        "c:lakes": "cheap/none",
    }
    decisions = dict(
        conn.execute(
            "SELECT method || ' ' || query_id || ':' || split_part(p.text, ' ', 1), "
            "proposed_action || ' ' || proposed_rule "
            "FROM decisions d JOIN passages p USING (passage_id) WHERE role = 'negative'"
        ).fetchall()
    )
    assert decisions["rlhn:rlhn a:alpha"] == "to_positive rlhn_flagged_to_positive"
    assert decisions["rlhn:hn_remove a:alpha"] == "drop_negative hn_remove_flagged"
    assert decisions["rlhn:rlhn b:alpha"] == "keep keep_verdict_unparsed"
    assert decisions["rlhn:rlhn c:beta"] == "keep keep_not_flagged"
    # one partition and no reference entry: nobody measured this judge, so nothing it proposed is applied
    applied = conn.execute("SELECT DISTINCT action, rule FROM decisions WHERE proposed_action != 'keep'").fetchall()
    assert applied == [("keep", "withheld_unqualified_judge")]
    meta = result.asset_materializations_for_node("relabeled")[0].metadata
    assert "ARHN: rankings not materialized" in meta["skipped"].value
    stages_table = result.asset_materializations_for_node("judgments")[0].metadata["stages"].value
    assert "| cheap | llm | 3 | 2 |" in stages_table and "| strong | llm | 2 | 2 |" in stages_table


def test_the_majority_of_several_samples_stands_with_its_vote_margin():
    P, U = core.ParseStatus.PARSED, core.ParseStatus.UNPARSED
    B, W, N = core.BETTER, core.WORSE, core.NONE
    verdict, margins = core.vote([core.Verdict([B, N], P), core.Verdict([B, W], P), core.Verdict([N, N], P)])
    assert verdict.labels == [B, N] and margins == pytest.approx([1 / 3, 1 / 3])
    verdict, margins = core.vote([core.Verdict([B], P), core.Verdict([N], P)])  # a tie is no majority to relabel
    assert verdict.labels == [N] and margins == [0.0]
    verdict, margins = core.vote([core.Verdict([W, B], P), core.Verdict([U, U], U)])  # no evidence abstains
    assert verdict.labels == [W, B] and margins == [0.5, 0.5]
    verdict, margins = core.vote([core.Verdict([U], U), core.Verdict([U], U)])
    assert verdict.status == U and verdict.flagged and margins == [0.0]  # no evidence: sent on, never cleared


@register_script("flags_first_on_seeds_0_1")
def flags_first_on_seeds_0_1(req: LLMRequest) -> str:
    return json.dumps({"better": [req.labels[0]] if req.sampling.seed in (0, 1) else [], "worse": []})


def test_an_llm_stage_with_three_samples_asks_three_seeds_and_stores_the_vote(tmp_path, store):
    import polars as pl

    from arhn_pipeline.engine.scripted import ScriptedEngine

    frame = pl.DataFrame(
        {
            "query_id": ["q1"] * 3,
            "query": ["what do cows eat"] * 3,
            "passage_id": ["p0", "n1", "n2"],
            "role": ["positive", "negative", "negative"],
            "passage": ["Cows eat grass.", "Cows graze on grass.", "Rain."],
        }
    )
    qs = core.QuerySet(frame)
    engine = ScriptedEngine(model="flags_first_on_seeds_0_1")
    results, stats = core.run_llm_stage(
        qs, ["q1"], core.DEFAULT_TEMPLATE, engine, store, 8, 64, samples=3, temperature=0.8
    )
    r = results["q1"]
    assert stats.cache_misses == 3  # three seeds, three distinct calls
    assert r.verdict.labels == [core.BETTER, core.NONE] and r.vote_margins == pytest.approx([1 / 3, 1.0])
    assert r.verdict.notes.count(",") == 2 and r.call_id in r.verdict.notes  # every sample's call is named
    again, stats = core.run_llm_stage(
        qs, ["q1"], core.DEFAULT_TEMPLATE, engine, store, 8, 64, samples=3, temperature=0.8
    )
    assert stats.cache_misses == 0 and again["q1"].vote_margins == r.vote_margins


def test_agreement_by_vote_margin_shows_whether_unanimous_verdicts_are_worth_more(db):
    from arhn_pipeline import agreement

    # unanimous verdicts all right, split ones all wrong
    rows = [("u1", "better", 1.0, True), ("u2", "none", 1.0, False), ("s1", "better", 1 / 3, False)]
    rows += [("s2", "none", 1 / 3, True)]
    for pid, verdict, margin, _ in rows:
        db.execute(
            "INSERT INTO verdicts VALUES "
            "('t', 1, 'llm_judge', 'q', ?, ?, NULL, 'parsed', NULL, 'c', 'm', 'v', true, ?)",
            [pid, verdict, margin],
        )
    reference = {("q", pid): truth for pid, _, _, truth in rows}
    table = {
        row[0]: dict(zip(agreement.COLUMNS, row[1:], strict=True))
        for row in agreement.by_vote_margin(db, "t", reference)
    }
    assert list(table) == ["stage:llm_judge margin 1.00", "stage:llm_judge margin 0.33"]
    assert table["stage:llm_judge margin 1.00"]["f1"] == 1.0 and table["stage:llm_judge margin 0.33"]["f1"] == 0.0


def test_a_prompt_named_in_run_config_is_read_only_from_the_prompt_folders(tmp_path, monkeypatch):
    from arhn_pipeline.engine.prompts import load_named

    monkeypatch.delenv("ARHN_PROMPTS_DIR", raising=False)
    base = core.DEFAULT_PROMPT.parent
    assert load_named("judge.prompt.yaml", base).version == core.DEFAULT_TEMPLATE.version
    secret = tmp_path / "secret.prompt.yaml"
    secret.write_text('user: "{{ x }}"\nsecret: TOP-SECRET-LINE\n')
    link = base / "zz-test-link.prompt.yaml"
    for name in ["/etc/passwd", "../../../../etc/passwd", str(secret), "../rankings/../../pyproject.toml"]:
        with pytest.raises(ValueError, match="prompt folders|stage's folder") as exc:
            load_named(name, base)
        assert "root:" not in str(exc.value) and "TOP-SECRET" not in str(exc.value)
    link.symlink_to(secret)  # a symlink inside the folder to a file outside it
    try:
        with pytest.raises(ValueError, match="stage's folder"):
            load_named(link.name, base)
    finally:
        link.unlink()
    monkeypatch.setenv("ARHN_PROMPTS_DIR", str(tmp_path))  # a folder the operator allows, not run config
    assert load_named(str(secret), base).user == "{{ x }}"
    broken = tmp_path / "broken.prompt.yaml"
    broken.write_text("user: [unclosed TOP-SECRET-LINE\n")
    with pytest.raises(ValueError, match="not a YAML file") as exc:
        load_named(str(broken), base)
    assert "TOP-SECRET" not in str(exc.value)
