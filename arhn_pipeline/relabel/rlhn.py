"""RLHN's techniques as a plain function over a query's final cascade verdicts (no Dagster, no DuckDB).

rlhn:      flagged negatives move to the positives
hn_remove: flagged negatives are dropped
remove:    a query with any flagged negative is dropped
default:   nothing changes (the baseline, with the same decision rows for audit)
A query with more than `max_flagged` flagged negatives is dropped whatever the technique (but default).
"""

from __future__ import annotations

from arhn_pipeline.relabel.arhn import DROP_NEGATIVE, DROP_QUERY, KEEP, TO_POSITIVE

TECHNIQUES = ("rlhn", "hn_remove", "remove", "default")
COUNTED = {"better": {"better"}, "better_and_worse": {"better", "worse"}}


def decide_query(
    verdicts: list[str | None], technique: str, max_flagged: int = 8, count: str = "better_and_worse"
) -> tuple[tuple[str, str], list[tuple[str, str]]]:
    """((action, rule) for the query's positives, [(action, rule) per negative])."""
    n = len(verdicts)
    if technique == "default":
        return (KEEP, "original_positive"), [(KEEP, "default_unchanged")] * n
    if any(v is None for v in verdicts):
        return (KEEP, "original_positive"), [(KEEP, "keep_no_verdict")] * n
    if "unparsed" in verdicts:
        return (KEEP, "original_positive"), [(KEEP, "keep_verdict_unparsed")] * n
    flagged = [v in COUNTED[count] for v in verdicts]
    if sum(flagged) > max_flagged:
        rule = f"drop_query_more_than_{max_flagged}_flagged"
        return (DROP_QUERY, rule), [(DROP_QUERY, rule)] * n
    if technique == "remove" and any(flagged):
        return (DROP_QUERY, "remove_query_with_flagged"), [(DROP_QUERY, "remove_query_with_flagged")] * n
    action, rule = {
        "rlhn": (TO_POSITIVE, "rlhn_flagged_to_positive"),
        "hn_remove": (DROP_NEGATIVE, "hn_remove_flagged"),
        "remove": (KEEP, "keep_not_flagged"),
    }[technique]
    return (KEEP, "original_positive"), [(action, rule) if f else (KEEP, "keep_not_flagged") for f in flagged]
