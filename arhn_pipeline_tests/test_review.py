"""Reviews as a reference: the stratified sample, the weighted estimate and its interval on simulated partitions
with known truth, the reviewers' agreement, the gate on reviews, and JSONL out and in (no Dagster, no page:
the page is tested in a browser in test_review_page.py)."""

from __future__ import annotations

import json
import random

import numpy as np
import polars as pl
import pytest

from arhn_pipeline.agreement import metrics
from arhn_pipeline.qualify import core as qualify
from arhn_pipeline.review import core, data


def simulated(n: int, seed: int) -> tuple[pl.DataFrame, dict, dict]:
    """A partition of n negatives: a detector that flags about 12% of them, truth at 70% among the flagged and
    4% among the kept (a judge of kappa about 0.6), strata by the detector's decision and a score band."""
    rng = random.Random(seed)
    keys, pred, truth, strata = [], {}, {}, []
    for i in range(n):
        key = (f"q{i // 20}", f"p{i}")
        flagged = rng.random() < 0.12
        score = rng.random() + (0.5 if flagged else 0)
        band = "high" if score > 0.9 else "low"
        truth[key] = rng.random() < (0.7 if flagged else 0.04) + (0.1 if band == "high" else 0)
        pred[key] = flagged
        keys.append(key)
        strata.append(("changed" if flagged else "kept") + " | " + band)
    population = pl.DataFrame({"query_id": [k[0] for k in keys], "passage_id": [k[1] for k in keys], "stratum": strata})
    return population, pred, truth


def true_kappa(pred: dict, truth: dict) -> float:
    tp = sum(pred[k] and truth[k] for k in pred)
    fp = sum(pred[k] and not truth[k] for k in pred)
    fn = sum(truth[k] and not pred[k] for k in pred)
    return float(metrics(tp, fp, fn, len(pred) - tp - fp - fn)["kappa"])


def test_allocation_spreads_half_the_budget_over_the_strata_and_never_overdraws():
    take = core.allocate({"kept": 9000, "changed by all": 12, "changed by one": 300}, 200)
    assert sum(take.values()) == 200
    assert take["changed by all"] == 12  # a rare stratum is reviewed in full, not at its 0.1% share
    assert take["changed by one"] >= 33 and take["kept"] >= 100
    assert core.allocate({"a": 3, "b": 2}, 100) == {"a": 3, "b": 2}


def test_the_weighted_interval_covers_the_whole_partition_kappa_about_95_percent_of_the_time():
    """Over many draws of 200 reviews from a partition of 6,000 negatives with known truth."""
    population, pred, truth = simulated(6000, seed=1)
    target = true_kappa(pred, truth)
    answers = {k: "as_well" if v else "no" for k, v in truth.items()}
    covered, estimates, unweighted = 0, [], []
    draws = 200
    for seed in range(draws):
        sample = core.draw(population, 200, seed)
        e = core.estimate(sample, answers, pred, draws=400, seed=seed)
        covered += e.kappa_low <= target <= e.kappa_high
        estimates.append(e.kappa)
        unweighted.append(core.estimate(sample.with_columns(stratum=pl.lit("one"), stratum_size=pl.lit(200)),
                                        answers, pred, draws=0).kappa)  # fmt: skip
    assert 0.88 <= covered / draws <= 0.99, (covered, target)
    # the weights matter: the sample over-represents the flagged negatives, and the unweighted kappa is off
    assert abs(np.mean(estimates) - target) < 0.03
    assert abs(np.mean(unweighted) - target) > abs(np.mean(estimates) - target)


def test_a_partial_review_still_estimates_and_says_how_much_of_the_partition_it_covers():
    population, pred, truth = simulated(3000, seed=2)
    sample = core.draw(population, 200, seed=0)
    first = sample.head(40)
    answers = {(q, p): "as_well" if truth[(q, p)] else "no" for q, p in first.select("query_id", "passage_id").rows()}
    e = core.estimate(sample, answers, pred)
    assert e.reviewed == 40 and e.kappa_low is not None and e.kappa_low < e.kappa < e.kappa_high
    assert 0 < e.covered <= 1


def test_cannot_tell_and_missing_predictions_are_counted_never_scored():
    population, pred, truth = simulated(500, seed=3)
    sample = core.draw(population, 50, seed=0)
    keys = sample.select("query_id", "passage_id").rows()
    answers = {k: "cannot_tell" for k in keys[:10]} | {k: "no" for k in keys[10:]}
    holes = dict(pred) | {keys[10]: None}
    e = core.estimate(sample, answers, holes)
    assert (e.cannot_tell, e.no_prediction, e.reviewed) == (10, 1, 39)


def test_needs_about_n_more_reviews_follows_the_interval_width():
    assert core.more_reviews(0.35, 0.15, 100, 0.2) == 78  # half-width 0.20 must shrink to 0.15: 100 (0.2/0.15)^2 in all
    assert core.more_reviews(0.35, 0.25, 100, 0.2) is None  # already above
    assert core.more_reviews(0.15, 0.0, 100, 0.2) is None  # the point estimate is below: more reviews won't do


def test_reviewer_agreement_reads_each_reviewers_latest_answer():
    t = pl.datetime(2026, 12, 7)
    rows = [
        ("a", "q", "p1", "ann", "as_well", 1), ("b", "q", "p1", "bob", "as_well", 2),
        ("c", "q", "p2", "ann", "no", 3), ("d", "q", "p2", "bob", "as_well", 4), ("e", "q", "p2", "bob", "no", 5),
        ("f", "q", "p3", "ann", "no", 6), ("g", "q", "p3", "bob", "no", 7),
        ("h", "q", "p4", "ann", "less_well", 8), ("i", "q", "p4", "bob", "no", 9),
    ]  # fmt: skip
    frame = pl.DataFrame(
        rows, schema=["review_id", "query_id", "passage_id", "reviewer", "answer", "s"], orient="row"
    ).with_columns(answered_at=t + pl.duration(seconds=pl.col("s")))
    agreement = core.reviewer_agreement(frame)
    assert agreement.items == 4 and agreement.same_answer == 0.75  # bob changed his mind on p2: his latest stands
    assert core.labels(frame)[("q", "p2")] == "no" and core.labels(frame)[("q", "p4")] == "less_well"


def _qualification_row(method: str, reference: str, fmt: str, **kw) -> dict:
    row = dict(subset="s", method=method, judge="j", reference=reference, reference_format=fmt, pairs=0,
               no_prediction=0, tp=0, fp=0, fn=0, tn=0, precision=0.0, recall=0.0, f1=0.0, kappa=0.0,
               kappa_low=None, kappa_high=None, reviewers_items=0, reviewers_kappa=None, covered=None)  # fmt: skip
    row.update(kw)
    return row


def test_the_gate_reads_the_lower_end_of_the_interval_and_prefers_the_partitions_own_reviews():
    small = dict(tp=10, fp=5, fn=5, tn=30)  # kappa 0.5 on 50 pairs: the interval reaches below 0.3
    large = dict(tp=100, fp=50, fn=50, tn=300)  # the same kappa on 500 pairs
    frame = pl.DataFrame(
        [
            _qualification_row("m_small", "ref", "human_grades", pairs=50, kappa=0.5, **small),
            _qualification_row("m_large", "ref", "human_grades", pairs=500, kappa=0.5, **large),
            _qualification_row("m_rev", "ref", "human_grades", pairs=500, kappa=0.5, **large),
            _qualification_row("m_rev", "reviews:s", "reviews", pairs=120, kappa=0.40, kappa_low=0.22, kappa_high=0.6),
            _qualification_row("m_few", "ref", "human_grades", pairs=500, kappa=0.5, **large),
            _qualification_row("m_few", "reviews:s", "reviews", pairs=12, kappa=0.1, kappa_low=-0.2, kappa_high=0.4),
        ],
        schema=qualify.QUALIFICATION_SCHEMA,
    )
    judges = {m: "j" for m in ("m_small", "m_large", "m_rev", "m_few")}
    v = qualify.gate_verdicts(frame, judges, min_kappa=0.3, min_reviews=30)
    assert not v["m_small"].qualified and "straddles 0.3" in v["m_small"].reason
    assert v["m_large"].qualified and v["m_large"].kappa_low > 0.4
    assert not v["m_rev"].qualified and v["m_rev"].references == ["reviews:s"]  # its reviews decide, not ref
    assert v["m_rev"].needs and f"needs about {v['m_rev'].needs} more reviews" in v["m_rev"].reason
    assert v["m_few"].qualified and "fewer than min_reviews 30" in v["m_few"].reason  # too few: the references


def test_reviews_round_trip_through_jsonl_and_a_bad_line_is_set_aside_with_its_reason(db, tmp_path):
    db.execute("INSERT INTO candidates (subset, query_id, passage_id, role, original_rank) VALUES "
               "('s', 'q1', 'p1', 'negative', 1), ('s', 'q1', 'p2', 'negative', 2)")  # fmt: skip
    rows = [
        dict(subset="s", query_id="q1", passage_id="p1", reviewer="ann", answer="as_well",
             shown_at="2026-12-07T10:00:00", answered_at="2026-12-07T10:00:09", stratum="kept by all", weight=3.5,
             shown={"blind": True}),
        dict(subset="s", query_id="q1", passage_id="p2", reviewer="ann", answer="no",
             shown_at="2026-12-07T10:00:10", answered_at="2026-12-07T10:00:30"),
    ]  # fmt: skip
    assert data.record(db, rows, origin="page") == 2
    assert data.record(db, rows, origin="page") == 0  # append-only, never twice
    out = tmp_path / "reviews.jsonl"
    assert data.export_jsonl(db, out) == 2
    exported = out.read_text()
    db.execute("DELETE FROM reviews")
    broken = tmp_path / "in.jsonl"
    broken.write_text(
        exported
        + json.dumps(dict(json.loads(exported.splitlines()[0]), answer="maybe")) + "\n"
        + "not json\n"
        + json.dumps(dict(json.loads(exported.splitlines()[0]), passage_id="p9")) + "\n"
    )  # fmt: skip
    result = data.import_jsonl(db, broken)
    assert (result.added, result.already) == (2, 0)
    assert [r.split(": ", 1)[0] for r in result.quarantined] == [f"{broken} line {n}" for n in (3, 4, 5)]
    assert "field 'answer' is 'maybe'" in result.quarantined[0]
    again = tmp_path / "again.jsonl"
    data.export_jsonl(db, again)
    assert again.read_text() == exported
    assert data.import_jsonl(db, again).already == 2


@pytest.mark.parametrize("bad", ['{"subset": "s"}', "[1, 2]", '{"subset": "s", "query_id": "q", "passage_id": "p", '
                                 '"reviewer": "", "answer": "no"}'])  # fmt: skip
def test_a_bad_review_line_names_the_file_line_and_field(bad):
    with pytest.raises(core.ReviewFileError, match=r"f.jsonl line 7"):
        core.parse_review_line("f.jsonl", 7, bad)


def test_a_strong_judges_stored_verdicts_are_labels_to_train_on_and_unparsed_ones_are_not(db):
    from arhn_pipeline.trained_judge.training import labelled

    db.execute(
        "INSERT INTO verdicts (subset, stage_index, stage, query_id, passage_id, verdict, status, model, final) VALUES "
        "('s', 1, 'gpt', 'q', 'p1', 'better', 'parsed', 'm', true), ('s', 1, 'gpt', 'q', 'p2', 'worse', 'parsed', 'm', "
        "true), ('s', 1, 'gpt', 'q', 'p3', 'none', 'parsed', 'm', true), ('s', 1, 'gpt', 'q', 'p4', 'unparsed', "
        "'unparsed', 'm', true), ('s', 0, 'cheap', 'q', 'p5', 'better', 'parsed', 'm', false)"
    )
    subset, labels, fingerprint = labelled(db, "s:verdicts:gpt")
    assert subset == "s" and fingerprint.startswith("verdicts ")
    assert labels == {("q", "p1"): True, ("q", "p2"): True, ("q", "p3"): False}
    with pytest.raises(ValueError, match="no verdicts of stage 'nope'"):
        labelled(db, "s:verdicts:nope")
    with pytest.raises(ValueError, match="no reviews of 's' in the training half"):
        labelled(db, "s:reviews")
    with pytest.raises(ValueError, match="NAME, NAME:reviews or NAME:verdicts:STAGE"):
        labelled(db, "s:what")
