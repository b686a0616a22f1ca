"""Permutation parsing, sliding windows and ARHN's relabel rules (pure functions)."""

import pytest

from arhn_pipeline.rankings import core
from arhn_pipeline.rules import arhn


@pytest.mark.parametrize(
    ("response", "order", "placed", "status", "note"),
    [
        ('{"ranking": [3, 1, 2, 4]}', [2, 0, 1, 3], {0, 1, 2, 3}, core.PARSED, ""),
        ('{"ranking": [3, 3, 1]}', [2, 0, 1, 3], {0, 2}, core.REPAIRED, "dropped duplicate ids [3]"),
        ('{"ranking": [9, 2]}', [1, 0, 2, 3], {1}, core.REPAIRED, "dropped unknown ids [9]"),
        ("<think>4 is best</think> [2] > [4] > [1] > [3]", [1, 3, 0, 2], {0, 1, 2, 3}, core.REPAIRED, "not JSON"),
        ('{"ranking": [2, 1', [1, 0, 2, 3], {0, 1}, core.REPAIRED, "appended missing ids [3, 4]"),
        ("no", [0, 1, 2, 3], set(), core.UNPARSED, "no usable identifier"),
        ('{"ranking": []}', [0, 1, 2, 3], set(), core.UNPARSED, "no usable identifier"),
    ],
)
def test_parse_permutation_never_throws_and_says_what_it_repaired(response, order, placed, status, note):
    perm = core.parse_permutation(response, 4)
    assert perm.order == order and set(perm.placed) == placed and perm.status == status
    assert note in perm.repairs
    assert sorted(perm.order) == [0, 1, 2, 3]


def test_windows_run_back_to_front_and_cover_everything():
    assert core.windows(5, 20, 10) == [(0, 5)]
    spans = core.windows(35, 20, 10)
    assert spans == [(15, 35), (5, 25), (0, 15)]
    assert set().union(*(range(a, b) for a, b in spans)) == set(range(35))


def test_sliding_window_bubbles_the_best_candidate_to_the_top():
    state = core.QueryRanking(order=[f"p{i}" for i in range(6)])
    # each window puts whatever is "p0" or "p5" first: p5 starts last and must reach rank 0
    for span in core.windows(6, 4, 2):
        shown = state.order[span[0] : span[1]]
        best = sorted(range(len(shown)), key=lambda i: shown[i] != "p5")
        state.apply(span, core.Permutation(best, frozenset(best), core.PARSED), call_id=f"c{span}")
    assert state.order[0] == "p5"
    assert len(state.call_ids["p5"]) == 2 and state.placed == set(state.order)


def test_shuffle_is_fixed_per_query():
    items = list(range(10))
    assert core.shuffled(items, "q1") == core.shuffled(items, "q1") != core.shuffled(items, "q2")


def ev(role="negative", snippet="no_answer", rank=3, positive_rank=1, placed=True, positive_placed=True):
    return arhn.Evidence(role, snippet, rank, positive_rank, placed, positive_placed)


@pytest.mark.parametrize(
    ("evidence", "method", "expected"),
    [
        (ev(rank=0), "R+F", ("to_positive", "R_ranked_above_positive")),
        (ev(rank=0), "F", ("keep", "keep_above_positive_R_off")),
        (ev(snippet="answer_verified"), "R+F", ("drop_negative", "F_answer_snippet_below_positive")),
        (ev(snippet="answer_verified"), "R", ("keep", "keep_below_positive_F_off")),
        (ev(snippet="no_answer"), "R+F", ("keep", "keep_below_positive_no_answer")),
        (ev(snippet="answer_unverified"), "R+F", ("keep", "keep_snippet_unverified")),
        (ev(snippet="unparsed"), "R+F", ("keep", "keep_snippet_unparsed")),
        (ev(rank=0, placed=False), "R+F", ("keep", "keep_rank_not_placed_by_model")),
        (ev(rank=0, positive_placed=False), "R+F", ("keep", "keep_rank_not_placed_by_model")),
        (ev(rank=None, positive_rank=None), "R+F", ("keep", "keep_no_ranking")),
        (ev(role="positive", rank=1), "R+F", ("keep", "original_positive")),
    ],
)
def test_arhn_rules(evidence, method, expected):
    assert arhn.decide(evidence, method) == expected


def test_unverified_snippet_counts_only_when_allowed():
    assert arhn.decide(ev(snippet="answer_unverified"), "F", allow_unverified=True)[0] == "drop_negative"
