"""RLHN's techniques as a plain function over a query's final cascade verdicts (no Dagster, no DuckDB).

rlhn:      flagged negatives move to the positives
hn_remove: flagged negatives are dropped
remove:    a query with any flagged negative is dropped
default:   nothing changes (the baseline, with the same decision rows for audit)
A query with more than `max_flagged` flagged negatives is dropped whatever the technique (but default).
A query with a negative that has no usable verdict (missing, unparsed, degenerate) is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from arhn_pipeline.vocab import Action, Label, RlhnCount, RlhnTechnique

TECHNIQUES = tuple(RlhnTechnique)
COUNTED = {RlhnCount.better: {Label.BETTER}, RlhnCount.better_and_worse: {Label.BETTER, Label.WORSE}}
DEGENERATE = "degenerate"  # a verdict label the evidence query gives a degenerate answer

Decision = tuple[Action, str]


def decide_query(
    verdicts: Sequence[str | None],
    technique: RlhnTechnique | str,
    max_flagged: int = 8,
    count: RlhnCount | str = RlhnCount.better_and_worse,
) -> tuple[Decision, list[Decision]]:
    """((action, rule) for the query's positives, [(action, rule) per negative])."""
    technique, count = RlhnTechnique(technique), RlhnCount(count)
    n = len(verdicts)
    keep_pos: Decision = (Action.KEEP, "original_positive")
    if technique == RlhnTechnique.default:
        return keep_pos, [(Action.KEEP, "default_unchanged")] * n
    if any(v is None for v in verdicts):
        return keep_pos, [(Action.KEEP, "keep_no_verdict")] * n
    if DEGENERATE in verdicts:
        return keep_pos, [(Action.KEEP, "keep_verdict_degenerate")] * n
    if Label.UNPARSED in verdicts:
        return keep_pos, [(Action.KEEP, "keep_verdict_unparsed")] * n
    flagged = [v in COUNTED[count] for v in verdicts]
    if sum(flagged) > max_flagged:
        rule = f"drop_query_more_than_{max_flagged}_flagged"
        return (Action.DROP_QUERY, rule), [(Action.DROP_QUERY, rule)] * n
    if technique == RlhnTechnique.remove and any(flagged):
        return (Action.DROP_QUERY, "remove_query_with_flagged"), [(Action.DROP_QUERY, "remove_query_with_flagged")] * n
    action, rule = {
        RlhnTechnique.rlhn: (Action.TO_POSITIVE, "rlhn_flagged_to_positive"),
        RlhnTechnique.hn_remove: (Action.DROP_NEGATIVE, "hn_remove_flagged"),
        RlhnTechnique.remove: (Action.KEEP, "keep_not_flagged"),
    }[technique]
    return keep_pos, [(action, rule) if f else (Action.KEEP, "keep_not_flagged") for f in flagged]
