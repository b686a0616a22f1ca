"""The `judgments` asset: RLHN's cascade. Stage 1 sees every query; stage k+1 sees only the queries stage k
flagged (or could not read), and its verdict replaces stage k's."""

from typing import Literal

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from arhn_pipeline import embeddings
from arhn_pipeline.engine.base import LLMEngine
from arhn_pipeline.engine.cache import CallStats, cached_generate, set_parse_status
from arhn_pipeline.engine.prompts import PromptTemplate, code_version
from arhn_pipeline.judgments import core
from arhn_pipeline.llm_stage import llm_stage_asset, unparsed_check
from arhn_pipeline.markdown import md_table
from arhn_pipeline.store import load_pairs, opened, replace_partition

DEFAULT_TEMPLATE = PromptTemplate.load(core.DEFAULT_PROMPT)


class CascadeStage(dg.Config):
    name: str = Field(description="the stage's name in verdict rows")
    kind: Literal["margin", "llm"] = Field(description="margin: embedding similarity; llm: an LLM judge")
    model: str | None = Field(
        default=None, description="llm: the model (default: the llm resource's); margin: the embedder"
    )
    prompt: str | None = Field(default=None, description="llm: a prompt file (default: judgments/judge.prompt.yaml)")
    margin: float = Field(default=0.1, description="margin: flag negatives scoring >= (1 - margin) x the positive")
    passage_max_tokens: int = Field(default=128, description="llm: each passage is cut to this many tokens")


class JudgmentsConfig(dg.Config):
    stages: list[CascadeStage] = Field(
        default=[
            {"name": "margin", "kind": "margin", "margin": 0.1},
            {"name": "llm_judge", "kind": "llm"},
        ],
        description="the cascade, cheapest first",
    )
    batch_size: int = Field(default=64, description="LLM requests per engine call")
    max_unparsed_share: float = Field(default=0.05, description="the unparsed check fails above this share")


def run_margin_stage(qs: core.QuerySet, active: list[str], stage: CascadeStage) -> dict[str, dict]:
    model = embeddings.load(stage.model or embeddings.DEFAULT_EMBEDDER)
    items = [(qs.query[q], qs.positives[q], [t for _, t in qs.negatives[q]]) for q in active]
    return {
        qid: dict(verdict=core.Verdict(labels, "parsed"), scores=scores, call_id=None)
        for qid, (labels, scores) in zip(active, core.margin_label_sets(model, items, stage.margin), strict=True)
    }


def run_llm_stage(qs: core.QuerySet, active: list[str], stage: CascadeStage, llm: LLMEngine, db, batch_size, log):
    template = PromptTemplate.load(_prompt_path(stage.prompt)) if stage.prompt else DEFAULT_TEMPLATE
    requests = []
    for qid in active:
        n = len(qs.negatives[qid])
        budget = llm.passage_budget(stage.passage_max_tokens, n + 1, core.answer_budget(n))
        cut = [llm.truncate(t, budget)[0] for _, t in qs.negatives[qid]]
        positive = llm.truncate(qs.positive[qid], budget)[0]
        requests.append(core.build_request(template, qs.query[qid], positive, cut))
    calls, stats = cached_generate(db, llm, requests, batch_size, log=log)
    out = {}
    for qid, call in zip(active, calls, strict=True):
        verdict = core.parse_verdict(call.response, len(qs.negatives[qid]))
        out[qid] = dict(verdict=verdict, scores=None, call_id=call.call_id, template=template.version)
    with opened(db) as conn:
        set_parse_status(conn, {v["call_id"]: v["verdict"].status for v in out.values()})
    return out, stats


def _prompt_path(name: str):
    from pathlib import Path

    path = Path(name)
    return path if path.is_absolute() else core.DEFAULT_PROMPT.parent / path


def _engine_for(stage: CascadeStage, llm: LLMEngine, current: LLMEngine | None) -> LLMEngine:
    wanted = llm if not stage.model or stage.model == llm.model else llm.model_copy(update={"model": stage.model})
    if current is not None and current is not wanted and hasattr(current, "shutdown"):
        current.shutdown()  # one model in memory at a time
    return wanted


@llm_stage_asset(
    group_name="rlhn",
    code_version=code_version(DEFAULT_TEMPLATE, core.PARSER_VERSION),
    description="RLHN's cascade of judges: per (stage, query, negative) a verdict (better / worse / none / "
    "unparsed); each stage sees only what the stage before it flagged.",
)
def judgments(context: dg.AssetExecutionContext, config: JudgmentsConfig, duckdb: DuckDBResource, llm: LLMEngine):
    subset = context.partition_key
    rows, summary = [], []
    total = CallStats()
    engine = None
    # short connections: the DuckDB file is not held open while an engine generates (see cached_generate)
    with duckdb.get_connection() as conn:
        qs = core.QuerySet(load_pairs(conn, subset))
    active = list(qs.query)
    for k, stage in enumerate(config.stages):
        if not active:
            break
        if stage.kind == "margin":
            results, model_id = run_margin_stage(qs, active, stage), stage.model or embeddings.DEFAULT_EMBEDDER
        else:
            engine = _engine_for(stage, llm, engine)
            results, stats = run_llm_stage(qs, active, stage, engine, duckdb, config.batch_size, context.log.info)
            model_id = engine.model_id()
            total.add(stats)
        forwarded = [q for q in active if results[q]["verdict"].flagged]
        last = k == len(config.stages) - 1
        for qid in active:
            r = results[qid]
            final = last or qid not in forwarded
            for i, (pid, _) in enumerate(qs.negatives[qid]):
                rows.append(
                    dict(
                        subset=subset,
                        stage_index=k,
                        stage=stage.name,
                        query_id=qid,
                        passage_id=pid,
                        verdict=r["verdict"].labels[i],
                        score=r["scores"][i] if r["scores"] else None,
                        status=r["verdict"].status,
                        notes=r["verdict"].notes or None,
                        call_id=r["call_id"],
                        model=model_id,
                        template_version=r.get("template"),
                        final=final,
                    )
                )
        labels = [lab for q in active for lab in results[q]["verdict"].labels]
        summary.append(
            (
                stage.name,
                stage.kind,
                len(active),
                len(forwarded),
                *(labels.count(v) for v in (core.BETTER, core.WORSE, core.NONE, core.UNPARSED)),
            )
        )
        context.log.info(f"stage {stage.name}: saw {len(active)} queries, flagged {len(forwarded)}")
        active = forwarded
    frame = pl.DataFrame(
        rows,
        schema_overrides={
            "score": pl.Float64,
            "notes": pl.String,
            "call_id": pl.String,
            "template_version": pl.String,
        },
    )
    with duckdb.get_connection() as conn:
        replace_partition(conn, "verdicts", subset, frame)
    final = frame.filter(pl.col("final"))
    return dg.MaterializeResult(
        metadata={
            "queries": len(qs.query),
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
                    summary,
                )
            ),
            **total.as_metadata(),
        }
    )


@dg.asset_check(
    asset=judgments,
    blocking=False,
    description="Unparsed final verdicts stay below JudgmentsConfig.max_unparsed_share.",
)
def judgment_unparsed_share(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource):
    with duckdb.get_connection() as conn:
        return unparsed_check(
            conn,
            "verdicts",
            context.partition_key,
            JudgmentsConfig().max_unparsed_share,
            column="verdict",
            where="AND final",
        )
