"""The `judgments` asset: RLHN's cascade, a thin shell over judgments/core.py."""

from pathlib import Path
from typing import Any, Literal

import dagster as dg
import polars as pl
from pydantic import Field

from arhn_pipeline import embeddings, faults, settings
from arhn_pipeline.engine.base import LLMEngine
from arhn_pipeline.engine.batch_api import set_stage
from arhn_pipeline.engine.cache import CallStats
from arhn_pipeline.engine.prompts import PromptTemplate, code_version, load_named
from arhn_pipeline.judgments import core
from arhn_pipeline.llm_stage import llm_stage_asset, share_check
from arhn_pipeline.markdown import md_table
from arhn_pipeline.store import (
    DuckDBStore,
    load_pairs,
    replace_partition,
    set_parse_status,
    table_metadata,
    transaction,
)
from arhn_pipeline.trained_judge.core import DEFAULT_JUDGE, JudgeModel, judge_path
from arhn_pipeline.vocab import ParseStatus

UNPARSED_SHARE = "judgment_unparsed_share"
DEGENERATE_SHARE = "judgment_degenerate_share"


class CascadeStage(dg.Config):
    name: str = Field(description="the stage's name in verdict rows")
    kind: Literal["trained_judge", "margin", "llm"] = Field(
        description="trained_judge: a judge trained on labelled negatives (trained_judge asset); margin: embedding "
        "similarity; llm: an LLM judge"
    )
    model: str | None = Field(
        default=None,
        description="llm: the model (default: the llm resource's); margin: the embedder; trained_judge: the judge's "
        "name (a trained_judge output, or a shipped judge such as dl19_dl20) or file",
    )
    needs_judge: bool = Field(
        default=False,
        description="llm: run this stage only when the engine is a judge worth asking (its `judge` setting, else "
        "its rule: a served or hosted model or vLLM on a GPU yes, the packaged small CPU model no); the run's "
        "metadata says which rule chose",
    )
    prompt: str | None = Field(
        default=None,
        description="llm: a *.prompt.yaml file in judgments/ (relative) or in the folder ARHN_PROMPTS_DIR names "
        "(default: judgments/judge.prompt.yaml)",
    )
    margin: float = Field(default=0.1, description="margin: flag negatives scoring >= (1 - margin) x the positive")
    passage_max_tokens: int = Field(default=128, description="llm: each passage is cut to this many tokens")
    samples: int = Field(
        default=1,
        ge=1,
        description="llm: answers per query (seeds 0..samples-1 at `temperature`); the majority verdict stands and "
        "each negative's vote margin is stored (`arhn agreement` shows agreement by vote margin)",
    )
    temperature: float = Field(default=0.7, ge=0, description="llm, with samples > 1: the sampling temperature")

    def runs_with(self, engine_is_judge: bool) -> bool:
        """Whether this stage runs with an engine that is (or is not) a judge worth asking."""
        return engine_is_judge or not self.needs_judge


class JudgmentsConfig(dg.Config):
    stages: list[CascadeStage] = Field(
        default_factory=lambda: [
            CascadeStage(name="trained_judge", kind="trained_judge"),
            CascadeStage(name="llm_judge", kind="llm", needs_judge=True),
        ],
        description="the cascade, cheapest first; the default: the shipped trained judge on every query, then the "
        "LLM judge on what it flagged where the engine is a judge worth asking (a served or hosted model, vLLM on a "
        "GPU; the packaged CPU model parses but does not judge)",
    )
    batch_size: int = Field(default=64, description="LLM requests per engine call")
    max_unparsed_share: float = Field(default=0.05, description="the unparsed check fails above this share")
    max_degenerate_share: float = Field(
        default=0.05, description="the degenerate check (a verdict flagging everything, one answer to all) fails above"
    )


def _template(prompt: str | None) -> PromptTemplate:
    if not prompt:
        return core.DEFAULT_TEMPLATE
    return load_named(prompt, core.DEFAULT_PROMPT.parent)


@llm_stage_asset(
    name="judgments",
    group_name="rlhn",
    code_version=code_version(
        core.DEFAULT_TEMPLATE, core.PARSER_VERSION, JudgeModel.load(judge_path(DEFAULT_JUDGE, Path("-"))).identity
    ),
    description="RLHN's cascade of judges: per (stage, query, negative) a verdict (better / worse / none / "
    "unparsed); each stage sees only what the stage before it flagged.",
    check_specs=[
        dg.AssetCheckSpec(UNPARSED_SHARE, asset="judgments", description="Unparsed final verdicts below the share."),
        dg.AssetCheckSpec(
            DEGENERATE_SHARE, asset="judgments", description="Degenerate final verdicts below max_degenerate_share."
        ),
    ],
)
def judgments(context: dg.AssetExecutionContext, config: JudgmentsConfig, duckdb: DuckDBStore, llm: LLMEngine):
    subset = context.partition_key
    set_stage(subset, "judgments")  # a Batch API run records what to re-run when its batches finish
    faults.point("stage_start")  # a fault-injection point: the stages before this one are materialized
    with duckdb.reading() as conn:  # a snapshot: no write lock
        qs = core.QuerySet(load_pairs(conn, subset))
    judge_notes: dict[str, Any] = {}  # a cascaded trained judge: the share its whole judge saw

    def run_stage(stage: CascadeStage, active: list[str]) -> tuple[dict[str, core.StageResult], str, CallStats | None]:
        if stage.kind == "trained_judge":
            name = stage.model or DEFAULT_JUDGE
            judge = JudgeModel.load(judge_path(name, settings.judges_dir()))
            return core.run_trained_stage(qs, active, judge, judge_notes), f"judge:{name}@{judge.identity}", None
        if stage.kind == "margin":
            results = core.run_margin_stage(qs, active, stage.model, stage.margin)
            return results, stage.model or embeddings.DEFAULT_EMBEDDER, None
        engine = llm.for_model(stage.model)
        results, stats = core.run_llm_stage(
            qs,
            active,
            _template(stage.prompt),
            engine,
            duckdb,
            config.batch_size,
            stage.passage_max_tokens,
            log=context.log.info,
            samples=stage.samples,
            temperature=stage.temperature,
        )
        context.log.info(f"stage {stage.name}: {len(active)} queries judged by {engine.model_id()}")
        return results, engine.model_id(), stats

    ask, why = llm.judge_rule()
    stages = [s for s in config.stages if s.runs_with(ask)]
    skipped = [s.name for s in config.stages if s not in stages]
    needing = [s.name for s in config.stages if s.needs_judge]
    rule = f"{'asked' if ask else 'skipped'} ({why})" if needing else "no stage needs a judge"
    context.log.info(f"{subset}: stage(s) needing an LLM judge {needing or '-'}: {rule}")
    with embeddings.reporting(context.log.info):
        cascade = core.run_cascade(qs, stages, run_stage, subset)
    frame = pl.DataFrame(cascade.rows, schema=core.VERDICT_SCHEMA)
    llm_rows = frame.filter(pl.col("call_id").is_not_null()).unique("call_id")
    with duckdb.get_connection() as conn, transaction(conn):
        replace_partition(conn, "verdicts", subset, frame)
        set_parse_status(conn, dict(zip(llm_rows["call_id"], llm_rows["status"], strict=True)))
        tables = table_metadata(conn, "verdicts", subset)
    final = frame.filter(pl.col("final"))
    statuses = final["status"].to_list()
    return dg.MaterializeResult(
        metadata={
            **tables,
            "queries": len(qs.query),
            "stages_skipped": ", ".join(skipped) or "none",
            "llm_judge_rule": rule,
            **judge_notes,
            **{f"final_{v}": int(n) for v, n in final["verdict"].value_counts().sort("verdict").iter_rows()},
            "stages": dg.MetadataValue.md(
                md_table(
                    [
                        "stage",
                        "kind",
                        "queries seen",
                        "queries flagged (sent on)",
                        "better",
                        "worse",
                        "none",
                        "unparsed",
                    ],
                    cascade.summary,
                )
            ),
            **cascade.stats.as_metadata(),
        },
        check_results=[
            share_check(UNPARSED_SHARE, statuses, {ParseStatus.UNPARSED}, config.max_unparsed_share),
            share_check(DEGENERATE_SHARE, statuses, {ParseStatus.DEGENERATE}, config.max_degenerate_share),
        ],
    )
