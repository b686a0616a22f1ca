"""The qualification gate, end to end through Dagster with scripted judges: an oracle qualifies on a labelled
entry and its decisions are applied; a judge at chance is withheld; an echoed ranking is no evidence; no judge
qualifies on the partition it cleans or on an entry it was trained on."""

import hashlib
import json
import re

import dagster as dg
import duckdb

from arhn_pipeline.definitions import build_defs
from arhn_pipeline.engine.base import LLMRequest
from arhn_pipeline.engine.scripted import register_script
from arhn_pipeline_tests.conftest import engine, gather_then_decide, labelled_entry, write_jsonl, write_registry
from arhn_pipeline_tests.test_arhn_pipeline import PASSAGE, Q1, Q2, ranking, shown

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda", "zeta", "iota", "rho"]


def quiz(n: int) -> list[dict]:
    """n queries, each with its positive, one false negative (FN_...) and four true negatives."""
    rows = []
    for i in range(n):
        w = WORDS[i % len(WORDS)] + str(i)
        rows.append(
            {
                "query_id": f"z{i}",
                "query": f"what is {w}",
                "pos": [f"POS {w} is the answer to the question."],
                "neg": [f"FN_{i} {w} is explained here too."] + [f"TN_{i}_{k} unrelated text {k}." for k in range(4)],
            }
        )
    return rows


@register_script("coin_ranker")
def coin_ranker(req: LLMRequest) -> str:
    """Ranks by a hash of each passage: no reading of the query at all (and never the order shown)."""
    if "snippets/" in req.template:
        return json.dumps({"snippet": "NO_ANSWER"})
    order = sorted(shown(req), key=lambda p: hashlib.sha256(p[1].encode()).hexdigest())
    ids = [i for i, _ in order]
    if ids == sorted(ids) or ids == sorted(ids, reverse=True):
        ids = ids[1:] + ids[:1]
    return ranking(req, ids)


@register_script("quiz_oracle")
def quiz_oracle(req: LLMRequest) -> str:
    """Knows the quiz: the false negative first, then the positive, the rest from the back of the window."""
    if "snippets/" in req.template:
        text = PASSAGE.findall(req.messages[-1][1])[0][1]
        return json.dumps({"snippet": "NO_ANSWER" if text.startswith("TN_") else text.split()[1]})
    ids = [i for i, _ in sorted(shown(req), key=lambda p: (not p[1].startswith("FN_"), not p[1].startswith("POS")))]
    if ids in (sorted(ids), sorted(ids, reverse=True)):  # never the order shown or its reverse (echoed)
        ids = ids[:2] + sorted(ids[2:], reverse=ids[2:] == sorted(ids[2:]))
    return ranking(req, ids)


@register_script("echo_ranker")
def echo_ranker(req: LLMRequest) -> str:
    if "snippets/" in req.template:
        return json.dumps({"snippet": "NO_ANSWER"})
    return ranking(req, [i for i, _ in shown(req)])


def pipeline(tmp_path, monkeypatch, script: str, entries: dict):
    monkeypatch.setenv("ARHN_SOURCES", str(write_registry(tmp_path / "sources.yaml", entries)))
    defs = build_defs(engine(script))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", list(entries))
    # the LLM ranker (the scripted judge under test), and no cascade: these tests are about ARHN's judges
    config = {
        "ops": {
            "rankings": {"config": {"ranker": "llm"}},
            "judgments": {"config": {"stages": [{"name": "llm_judge", "kind": "llm"}]}},
            "judge_qualification": {"config": {"rlhn_techniques": []}},
            "relabeled": {"config": {"rlhn_techniques": []}},
        }
    }
    results = gather_then_decide(defs, instance, list(entries), run_config=config)
    return results, duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True)


def entries_for(tmp_path) -> dict:
    return {
        "toy": {"format": "bge", "path": str(write_jsonl(tmp_path / "toy.jsonl", quiz(12)))},
        "labelled": labelled_entry(tmp_path, "labelled", quiz(24)[12:], {f"FN_{i}" for i in range(12, 24)}),
    }


def test_an_oracle_qualifies_on_a_labelled_entry_and_its_decisions_are_applied(tmp_path, monkeypatch):
    results, conn = pipeline(tmp_path, monkeypatch, "quiz_oracle", entries_for(tmp_path))
    gate = dict(conn.execute("SELECT DISTINCT method, gate FROM decisions WHERE subset = 'toy'").fetchall())
    assert gate["arhn:R"] == (
        "applied: kappa 1.000 (95% interval 0.833 to 0.999), lower end >= 0.2, on 60 labelled negatives of labelled"
    )
    relabeled = conn.execute(
        "SELECT count(*) FROM decisions d JOIN passages p USING (passage_id) "
        "WHERE subset = 'toy' AND method = 'arhn:R' AND action = 'to_positive' AND p.text LIKE 'FN_%'"
    ).fetchone()[0]
    assert relabeled == 12
    # the labelled entry is the only reference: it qualifies toy's judge, and nothing qualifies its own
    stored = conn.execute("SELECT DISTINCT subset, reference FROM judge_qualification ORDER BY 1").fetchall()
    assert stored == [("toy", "labelled")]
    # F alone has nothing to filter here (the oracle ranks every false negative above the positive): withheld
    toy_meta = results[-2].asset_materializations_for_node("relabeled")[0].metadata
    assert toy_meta["withheld_methods"].value == "arhn:F"
    labelled_meta = results[-1].asset_materializations_for_node("relabeled")[0].metadata
    assert labelled_meta["withheld_methods"].value == "arhn:R+F, arhn:R, arhn:F"


def test_a_judge_at_chance_is_withheld_visibly(tmp_path, monkeypatch):
    results, conn = pipeline(tmp_path, monkeypatch, "coin_ranker", entries_for(tmp_path))
    rows = conn.execute(
        "SELECT action, rule, proposed_action, gate FROM decisions WHERE subset = 'toy' AND method = 'arhn:R' "
        "AND role = 'negative'"
    ).fetchall()
    proposed = [r for r in rows if r[2] != "keep"]
    assert proposed, "the coin proposes relabels"
    assert all(r[0] == "keep" and r[1] == "withheld_unqualified_judge" for r in proposed)
    kappa = float(re.search(r"kappa (-?[\d.]+) \(95% interval [-\d. to]+\) < 0.2", rows[0][3]).group(1))
    assert kappa < 0.2
    toy_decide = results[-2]  # decide toy (then decide labelled)
    meta = toy_decide.asset_materializations_for_node("relabeled")[0].metadata
    assert "arhn:R" in meta["withheld_methods"].value
    checks = {e.check_name: e.passed for e in toy_decide.get_asset_check_evaluations()}
    assert checks["judges_qualified"] is False
    cleaned = conn.execute(
        "SELECT sum(len(pos)) FROM cleaned_triplets WHERE subset = 'toy' AND method = 'arhn:R'"
    ).fetchone()[0]
    assert cleaned == 12  # only the original positives


def test_an_echoed_ranking_is_no_evidence(tmp_path, monkeypatch):
    _, conn = pipeline(tmp_path, monkeypatch, "echo_ranker", entries_for(tmp_path))
    statuses = conn.execute("SELECT DISTINCT status FROM ranking_windows WHERE subset = 'toy'").fetchall()
    assert statuses == [("echoed",)]
    proposed = conn.execute(
        "SELECT DISTINCT proposed_action, proposed_rule FROM decisions WHERE subset = 'toy' AND method = 'arhn:R' "
        "AND role = 'negative'"
    ).fetchall()
    assert proposed == [("keep", "keep_rank_not_placed_by_model")]


def test_the_classic_decision_paths_are_applied_once_the_oracle_qualifies(tmp_path, monkeypatch):
    # ten copies of the two queries: two alone are 7 labelled negatives, whose kappa interval reaches below 0
    copies = [dict(q, query_id=f"{q['query_id']}_{i}") for i in range(10) for q in (Q1, Q2)]
    entries = {
        "toy": {"format": "bge", "path": str(write_jsonl(tmp_path / "toy.jsonl", [Q1, Q2]))},
        "labelled": labelled_entry(tmp_path, "labelled", copies, {"NEG_ABOVE", "NEG_FILTER"}),
    }
    _, conn = pipeline(tmp_path, monkeypatch, "arhn_oracle", entries)
    applied = dict(
        conn.execute(
            "SELECT method, list(split_part(p.text, ' ', 1) ORDER BY p.text) FROM decisions d JOIN passages p "
            "USING (passage_id) WHERE subset = 'toy' AND action != 'keep' GROUP BY method"
        ).fetchall()
    )
    assert applied == {"arhn:R+F": ["NEG_ABOVE", "NEG_FILTER"], "arhn:R": ["NEG_ABOVE"], "arhn:F": ["NEG_FILTER"]}


def test_a_trained_judge_is_measured_on_a_reference_it_did_not_train_on(tmp_path, monkeypatch):
    """The trained_judge asset (real MiniLM embeddings) fitted on one labelled entry; cleaning a third, its
    agreement is measured and stored on the other labelled entry, never on the one it was trained on."""
    monkeypatch.setenv("ARHN_JUDGES_DIR", str(tmp_path / "judges"))
    entries = {
        "train_set": labelled_entry(tmp_path, "train_set", quiz(12), {f"FN_{i}" for i in range(12)}),
        "held_out": labelled_entry(tmp_path, "held_out", quiz(24)[12:], {f"FN_{i}" for i in range(12, 24)}),
        "toy": {"format": "bge", "path": str(write_jsonl(tmp_path / "toy.jsonl", quiz(36)[24:]))},
    }
    monkeypatch.setenv("ARHN_SOURCES", str(write_registry(tmp_path / "sources.yaml", entries)))
    defs = build_defs(engine("constant_no"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", list(entries))
    ingest = [a for a in defs.assets if a.key.to_user_string() == "raw_triplets"]
    assert dg.materialize(ingest, partition_key="train_set", instance=instance, resources=defs.resources).success
    trained = [a for a in defs.assets if a.key.to_user_string() == "trained_judge"]
    judge_config = {"name": "toyjudge", "train_on": ["train_set"], "embedders": ["all-MiniLM-L6-v2"]}
    result = dg.materialize(
        trained,
        instance=instance,
        resources=defs.resources,
        run_config={"ops": {"trained_judge": {"config": judge_config}}},
    )
    assert result.success and (tmp_path / "judges" / "toyjudge.json").is_file()
    config = {
        "ops": {
            "rankings": {"config": {"ranker": "llm"}},
            "judgments": {"config": {"stages": [{"name": "judge", "kind": "trained_judge", "model": "toyjudge"}]}},
            "judge_qualification": {"config": {"arhn_methods": []}},
            "relabeled": {"config": {"arhn_methods": []}},
        }
    }
    gather_then_decide(defs, instance, ["held_out", "toy", "train_set"], run_config=config)
    conn = duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True)
    measured = conn.execute(
        "SELECT DISTINCT reference, pairs FROM judge_qualification WHERE subset = 'toy' AND method = 'rlhn:rlhn'"
    ).fetchall()
    assert measured == [("held_out", 60)]  # never train_set, which the judge was fitted on
    kappa = conn.execute(
        "SELECT kappa FROM judge_qualification WHERE subset = 'toy' AND method = 'rlhn:rlhn'"
    ).fetchone()[0]
    gate = conn.execute("SELECT DISTINCT gate FROM decisions WHERE subset = 'toy' AND method = 'rlhn:rlhn'").fetchone()[
        0
    ]
    assert f"kappa {kappa:.3f}" in gate and "of held_out" in gate


def test_a_combined_method_is_gated_rule_by_rule():
    """R+F's relabels stand on R's qualification and its filtering on F's: a strong R cannot carry a coin F."""
    import polars as pl

    from arhn_pipeline.qualify.core import GateVerdict, apply_gate, withheld_methods
    from arhn_pipeline.rules.decisions import DECISION_SCHEMA

    def row(method, action, rule):
        base = {k: None for k in DECISION_SCHEMA}
        return {**base, "method": method, "role": "negative", "action": action, "rule": rule,
                "proposed_action": action, "proposed_rule": rule}  # fmt: skip

    frame = pl.DataFrame(
        [
            row("arhn:R+F", "to_positive", "R_ranked_above_positive"),
            row("arhn:R+F", "drop_negative", "F_answer_snippet_below_positive"),
            row("arhn:R", "to_positive", "R_ranked_above_positive"),
            row("arhn:F", "drop_negative", "F_answer_snippet_below_positive"),
        ],
        schema=DECISION_SCHEMA,
    )
    verdicts = {
        "arhn:R+F": GateVerdict("arhn:R+F", True, 0.28, 100, ["x"], "applied: kappa 0.280"),
        "arhn:R": GateVerdict("arhn:R", True, 0.74, 100, ["x"], "applied: kappa 0.740"),
        "arhn:F": GateVerdict("arhn:F", False, -0.07, 100, ["x"], "withheld: kappa -0.070"),
    }
    gated = apply_gate(frame, verdicts)
    assert gated["action"].to_list() == ["to_positive", "keep", "to_positive", "keep"]
    assert gated["gate"].to_list()[:2] == ["applied: kappa 0.740", "withheld: kappa -0.070"]
    assert withheld_methods(gated, verdicts) == ["arhn:R+F", "arhn:F"]


def test_a_judge_trained_on_a_partitions_reviews_is_qualified_there_only_on_the_held_out_half(tmp_path, monkeypatch):
    """A source with no reference: its reviews (every item of its sample answered as the quiz's truth) train a
    judge (real MiniLM embeddings) on the training half of the queries; the partition's qualification by its
    reviews then reads only the other half, and says so."""
    from arhn_pipeline.review import core as review_core
    from arhn_pipeline.review import data as review_data
    from arhn_pipeline.rules.config import RelabeledConfig
    from arhn_pipeline.store import DuckDBStore
    from arhn_pipeline.trained_judge.training import train

    monkeypatch.setenv("ARHN_JUDGES_DIR", str(tmp_path / "judges"))
    entries = {"mine": {"format": "bge", "path": str(write_jsonl(tmp_path / "mine.jsonl", quiz(24)))}}
    monkeypatch.setenv("ARHN_SOURCES", str(write_registry(tmp_path / "sources.yaml", entries)))
    defs = build_defs(engine("constant_no"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", ["mine"])
    ingest = [a for a in defs.assets if a.key.to_user_string() == "raw_triplets"]
    assert dg.materialize(ingest, partition_key="mine", instance=instance, resources=defs.resources).success
    store = DuckDBStore(database=str(tmp_path / "arhn.duckdb"))
    with store.get_connection() as conn:
        review_data.ensure_sample(conn, "mine", 120, 0, RelabeledConfig())
        texts = dict(conn.execute("SELECT passage_id, text FROM passages").fetchall())
        drawn = review_data.items(conn, "mine")
        review_data.record(
            conn,
            [
                dict(subset="mine", query_id=q, passage_id=p, reviewer="ann",
                     answered_at=f"2026-12-07T10:{i // 60:02}:{i % 60:02}",
                     answer="as_well" if texts[p].startswith("FN_") else "no")
                for i, (q, p) in enumerate(drawn.select("query_id", "passage_id").rows())
            ],
            origin="test",
        )  # fmt: skip
        judge, _ = train(conn, "mine_judge", ["mine:reviews"], ["all-MiniLM-L6-v2"])
    assert "training half" in judge.trained_on["mine:reviews"]
    halves = {review_core.train_half(q) for q in drawn["query_id"].to_list()}
    assert halves == {True, False}
    assert judge.labelled == sum(review_core.train_half(q) for q in drawn["query_id"].to_list())
    config = {
        "ops": {
            "rankings": {"config": {"ranker": "llm"}},
            "judgments": {"config": {"stages": [{"name": "judge", "kind": "trained_judge", "model": "mine_judge"}]}},
            "judge_qualification": {"config": {"arhn_methods": []}},
            "relabeled": {"config": {"arhn_methods": [], "min_reviews": 20}},
        }
    }
    results = gather_then_decide(defs, instance, ["mine"], run_config=config)
    conn = duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True)
    pairs = conn.execute(
        "SELECT DISTINCT reference, pairs FROM judge_qualification WHERE subset = 'mine' AND method = 'rlhn:rlhn'"
    ).fetchall()
    held_out = sum(not review_core.train_half(q) for q in drawn["query_id"].to_list())
    assert pairs == [("reviews:mine", held_out)]
    meta = results[-1].asset_materializations_for_node("judge_qualification")[0].metadata
    assert "only the held-out half of the queries (judge mine_judge trained on the other half)" in (
        meta["reference_entries"].value
    )
    gate = conn.execute("SELECT DISTINCT gate FROM decisions WHERE subset = 'mine' AND method = 'rlhn:rlhn'").fetchone()
    assert f"on {held_out} reviewed negatives of this partition" in gate[0]
