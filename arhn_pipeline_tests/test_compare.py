"""The method comparison and the reranker: a cross-encoder trained on a toy set changes its scores and learns
it; re-ranking keeps the first stage's top k; and the whole comparison through Dagster (a scripted oracle
judge, real MiniLM retrievers and rerankers): one row per method and eval set, and agreement figures equal to
`arhn agreement`'s on the same data, in the asset, the CSV and `arhn compare`."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pytest

from arhn_pipeline import agreement as ag
from arhn_pipeline import embeddings
from arhn_pipeline.compare import core as cmp
from arhn_pipeline.definitions import build_defs
from arhn_pipeline.rerank import core as rr
from arhn_pipeline.rerank.assets import TrainedRerankerConfig
from arhn_pipeline.sources.registry import load_registry
from arhn_pipeline_tests.conftest import PROJECT, engine, labelled_entry, write_registry
from arhn_pipeline_tests.test_gate import quiz
from arhn_pipeline_tests.test_retriever import TOY

BIN = Path(sys.executable).parent


def test_reranker_pairs_label_positives_and_sample_negatives():
    rows = [
        {"query": "q1", "pos": ["p1", "p1b"], "neg": ["n1", "n2", "n3"]},
        {"query": "q2", "pos": [], "neg": ["x"]},
        {"query": "q3", "pos": ["p3"], "neg": []},
    ]
    out, counts = rr.pairs(rows, TrainedRerankerConfig(negatives_per_query=2))
    assert counts == {"queries": 2, "positive_pairs": 3, "negative_pairs": 2}
    labels = {(e["query"], e["passage"]): e["label"] for e in out}
    assert labels[("q1", "p1")] == labels[("q1", "p1b")] == labels[("q3", "p3")] == 1.0
    assert sum(1 for (q, p), v in labels.items() if v == 0.0 and q == "q1" and p in ("n1", "n2", "n3")) == 2
    assert not any(q == "q2" for q, _ in labels)


class LengthScorer:
    """A stand-in cross-encoder: the longer the passage, the better."""

    def predict(self, pairs, batch_size=64, convert_to_numpy=True):
        return np.array([float(len(p)) for _, p in pairs])


def test_rerank_rescores_the_first_stage_top_k_only():
    corpus = {"a": "x", "b": "xxx", "c": "xx", "d": "xxxxxxxx"}
    run = {"q": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.1}}
    out = rr.rerank(LengthScorer(), corpus, {"q": "query"}, run, k=3)
    assert out == {"q": {"b": 3.0, "c": 2.0, "a": 1.0}}  # d was below the first stage's top 3: left out


def test_a_reranker_trained_on_a_toy_set_changes_its_scores_and_learns_it(tmp_path):
    s = TrainedRerankerConfig(negatives_per_query=3, batch_size=4, epochs=4, learning_rate=1e-4, max_length=32)
    info = rr.fine_tune(embeddings.DEFAULT_EMBEDDER, TOY, tmp_path / "rr", s, log=lambda m: None)
    assert info["positive_pairs"] == 5 and info["negative_pairs"] == 15 and info["steps"] == 20
    pairs = [(r["query"], p) for r in TOY for p in r["pos"]] + [(r["query"], n) for r in TOY for n in r["neg"]]
    torch_seed_free = rr.load(embeddings.DEFAULT_EMBEDDER, 32)  # the untrained start: a fresh head
    before = torch_seed_free.predict(pairs, convert_to_numpy=True)
    after = rr.load(str(tmp_path / "rr"), 32).predict(pairs, convert_to_numpy=True)
    assert not np.allclose(before, after, atol=1e-3)
    positives, negatives = after[:5], after[5:]
    assert positives.mean() > negatives.mean()  # it learned the toy set: positives above their negatives


def test_the_relative_margin_variant_leaves_out_the_negatives_near_the_positive():
    """The filter a user would otherwise run, as a training variant: a negative is left out when its cosine to the
    query (MiniLM) is at least 0.95 x the best positive's, computed here from the model's own vectors."""
    from arhn_pipeline.train.core import margin_filtered

    rows = [
        {"query": "what temperature does water boil at", "pos": ["Water boils at 100 degrees Celsius at sea level."],
         "neg": ["At sea level water boils at 100 degrees Celsius (212 F).", "Giraffes are the tallest land animals.",
                 "The boiling point of ethanol is 78 degrees Celsius.", "Paris is the capital of France."]},
        {"query": "who wrote hamlet", "pos": [], "neg": ["Hamlet is a tragedy."]},  # no positive: left as it is
        {"query": "who wrote macbeth", "pos": ["Shakespeare wrote Macbeth."], "neg": []},
    ]  # fmt: skip
    out = margin_filtered([dict(r) for r in rows], 0.05)
    model = embeddings.load()
    q = model.encode([rows[0]["query"]], normalize_embeddings=True)[0]
    p = model.encode(rows[0]["pos"], normalize_embeddings=True) @ q
    n = model.encode(rows[0]["neg"], normalize_embeddings=True) @ q
    expected = [t for t, s in zip(rows[0]["neg"], n, strict=True) if s < 0.95 * p.max()]
    assert out[0]["neg"] == expected
    assert rows[0]["neg"][0] not in expected and "Paris is the capital of France." in expected  # both sides seen
    assert out[0]["pos"] == rows[0]["pos"] and out[1:] == rows[1:]  # positives and the other rows untouched


def test_gate_summary_reads_the_gate_reasons():
    applied = "applied: kappa 0.519 >= 0.2 on 1025 labelled negatives of trec_dl19_judged"
    assert cmp.gate_summary(10, 0, [applied]) == "applied (kappa 0.519)"
    assert cmp.gate_summary(10, 10, ["withheld: kappa 0.011 < 0.2 on 60 labelled negatives of x"]) == (
        "withheld (kappa 0.011)"
    )
    assert cmp.gate_summary(10, 4, [applied, "withheld: kappa 0.011 < 0.2 on 9"]) == (
        "partly withheld (4 of 10) (kappa 0.011, 0.519)"
    )
    assert cmp.gate_summary(0, 0, []) == "nothing proposed"


def test_the_comparison_has_a_row_per_method_and_eval_set_and_agrees_with_arhn_agreement(tmp_path, monkeypatch):
    entries = {
        "toy": labelled_entry(tmp_path, "toy", quiz(12), {f"FN_{i}" for i in range(12)}),
        "labelled": labelled_entry(tmp_path, "labelled", quiz(24)[12:], {f"FN_{i}" for i in range(12, 24)}),
    }
    monkeypatch.setenv("ARHN_SOURCES", str(write_registry(tmp_path / "sources.yaml", entries)))
    defs = build_defs(engine("quiz_oracle"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", list(entries))
    ops = {
        "rankings": {"config": {"ranker": "llm"}},
        "judgments": {"config": {"stages": [{"name": "minilm_margin", "kind": "margin", "margin": 0.05}]}},
        "trained_retriever": {"config": {"batch_size": 4, "negatives_per_query": 2, "max_length": 32}},
        "trained_reranker": {"config": {"batch_size": 8, "negatives_per_query": 2, "max_length": 64}},
    }
    from arhn_pipeline.definitions import job_run_config

    steps = [("gather_evidence", n) for n in entries] + [("decide", n) for n in entries]
    steps += [("build_collection", None)]
    # arhn:F is withheld (the oracle ranks every false negative above its positive: F has nothing to filter), so
    # its collection is the original's: its retriever is the original's model, reused, not trained again
    # relative_margin: the original collection less what sentence-transformers' relative_margin filter flags
    variants = ("original", "arhn_R", "arhn_F", "relative_margin")
    steps += [("train_retriever", v) for v in variants] + [("evaluate_retrievers", None)]
    steps += [("train_reranker", v) for v in ("original", "arhn_R")] + [("evaluate_rerankers", None)]
    steps += [("compare_methods", None)]
    for job_name, partition in steps:
        job = defs.resolve_job_def(job_name)
        result = job.execute_in_process(partition_key=partition, instance=instance, run_config=job_run_config(job, ops))
        assert result.success, job_name
    meta = result.asset_materializations_for_node("method_comparison")[0].metadata
    assert "| arhn:R |" in meta["comparison"].value and "data:image/png;base64," in meta["plot"].value
    assert "data:image/png;base64," in meta["agreement_plot"].value

    conn = duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True)
    rows = conn.execute("SELECT method, eval_set, count(*) FROM method_comparison GROUP BY ALL ORDER BY ALL").fetchall()
    trained = {"original", "arhn:R", "arhn:F", "margin:0.05", "untrained"}
    assert [(m, e) for m, e, _ in rows if m in trained] == [(m, "samples") for m in sorted(trained)]
    assert all(n == 1 for *_, n in rows)  # one row per method and eval set
    methods = {m for m, _, _ in rows}
    assert methods == {
        "original", "arhn:R", "arhn:F", "arhn:R+F", "rlhn:rlhn", "rlhn:hn_remove", "rlhn:remove", "pruned:pruned",
        "margin:0.05", "stage:minilm_margin", "untrained",
    }  # fmt: skip
    assert all(e is None for m, e, _ in rows if m not in trained)
    figures = conn.execute(
        "SELECT method, retriever_ndcg_at_10, reranker_ndcg_at_10 FROM method_comparison WHERE eval_set = 'samples'"
    ).fetchall()
    stored = {
        (v, k): x
        for v, x, k in conn.execute(
            "SELECT variant, ndcg_at_10, 'retriever' FROM retriever_eval UNION ALL "
            "SELECT variant, ndcg_at_10, 'reranker' FROM reranker_eval"
        ).fetchall()
    }
    for method, retriever, reranker in figures:
        variant = {"original": "original", "arhn:R": "arhn_R", "arhn:F": "arhn_F", "margin:0.05": "relative_margin",
                   "untrained": "base"}[method]  # fmt: skip
        assert retriever == stored[(variant, "retriever")]
        assert reranker == stored.get((variant, "reranker"))  # the untrained row has no reranker
    same = dict(conn.execute("SELECT variant, ndcg_at_10 FROM retriever_eval").fetchall())
    assert same["arhn_F"] == same["original"]
    # the oracle's R relabels every false negative of the compared partitions, and its gate is applied
    r = conn.execute(
        "SELECT negatives, changed, to_positive, gate FROM method_comparison WHERE method = 'arhn:R'"
    ).fetchone()
    assert r[0] == 120 and r[1] == r[2] == 24 and r[3].startswith("applied (kappa 1.000")

    # agreement: the figures of `arhn agreement` (agreement.table) on each partition's reference
    registry = load_registry()
    measured = {
        (m, ref): (p, prec, rec, f1, k)
        for m, ref, p, prec, rec, f1, k in conn.execute(
            "SELECT method, reference, pairs, precision, recall, f1, kappa FROM method_agreement"
        ).fetchall()
    }
    compared = sorted(m for m in methods if m not in ("untrained", "pruned:pruned", "original"))
    for subset in entries:
        ref_entry = registry[subset].reference
        ref = ag.load_reference(ref_entry.format, ref_entry.path)
        for row in ag.table(conn, subset, ref, compared):
            figures = dict(zip(["detector"] + ag.COLUMNS, row, strict=True))
            got = measured[(figures["detector"], subset)]
            want = tuple(figures[c] for c in ("pairs", "precision", "recall", "f1", "kappa"))
            assert got == pytest.approx(want), (figures["detector"], subset)
    assert measured[("original", "toy")][4] == 0.0  # changing nothing agrees at chance, by definition

    # the same table from the command line, and the CSV of the asset
    asset_csv = list(csv.DictReader((tmp_path / "var" / "comparison" / "method_comparison.csv").open()))
    assert {(r["method"], r["eval_set"]) for r in asset_csv} == {(m, e or "") for m, e, _ in rows}
    conn.close()
    env = dict(os.environ, ARHN_ENGINE="scripted")
    out = subprocess.run(
        [BIN / "arhn", "compare", "--csv", str(tmp_path / "cli.csv")],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # the terminal view: narrow tables, the agreement one row per (method, reference)
    assert max(len(line) for line in out.stdout.splitlines()) <= 120, out.stdout
    agreement = out.stdout[out.stdout.index("agreement with each reference") :].split("\n\n")[0].splitlines()[3:]
    shown = {(line.split()[0], line.split()[1]): float(line.split()[-1]) for line in agreement}
    for (method, reference), figures in measured.items():
        if (method, reference) in shown:
            assert shown[(method, reference)] == pytest.approx(figures[4], abs=5e-4)
    assert len(shown) >= 2
    cli_csv = list(csv.DictReader((tmp_path / "cli.csv").open()))
    key = ("method", "eval_set", "kappa toy", "kappa labelled", "share_changed", "retriever_ndcg_at_10")
    assert sorted(tuple(r[k] for k in key) for r in cli_csv) == sorted(tuple(r[k] for k in key) for r in asset_csv)
