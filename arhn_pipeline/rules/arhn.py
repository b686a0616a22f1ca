"""ARHN's relabel rules as a plain function over evidence rows (no Dagster, no DuckDB).

R (relabel): a negative the ranker placed above the original positive becomes a positive.
F (filter):  a negative ranked below it whose answer snippet is verified leaves the negative set.
R+F:         both.
A rank counts only when the ranker placed both the negative and the positive itself (not appended by
permutation repair, not an echoed or degenerate answer); an unverified snippet is no evidence unless
`allow_unverified` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from arhn_pipeline.vocab import Action, ArhnMethod, Role, SnippetStatus

METHODS = {ArhnMethod.R: (True, False), ArhnMethod.F: (False, True), ArhnMethod.RF: (True, True)}

KEEP, TO_POSITIVE, DROP_NEGATIVE, DROP_QUERY = Action.KEEP, Action.TO_POSITIVE, Action.DROP_NEGATIVE, Action.DROP_QUERY


@dataclass(frozen=True)
class Evidence:
    role: str
    snippet_status: str | None  # a SnippetStatus, or None (missing)
    rank: int | None
    positive_rank: int | None
    placed: bool
    positive_placed: bool


def decide(ev: Evidence, method: ArhnMethod | str, allow_unverified: bool = False) -> tuple[Action, str]:
    """(action, rule) for one candidate under an ARHN method."""
    relabel, filter_ = METHODS[ArhnMethod(method)]
    if ev.role == Role.POSITIVE:
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
    if status == SnippetStatus.VERIFIED or (status == SnippetStatus.UNVERIFIED and allow_unverified):
        return DROP_NEGATIVE, "F_answer_snippet_below_positive"
    if status is None:
        return KEEP, "keep_no_snippet"
    if status == SnippetStatus.NO_ANSWER:
        return KEEP, "keep_below_positive_no_answer"
    return KEEP, f"keep_snippet_{status.removeprefix('answer_')}"
