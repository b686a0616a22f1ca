"""ARHN's relabel rules as a plain function over evidence rows (no Dagster, no DuckDB).

R (relabel): a negative the model ranked above the original positive becomes a positive.
F (filter):  a negative ranked below it whose answer snippet is verified leaves the negative set.
R+F:         both.
A rank counts only when the model placed both the negative and the positive itself (not appended by
permutation repair); an unverified snippet is no evidence unless `allow_unverified` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = {"R": (True, False), "F": (False, True), "R+F": (True, True)}

KEEP, TO_POSITIVE, DROP_NEGATIVE, DROP_QUERY = "keep", "to_positive", "drop_negative", "drop_query"


@dataclass(frozen=True)
class Evidence:
    role: str
    snippet_status: str | None  # answer_verified | answer_unverified | no_answer | unparsed | None (missing)
    rank: int | None
    positive_rank: int | None
    placed: bool
    positive_placed: bool


def decide(ev: Evidence, method: str, allow_unverified: bool = False) -> tuple[str, str]:
    """(action, rule) for one candidate under an ARHN method."""
    relabel, filter_ = METHODS[method]
    if ev.role == "positive":
        return KEEP, "original_positive"
    if ev.rank is None or ev.positive_rank is None:
        return KEEP, "keep_no_ranking"
    if not (ev.placed and ev.positive_placed):
        return KEEP, "keep_rank_not_placed_by_model"
    if ev.rank < ev.positive_rank:
        return (TO_POSITIVE, "R_ranked_above_positive") if relabel else (KEEP, "keep_above_positive_R_off")
    if not filter_:
        return KEEP, "keep_below_positive_F_off"
    status = ev.snippet_status
    if status == "answer_verified" or (status == "answer_unverified" and allow_unverified):
        return DROP_NEGATIVE, "F_answer_snippet_below_positive"
    if status == "answer_unverified":
        return KEEP, "keep_snippet_unverified"
    if status == "unparsed":
        return KEEP, "keep_snippet_unparsed"
    if status is None:
        return KEEP, "keep_no_snippet"
    return KEEP, "keep_below_positive_no_answer"
