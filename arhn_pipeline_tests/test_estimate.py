"""`arhn estimate` and the budget of `arhn run`: every LLM stage counted against a count by hand from the source
file, the cascade's LLM judge at the share of queries that reach it (exact, measured elsewhere, or an upper bound
said to be one), dollars from the prices, and a hosted run above its budget stopped before any request."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from arhn_pipeline import plan
from arhn_pipeline.engine.estimate import Price, parse_prices, table
from arhn_pipeline.engine.scripted import ScriptedEngine
from arhn_pipeline.sources.registry import load_registry
from arhn_pipeline_tests.conftest import PROJECT
from arhn_pipeline_tests.helpers.fake_provider import FakeProvider


def by_hand(path):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return len(rows), sum(len(r["pos"]) + len(r["neg"]) for r in rows)


def verdict_rows(conn, subset: str, flagged: set[str], queries: list[str]) -> None:
    for q in queries:
        conn.execute(
            "INSERT INTO verdicts VALUES (?, 0, 'trained_judge', ?, 'p', 'none', 0.1, 'parsed', NULL, NULL, 'j', "
            "NULL, ?, NULL)",
            [subset, q, q not in flagged],
        )


def test_every_llm_stage_is_counted_and_the_judge_at_the_share_that_reaches_it(db):
    registry = load_registry(PROJECT / "sources.yaml")
    entry = registry.entry("sample_geo")
    queries, pairs_count = by_hand(entry.path)
    llm = ScriptedEngine(model="constant_no", judge=True)
    pairs, where = plan.partition_pairs(None, "sample_geo", entry)
    assert where.startswith("from the file") and pairs.height == pairs_count

    def stages(conn):
        return {e.stage: e for e in plan.stage_estimates(conn, plan.ReadOnlyCalls(conn), llm, "sample_geo", pairs, {})}

    first = stages(None)
    assert first["snippets"].requests == pairs_count  # one per (query, passage)
    assert first["rankings"].requests == queries  # every candidate set fits one window
    judge = first["judgments:llm_judge"]
    assert judge.requests == queries and "upper bound" in judge.reach
    # measured on another partition: 4 of 16 queries flagged there -> a quarter of these
    qids = pairs["query_id"].unique(maintain_order=True).to_list()
    verdict_rows(db, "other", {"a", "b", "c", "d"}, [*"abcdefghijklmnop"])
    judge = stages(db)["judgments:llm_judge"]
    assert judge.requests == (queries + 3) // 4 and "25.0% of queries" in judge.reach
    # measured here: exactly the flagged queries
    verdict_rows(db, "sample_geo", set(qids[:5]), qids)
    judge = stages(db)["judgments:llm_judge"]
    assert judge.requests == 5 and judge.reach.startswith("the 5 of 16 queries")
    # with no judge engine, neither the LLM ranker nor the LLM judge is asked: each row says so and why
    llm = ScriptedEngine(model="constant_no", judge=False)
    rows = stages(None)
    assert rows["snippets"].requests == pairs_count
    for name in ("rankings", "judgments:llm_judge"):
        assert rows[name].requests == 0 and rows[name].reach.startswith("not asked:") and "judge" in rows[name].reach
    # skipping snippets asks nothing of them; a configured LLM ranker is asked whatever the rule
    skip = {"snippets": {"config": {"skip": True}}, "rankings": {"config": {"ranker": "llm"}}}
    rows = {e.stage: e for e in plan.stage_estimates(None, plan.ReadOnlyCalls(None), llm, "g", pairs, skip)}
    assert rows["snippets"].requests == 0 and rows["snippets"].reach == "not asked: skip is set"
    assert rows["rankings"].requests == queries
    # the in-process engine's plan (arhn run on vLLM) counts the snippets too, and none when they are skipped
    assert plan.snippet_plan(None, llm, "sample_geo", entry).to_send == pairs_count
    skipped = plan.snippet_plan(None, llm, "sample_geo", entry, skip=True)
    assert skipped.to_send == 0 and "skip is set" in skipped.stage


def test_dollars_follow_the_prices_and_the_batch_discount():
    from arhn_pipeline.engine.estimate import Estimate

    a = Estimate("judgments:mini", "openai/gpt-4o-mini", 10, 0, 2_000_000, 100_000, None)
    b = Estimate("judgments:big", "openai/gpt-4o", 4, 1, 1_000_000, 30_000, 20_000)
    prices = parse_prices(["0.15,0.60", "gpt-4o=2.50,10.00"])
    assert prices == {None: Price(0.15, 0.60), "gpt-4o": Price(2.5, 10.0)}
    _, rows, total = table([("p", a), ("p", b)], prices, discount=0.5)
    mini = (2_000_000 * 0.15 + 100_000 * 0.60) / 1e6 * 0.5  # the bound: no earlier answers
    big = (1_000_000 * 2.50 + 20_000 * 10.00) / 1e6 * 0.5  # the expectation from earlier answers
    assert total == pytest.approx(mini + big)
    assert rows[0][6] == f"{mini:,.2f}" and rows[1][3] == "3" and rows[-1][0] == "all"
    with pytest.raises(ValueError, match="MODEL=IN,OUT"):
        parse_prices(["gpt-4o=cheap"])


def test_a_hosted_run_above_its_budget_stops_before_sending_anything(tmp_path):
    with FakeProvider() as server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ARHN_")},
            "ARHN_VAR_DIR": str(tmp_path / "var"),
            "ARHN_DB": str(tmp_path / "arhn.duckdb"),
            "ARHN_MODELS_DIR": os.environ["ARHN_MODELS_DIR"],
            "ARHN_ENGINE": "openai",
            "ARHN_MODEL": "gpt-4o-mini",
            "ARHN_OPENAI_BASE_URL": server.url,
            "ARHN_BUDGET_USD": "0.001",
        }
        cmd = [sys.executable, "-m", "arhn_pipeline.cli", "run", "--subset", "sample_geo", "--no-train"]
        done = subprocess.run([*cmd, "--price", "150,600"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 3, done.stdout + done.stderr
        assert "above the budget $0.00" in done.stderr and "--yes" in done.stderr
        assert "judgments:llm_judge" in done.stdout and "snippets" in done.stdout  # the table came first
        assert server.record.chat == []
        no_price = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert no_price.returncode == 2 and "--budget needs prices" in no_price.stderr
    assert not (tmp_path / "arhn.duckdb").exists()  # nothing ran: not even an ingest
