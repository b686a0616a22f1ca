"""The decision settings, shared by `judge_qualification` (which scores the decisions a judge would make on the
reference entries) and `relabeled` (which makes them on its partition): a judge qualifies with the settings it
is measured with, so both read the same class."""

import dagster as dg
from pydantic import Field

from arhn_pipeline.vocab import ArhnMethod, RlhnCount, RlhnTechnique


class DecisionConfig(dg.Config):
    arhn_methods: list[ArhnMethod] = Field(
        default_factory=lambda: [ArhnMethod.RF, ArhnMethod.R, ArhnMethod.F],
        description="ARHN methods to decide: R (relabel), F (filter), RF (R+F); each gets its own decision rows",
    )
    allow_unverified_snippets: bool = Field(
        default=False, description="count snippets not found in their passage as answer evidence (F)"
    )
    rlhn_techniques: list[RlhnTechnique] = Field(
        default_factory=lambda: [RlhnTechnique.rlhn, RlhnTechnique.hn_remove, RlhnTechnique.remove],
        description="RLHN techniques to decide from the cascade's final verdicts",
    )
    rlhn_max_flagged: int = Field(default=8, description="RLHN: a query with more flagged negatives is dropped")
    rlhn_count: RlhnCount = Field(
        default=RlhnCount.better_and_worse, description="RLHN: which verdicts flag a negative"
    )


class RelabeledConfig(DecisionConfig):
    min_kappa: float = Field(
        default=0.2,
        description="the qualification gate: a method's changes are applied only when the lower end of the 95% "
        "interval of its Cohen's kappa (on the partition's reviews, else the other reference entries) reaches this; "
        "otherwise they are withheld",
    )
    min_reviews: int = Field(
        default=30,
        ge=1,
        description="reviewed negatives of the partition (arhn review) from which its reviews, not the other "
        "reference entries, qualify its judges",
    )
