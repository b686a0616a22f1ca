"""The names the stages write into their rows and read back, defined once. A StrEnum member is its string,
so rows, SQL and JSON carry the plain value ("answer_verified", "keep", ...). Option types that run config
offers (methods, techniques, rules) are enums too: Dagster checks them at launch and lists them in the
Launchpad by member name."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    POSITIVE = "positive"
    NEGATIVE = "negative"


class SnippetStatus(StrEnum):
    """ARHN stage 1, in the order of how much they prove."""

    VERIFIED = "answer_verified"  # the snippet occurs in the passage (exactly, or up to whitespace and case)
    TRIVIAL = "answer_trivial"  # in the passage, but too short to be an answer (a letter, a word piece)
    UNVERIFIED = "answer_unverified"  # the model wrote text the passage does not contain
    NO_ANSWER = "no_answer"
    DEGENERATE = "degenerate"  # every request of the batch got this same snippet: evidence of nothing
    PLANTED = "planted"  # the answer repeats one written into the passage: copied text, not a reading
    UNPARSED = "unparsed"
    NOT_ASKED = "not_asked"  # the stage was skipped by config (`snippets` skip): no request, no evidence


class ParseStatus(StrEnum):
    """How a stage's parser read one LLM answer (also `llm_calls.parse_status`)."""

    PARSED = "parsed"
    REPAIRED = "repaired"  # read, after the parser dropped or appended something (recorded)
    ECHOED = "echoed"  # a ranking equal to the order shown, or its reverse: no ranking evidence
    DEGENERATE = "degenerate"  # a verdict flagging every negative, or one answer given to a whole batch
    PLANTED = "planted"  # the answer repeats one written into the data it was asked about
    UNPARSED = "unparsed"

    @property
    def is_evidence(self) -> bool:
        return self in (ParseStatus.PARSED, ParseStatus.REPAIRED)


class Label(StrEnum):
    """An RLHN judge's verdict on one hard negative."""

    BETTER = "better"  # relevant, as good as or better than the positive
    WORSE = "worse"  # relevant, not as good
    NONE = "none"
    UNPARSED = "unparsed"  # no verdict: the answer could not be read, or was no evidence


class Action(StrEnum):
    KEEP = "keep"
    TO_POSITIVE = "to_positive"
    DROP_NEGATIVE = "drop_negative"
    DROP_QUERY = "drop_query"


class ArhnMethod(StrEnum):
    R = "R"  # relabel: negatives ranked above the positive become positives
    F = "F"  # filter: negatives below it with a verified answer snippet leave the negative set
    RF = "R+F"


class RlhnTechnique(StrEnum):
    rlhn = "rlhn"  # flagged negatives move to the positives
    hn_remove = "hn_remove"  # flagged negatives are dropped
    remove = "remove"  # a query with a flagged negative is dropped
    default = "default"  # nothing changes (the baseline, with decision rows for audit)


class RlhnCount(StrEnum):
    better = "better"
    better_and_worse = "better_and_worse"


class Ranker(StrEnum):
    auto = "auto"  # llm where the engine is a judge worth asking (LLMEngine.judge_rule), scorer elsewhere
    llm = "llm"  # a listwise LLM ranking (ARHN's own stage 2)
    scorer = "scorer"  # the candidates ordered by a scorer's relevance scores


class NegativeRule(StrEnum):
    sample_with_replacement = "sample_with_replacement"
    pad_from_other_queries = "pad_from_other_queries"


class Preset(StrEnum):
    rlhn7 = "rlhn7"  # the seven BGE-collection sub-datasets RLHN keeps


BATCH_COLLECTED = "collected"  # llm_batches.status once a batch's answers are stored (else the provider's status)

# Training variants (retriever and reranker partitions) -> the method whose cleaned triplets each trains on.
VARIANTS = {
    "original": "original",
    "arhn_R": "arhn:R",
    "arhn_F": "arhn:F",
    "arhn_RF": "arhn:R+F",
    "rlhn_rlhn": "rlhn:rlhn",
    "rlhn_hn_remove": "rlhn:hn_remove",
    "rlhn_remove": "rlhn:remove",
    "pruned": "pruned",
    # the filter a user would otherwise run: sentence-transformers' relative_margin (NV-Retriever's TopK-PercPos)
    # with all-MiniLM-L6-v2 at its documented 0.05, on the original collection (no judge, no gate)
    "relative_margin": "margin:0.05",
}
