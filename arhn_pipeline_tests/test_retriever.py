"""Training and evaluation: examples and their negative rule, nDCG@10 against a hand-worked value, a tiny
real fine-tuning run, and the eval table through Dagster."""

import math

import duckdb
import numpy as np
import pytest

from arhn_pipeline import embeddings
from arhn_pipeline.evaluate import core as ev
from arhn_pipeline.train import core as tr
from arhn_pipeline.train.assets import TrainedRetrieverConfig
from arhn_pipeline_tests.conftest import one_source_pipeline, write_jsonl


def test_examples_one_per_positive_with_the_negative_rule():
    rows = [
        {"query": "q1", "pos": ["p1", "p1b"], "neg": ["n1", "n2", "n3", "n4"]},
        {"query": "q2", "pos": ["p2"], "neg": ["m1"]},
        {"query": "q3", "pos": ["p3"], "neg": []},
        {"query": "q4", "pos": [], "neg": ["x"]},
    ]
    out, counts = tr.examples(
        rows, TrainedRetrieverConfig(negatives_per_query=3, negative_rule="sample_with_replacement")
    )
    assert [e["anchor"] for e in out] == ["q1", "q1", "q2", "q3"]
    assert [e[f"negative_{i}"] for e in out[2:3] for i in (1, 2, 3)] == ["m1", "m1", "m1"]
    assert counts == {"examples": 4, "queries": 3, "short_of_negatives": 2, "borrowed_negatives": 3}
    q3 = [out[3][f"negative_{i}"] for i in (1, 2, 3)]
    assert len(set(q3)) == 3 and not set(q3) & {"p3"}
    padded, counts = tr.examples(
        rows, TrainedRetrieverConfig(negatives_per_query=3, negative_rule="pad_from_other_queries")
    )
    q2 = [padded[2][f"negative_{i}"] for i in (1, 2, 3)]
    assert q2[0] == "m1" and len(set(q2)) == 3 and counts["borrowed_negatives"] == 5


def test_prefixes_are_applied():
    out, _ = tr.examples(
        [{"query": "q", "pos": ["p"], "neg": ["n"]}],
        TrainedRetrieverConfig(negatives_per_query=1, query_prefix="query: ", passage_prefix="passage: "),
    )
    assert out == [{"anchor": "query: q", "positive": "passage: p", "negative_1": "passage: n"}]


def test_ndcg_at_10_equals_the_hand_worked_value():
    qrels = {"q1": {"d1": 1, "d2": 2}, "q2": {"d9": 1}}
    run = {"q1": {"d3": 0.9, "d1": 0.8, "d4": 0.7, "d2": 0.6}, "q2": {"d9": 0.5, "q2": 0.99}}
    # q1: gains 1 at rank 2 and 2 at rank 4 -> DCG = 1/log2(3) + 2/log2(5); ideal = 2/log2(2) + 1/log2(3)
    q1 = (1 / math.log2(3) + 2 / math.log2(5)) / (2 + 1 / math.log2(3))
    # q2: the identical-id hit q2 is dropped, d9 is then first -> 1.0
    s = ev.score(run, qrels, ignore_identical_ids=True)
    assert s["nDCG@10"] == pytest.approx((q1 + 1.0) / 2, abs=1e-6)
    assert s["R@100"] == pytest.approx(1.0)
    kept = ev.score(run, qrels, ignore_identical_ids=False)
    assert kept["nDCG@10"] == pytest.approx((q1 + 1 / math.log2(3)) / 2, abs=1e-6)


TOY = [
    {
        "query": f"what colour is the {thing}",
        "pos": [f"The {thing} is {colour}."],
        "neg": [f"The {other} is {oc}." for other, oc in pairs if other != thing][:3],
    }
    for pairs in [[("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"), ("blood", "red")]]
    for thing, colour in pairs
]


def test_tiny_training_run_changes_weights_and_scores(tmp_path):
    s = TrainedRetrieverConfig(negatives_per_query=2, batch_size=4, epochs=2, learning_rate=1e-4, max_length=32)
    info = tr.fine_tune(embeddings.DEFAULT_EMBEDDER, TOY, tmp_path / "m", s, log=lambda m: None)
    assert info["examples"] == 5 and info["steps"] == 4
    from sentence_transformers import SentenceTransformer

    base = SentenceTransformer(embeddings.model_location(embeddings.DEFAULT_EMBEDDER), device="cpu")
    tuned = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    w0 = next(base.parameters()).detach().numpy()
    w1 = next(tuned.parameters()).detach().numpy()
    assert not np.allclose(w0, w1)
    text = ["what colour is the sky", "The sky is blue."]
    before = base.encode(text, normalize_embeddings=True)
    after = tuned.encode(text, normalize_embeddings=True)
    assert abs(float(before[0] @ before[1]) - float(after[0] @ after[1])) > 1e-4


def test_eval_table_has_one_row_per_variant_and_set(tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "toy.jsonl", [dict(r, query_id=f"t{i}") for i, r in enumerate(TOY)])
    defs, instance = one_source_pipeline(tmp_path, monkeypatch, source, "constant_no")
    assert defs.resolve_job_def("clean_subset").execute_in_process(partition_key="toy", instance=instance).success
    train_config = {
        "ops": {"trained_retriever": {"config": {"batch_size": 4, "negatives_per_query": 2, "max_length": 32}}}
    }
    for variant in ("original", "rlhn_rlhn"):
        result = defs.resolve_job_def("train_retriever").execute_in_process(
            partition_key=variant, instance=instance, run_config=train_config
        )
        assert result.success
    sets = {"samples": "data/samples/beir", "samples_again": "data/samples/beir"}
    result = defs.resolve_job_def("evaluate_retrievers").execute_in_process(
        instance=instance, run_config={"ops": {"retriever_eval": {"config": {"eval_sets": sets}}}}
    )
    meta = result.asset_materializations_for_node("retriever_eval")[0].metadata
    assert meta["results"].value.count("| samples |") == 3 and "data:image/png;base64," in meta["plot"].value
    with duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            "SELECT variant, eval_set, count(*) FROM retriever_eval GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    assert rows == [(v, s, 1) for v in ("base", "original", "rlhn_rlhn") for s in ("samples", "samples_again")]
