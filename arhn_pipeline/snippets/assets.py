"""The `snippets` asset (ARHN stage 1): a thin shell over snippets/core.py."""

import dagster as dg
import polars as pl
from pydantic import Field

from arhn_pipeline import faults
from arhn_pipeline.engine.base import LLMEngine, LLMRequest
from arhn_pipeline.engine.batch_api import set_stage
from arhn_pipeline.engine.cache import cached_generate
from arhn_pipeline.engine.prompts import code_version
from arhn_pipeline.llm_stage import llm_stage_asset, share_check
from arhn_pipeline.markdown import md_table
from arhn_pipeline.snippets import core
from arhn_pipeline.store import (
    DuckDBStore,
    load_pairs,
    replace_partition,
    scalar,
    set_parse_status,
    table_metadata,
    transaction,
)
from arhn_pipeline.vocab import ParseStatus, SnippetStatus

EVERY_PAIR = "every_pair_has_a_snippet"
UNPARSED_SHARE = "snippet_unparsed_share"
DEGENERATE_SHARE = "snippet_degenerate_share"


class SnippetsConfig(dg.Config):
    passage_max_tokens: int = Field(
        default=core.PASSAGE_MAX_TOKENS, description="passages are cut to this many model tokens in the prompt"
    )
    snippet_max_tokens: int = Field(
        default=core.SNIPPET_MAX_TOKENS, description="generation budget for one snippet answer"
    )
    batch_size: int = Field(default=512, description="requests per engine call; results are stored after each")
    max_unparsed_share: float = Field(default=0.05, description="the unparsed-share check fails above this")
    max_degenerate_share: float = Field(
        default=0.0, description="the degenerate-share check fails above this (one answer given to every request)"
    )
    skip: bool = Field(
        default=False,
        description="ask nothing: every pair is recorded `not_asked` (no evidence, so ARHN's F filters nothing "
        "and its gate withholds it). For runs where the snippet model cannot read, e.g. the CPU model on a "
        "whole collection of long passages.",
    )


@llm_stage_asset(
    name="snippets",
    group_name="arhn",
    code_version=code_version(core.TEMPLATE, core.PARSER_VERSION),
    description="ARHN stage 1: per (query, candidate) a verbatim answer snippet or NO_ANSWER, verified "
    "against the passage (answer_verified / answer_unverified / no_answer / degenerate / unparsed).",
    check_specs=[
        dg.AssetCheckSpec(EVERY_PAIR, asset="snippets", blocking=True, description="Every pair has a snippet row."),
        dg.AssetCheckSpec(
            UNPARSED_SHARE, asset="snippets", description="Unparsed answers stay below max_unparsed_share."
        ),
        dg.AssetCheckSpec(
            DEGENERATE_SHARE,
            asset="snippets",
            description="Degenerate answers (one answer to every request) stay below max_degenerate_share.",
        ),
    ],
)
def snippets(context: dg.AssetExecutionContext, config: SnippetsConfig, duckdb: DuckDBStore, llm: LLMEngine):
    subset = context.partition_key
    set_stage(subset, "snippets")  # a Batch API run records what to re-run when its batches finish
    faults.point("stage_start")  # a fault-injection point: the stages before this one are materialized
    with duckdb.reading() as conn:  # a snapshot: no write lock
        pairs = load_pairs(conn, subset)
    requests: list[LLMRequest] = []
    shown: dict[str, core.ShownPassage] = {}
    if config.skip:
        context.log.info(f"{subset}: snippets skipped by config; {len(pairs)} pairs recorded not_asked")
    else:
        requests, shown = core.snippet_requests(pairs, llm, config.passage_max_tokens, config.snippet_max_tokens)
        context.log.info(f"{subset}: {len(requests)} snippet requests")
    calls, stats = cached_generate(duckdb, llm, requests, config.batch_size, log=context.log.info)
    if config.skip:
        verdicts = [core.NOT_ASKED_VERDICT] * len(pairs)
        call_ids: list[str | None] = [None] * len(pairs)
    else:
        verdicts = core.judge_snippets([c.response for c in calls], pairs["passage"].to_list())
        call_ids = [c.call_id for c in calls]
    rows = pl.DataFrame(
        {
            "subset": subset,
            "query_id": pairs["query_id"],
            "passage_id": pairs["passage_id"],
            "role": pairs["role"],
            "status": [str(v.status) for v in verdicts],
            "snippet": [v.snippet for v in verdicts],
            "match": [v.match for v in verdicts],
            "detail": [v.detail for v in verdicts],
            "passage_truncated": [p in shown and shown[p].truncated for p in pairs["passage_id"]],
            "call_id": call_ids,
            "template_version": core.TEMPLATE.version,
            "model": llm.model_id(),
        },
        schema_overrides={"snippet": pl.String, "match": pl.String, "detail": pl.String, "call_id": pl.String},
    )
    parse = {SnippetStatus.UNPARSED: ParseStatus.UNPARSED, SnippetStatus.DEGENERATE: ParseStatus.DEGENERATE}
    with duckdb.get_connection() as conn, transaction(conn):
        replace_partition(conn, "snippets", subset, rows)
        if not config.skip:
            set_parse_status(
                conn,
                {c.call_id: str(parse.get(v.status, ParseStatus.PARSED)) for c, v in zip(calls, verdicts, strict=True)},
            )
        missing = scalar(
            conn,
            "SELECT count(*) FROM candidates c ANTI JOIN snippets s USING (subset, query_id, passage_id) "
            "WHERE c.subset = ?",
            [subset],
        )
        tables = table_metadata(conn, "snippets", subset)
    counts = rows.group_by("role", "status").len().sort("role", "status")
    statuses = rows["status"].to_list()
    return dg.MaterializeResult(
        metadata={
            **tables,
            "pairs": len(rows),
            **{f"status_{s}": int(n) for s, n in rows["status"].value_counts().iter_rows()},
            "truncated_passages": sum(1 for s in shown.values() if s.truncated),
            **stats.as_metadata(),
            "model": llm.model_id(),
            "skipped": config.skip,
            **llm.settings_metadata(),
            "prompt_version": core.TEMPLATE.version,
            "by_role_and_status": dg.MetadataValue.md(md_table(["role", "status", "pairs"], counts.rows())),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=EVERY_PAIR, passed=missing == 0, metadata={"pairs_without_snippet": missing}
            ),
            share_check(UNPARSED_SHARE, statuses, {SnippetStatus.UNPARSED}, config.max_unparsed_share),
            share_check(DEGENERATE_SHARE, statuses, {SnippetStatus.DEGENERATE}, config.max_degenerate_share),
        ],
    )
