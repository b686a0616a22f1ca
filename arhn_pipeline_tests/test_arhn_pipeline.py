"""ARHN end to end through Dagster: snippets -> rankings -> relabeled, with a scripted engine whose answers
are chosen per passage to drive every decision path; and once with the real vLLM engine."""

import json
import re

import duckdb
import pytest

from arhn_pipeline.engine.base import LLMRequest
from arhn_pipeline.engine.scripted import register_script
from arhn_pipeline_tests.conftest import PROJECT, one_source_pipeline, write_jsonl

Q1 = {
    "query_id": "q1",
    "query": "what is alpha",
    "pos": ["POS alpha is the first letter of the Greek alphabet."],
    "neg": [
        "NEG_KEEP rivers flow downhill.",
        "NEG_FILTER in short, alpha is the first letter, as every schoolchild learns.",
        "NEG_ABOVE alpha is the first Greek letter, used in mathematics and physics.",
        "NEG_FAKE a passage about something.",
        "NEG_UNPARSED a passage the model stumbles on.",
    ],
}
Q2 = {
    "query_id": "q2",
    "query": "broken permutation case",
    "pos": ["POS2 the positive passage."],
    "neg": ["NEG2_A first negative.", "NEG2_B second negative."],
}
# the scripted engine ranks (on a CPU the default ranker is the trained judge)
LLM_RANKER = {"ops": {"rankings": {"config": {"ranker": "llm"}}}}
PASSAGE = re.compile(r'<passage(?: id="([^"]+)")?>\n(.*?)\n</passage>', re.DOTALL)


def shown(req: LLMRequest) -> list[tuple[int, str]]:
    """(position, text) of each passage the prompt shows, the known positive of a judge request left out."""
    found = [text for ident, text in PASSAGE.findall(req.messages[-1][1]) if ident != "known"]
    return list(enumerate(found))


def ranking(req: LLMRequest, positions: list[int]) -> str:
    """A ranking answer naming the passages at `positions` by the request's labels."""
    return json.dumps({"ranking": [req.labels[i] for i in positions]})


@register_script("arhn_oracle")
def arhn_oracle(req: LLMRequest) -> str:
    prompt = req.messages[-1][1]
    if "snippets/" in req.template:
        text = PASSAGE.findall(prompt)[0][1]
        if text.startswith(("POS alpha", "NEG_FILTER")):
            return json.dumps({"snippet": "alpha is the first letter"})
        if text.startswith("NEG_FAKE"):
            return json.dumps({"snippet": "alpha is the last letter"})
        if text.startswith("NEG_UNPARSED"):
            return '{"snippet": "alpha is'
        return json.dumps({"snippet": "NO_ANSWER"})
    if "broken permutation" in prompt:
        third = req.labels[min(2, len(req.labels) - 1)]
        return f'{{"ranking": ["{third}", "{third}", "zzzz"'
    # the rest from the back of the window: a ranking of its own, never the order shown (that would be echoed)
    order = sorted(shown(req), key=lambda p: (not p[1].startswith("NEG_ABOVE"), not p[1].startswith("POS"), -p[0]))
    return ranking(req, [i for i, _ in order])


def run_partition(tmp_path, monkeypatch, script, rows=None, source=None, name="toy"):
    if source is None:
        source = write_jsonl(tmp_path / "toy.jsonl", rows)
    defs, instance = one_source_pipeline(tmp_path, monkeypatch, source, script, name)
    result = defs.resolve_job_def("clean_subset").execute_in_process(
        partition_key=name, instance=instance, run_config=LLM_RANKER
    )
    assert result.success
    return result


def test_every_arhn_decision_path(tmp_path, monkeypatch):
    result = run_partition(tmp_path, monkeypatch, "arhn_oracle", [Q1, Q2])
    conn = duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True)
    decided = dict(
        conn.execute(
            """SELECT split_part(p.text, ' ', 1),
                      d.proposed_action || ' ' || d.proposed_rule || ' ' || coalesce(d.snippet_status, '')
               FROM decisions d JOIN passages p USING (passage_id) WHERE method = 'arhn:R+F' AND query_id = 'q1'"""
        ).fetchall()
    )
    assert decided == {
        "POS": "keep original_positive answer_verified",
        "NEG_ABOVE": "to_positive R_ranked_above_positive no_answer",
        "NEG_FILTER": "drop_negative F_answer_snippet_below_positive answer_verified",
        "NEG_KEEP": "keep keep_below_positive_no_answer no_answer",
        "NEG_FAKE": "keep keep_snippet_unverified answer_unverified",
        "NEG_UNPARSED": "keep keep_snippet_unparsed unparsed",
    }
    # R alone relabels but does not filter; F alone filters but does not relabel
    by_method = dict(
        conn.execute(
            """SELECT method, list(split_part(p.text, ' ', 1) ORDER BY p.text) FROM decisions d
               JOIN passages p USING (passage_id) WHERE query_id = 'q1' AND proposed_action != 'keep'
               AND method LIKE 'arhn:%' GROUP BY method"""
        ).fetchall()
    )
    assert by_method == {"arhn:R+F": ["NEG_ABOVE", "NEG_FILTER"], "arhn:R": ["NEG_ABOVE"], "arhn:F": ["NEG_FILTER"]}

    # one partition and no reference: no judge qualified, so nothing proposed reaches the cleaned triplets
    # (test_gate.py: the same oracle, qualified on a labelled entry, is applied)
    cleaned = conn.execute(
        "SELECT pos, neg FROM cleaned_triplets WHERE method = 'arhn:R+F' AND query_id = 'q1'"
    ).fetchone()
    assert [p.split()[0] for p in cleaned[0]] == ["POS"] and len(cleaned[1]) == 5

    # the broken permutation was repaired and recorded; its appended candidates earn no relabel
    window = conn.execute("SELECT status, repairs FROM ranking_windows WHERE query_id = 'q2'").fetchone()
    assert window[0] == "repaired"
    assert (
        "not JSON" in window[1]
        and "dropped duplicate ids ['" in window[1]
        and "dropped unknown ids ['zzzz']" in window[1]
    )
    q2 = conn.execute(
        "SELECT count(*) FILTER (WHERE action = 'keep'), count(*) FROM decisions WHERE query_id = 'q2' "
        "AND method = 'arhn:R+F'"
    ).fetchone()
    assert q2 == (3, 3)

    # the full reason for a relabeled negative, from the stored rows alone
    trail = conn.execute(
        """SELECT d.rank, d.positive_rank, c.response, c.messages FROM decisions d
           JOIN passages p USING (passage_id) JOIN llm_calls c ON c.call_id = d.rank_call_ids[1]
           WHERE d.method = 'arhn:R+F' AND p.text LIKE 'NEG_ABOVE%'"""
    ).fetchone()
    assert trail[0] < trail[1] and '"ranking"' in trail[2] and "NEG_ABOVE" in trail[3]

    snippets_meta = result.asset_materializations_for_node("snippets")[0].metadata
    assert snippets_meta["status_unparsed"].value == 1 and snippets_meta["status_answer_unverified"].value == 1
    relabeled_meta = result.asset_materializations_for_node("relabeled")[0].metadata
    assert "arhn:R+F" in relabeled_meta["withheld_methods"].value
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["every_candidate_set_is_fully_ranked"] and checks["one_decision_per_candidate_and_method"]
    assert checks["every_pair_has_a_snippet"]


def test_skipped_snippets_ask_nothing_and_give_f_no_evidence(tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "toy.jsonl", [Q1])
    defs, instance = one_source_pipeline(tmp_path, monkeypatch, source, "arhn_oracle", "toy")
    run_config = {"ops": {**LLM_RANKER["ops"], "snippets": {"config": {"skip": True}}}}
    result = defs.resolve_job_def("clean_subset").execute_in_process(
        partition_key="toy", instance=instance, run_config=run_config
    )
    assert result.success
    conn = duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True)
    assert conn.execute("SELECT count(*) FROM llm_calls WHERE template LIKE 'snippets/%'").fetchone() == (0,)
    assert conn.execute("SELECT DISTINCT status, call_id FROM snippets").fetchall() == [("not_asked", None)]
    decided = dict(
        conn.execute(
            """SELECT split_part(p.text, ' ', 1), d.proposed_action || ' ' || d.proposed_rule FROM decisions d
               JOIN passages p USING (passage_id) WHERE method = 'arhn:R+F' AND role = 'negative'"""
        ).fetchall()
    )
    # R still relabels from the ranking; F has nothing to filter on, so the snippet-backed drop is gone
    assert decided["NEG_ABOVE"] == "to_positive R_ranked_above_positive"
    assert decided["NEG_FILTER"] == "keep keep_snippet_not_asked"
    meta = result.asset_materializations_for_node("snippets")[0].metadata
    assert meta["skipped"].value is True and meta["status_not_asked"].value == 6


def test_sliding_windows_rank_a_large_candidate_set(tmp_path, monkeypatch):
    big = {
        "query_id": "big",
        "query": "what is alpha",
        "pos": ["POS alpha."],
        "neg": [f"NEG_KEEP filler passage {i}." for i in range(23)] + ["NEG_ABOVE alpha, best."],
    }
    run_partition(tmp_path, monkeypatch, "arhn_oracle", [big])
    conn = duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True)
    windows = conn.execute("SELECT span_start, span_end FROM ranking_windows ORDER BY window_index").fetchall()
    assert windows == [(5, 25), (0, 15)]
    top = conn.execute(
        "SELECT split_part(p.text, ' ', 1) FROM rankings r JOIN passages p USING (passage_id) ORDER BY rank LIMIT 2"
    ).fetchall()
    assert [t[0] for t in top] == ["NEG_ABOVE", "POS"]


@pytest.mark.vllm
def test_real_vllm_runs_the_three_arhn_assets_end_to_end(tmp_path, monkeypatch):
    lines = (PROJECT / "data" / "samples" / "sample_geo.jsonl").read_text().splitlines()[:3]
    source = tmp_path / "geo3.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = run_partition(tmp_path, monkeypatch, None, source=source, name="geo3")
    conn = duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True)
    statuses = dict(conn.execute("SELECT status, count(*) FROM snippets GROUP BY 1").fetchall())
    assert sum(statuses.values()) == 33
    assert set(statuses) <= {"answer_verified", "answer_unverified", "no_answer", "unparsed"}
    assert conn.execute("SELECT count(*) FROM rankings").fetchone()[0] == 33
    assert conn.execute("SELECT count(DISTINCT engine) FROM llm_calls").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM decisions WHERE method = 'arhn:R+F'").fetchone()[0] == 33
    assert conn.execute("SELECT count(*) FROM llm_calls WHERE parse_status IS NULL").fetchone()[0] == 0
    meta = result.asset_materializations_for_node("snippets")[0].metadata
    assert meta["llm_prompt_tokens_sent"].value > 0 and meta["llm_cache_misses"].value == 33
    engine_settings = json.loads(meta["engine_settings"].value)  # what vLLM was given, read back
    assert engine_settings["enforce_eager"] is True and engine_settings["tensor_parallel_size"] == 1
