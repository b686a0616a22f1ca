"""The `snippets` asset (ARHN stage 1) and its checks."""

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from arhn_pipeline.engine.base import LLMEngine, LLMRequest
from arhn_pipeline.engine.cache import cached_generate, set_parse_status
from arhn_pipeline.engine.prompts import code_version
from arhn_pipeline.llm_stage import llm_stage_asset, unparsed_check
from arhn_pipeline.markdown import md_table
from arhn_pipeline.snippets import core
from arhn_pipeline.store import load_pairs, replace_partition


class SnippetsConfig(dg.Config):
    passage_max_tokens: int = Field(default=384, description="passages are cut to this many model tokens in the prompt")
    snippet_max_tokens: int = Field(default=96, description="generation budget for one snippet answer")
    batch_size: int = Field(default=512, description="requests per engine call; results are stored after each")
    max_unparsed_share: float = Field(default=0.05, description="the unparsed-share check fails above this")


def snippet_requests(
    pairs: pl.DataFrame, llm: LLMEngine, config: SnippetsConfig
) -> tuple[list[LLMRequest], dict[str, tuple[str, bool]]]:
    """One request per pair, and each passage as shown (cut to the token budget, and whether it was cut)."""
    shown: dict[str, tuple[str, bool]] = {}
    requests = []
    for row in pairs.iter_rows(named=True):
        if row["passage_id"] not in shown:
            shown[row["passage_id"]] = llm.truncate(row["passage"], config.passage_max_tokens)
        requests.append(core.build_request(row["query"], shown[row["passage_id"]][0], config.snippet_max_tokens))
    return requests, shown


@llm_stage_asset(
    group_name="arhn",
    code_version=code_version(core.TEMPLATE, core.PARSER_VERSION),
    description="ARHN stage 1: per (query, candidate) a verbatim answer snippet or NO_ANSWER, verified "
    "against the passage (answer_verified / answer_unverified / no_answer / unparsed).",
)
def snippets(context: dg.AssetExecutionContext, config: SnippetsConfig, duckdb: DuckDBResource, llm: LLMEngine):
    subset = context.partition_key
    # short connections: the DuckDB file is not held open while the engine generates (see cached_generate)
    with duckdb.get_connection() as conn:
        pairs = load_pairs(conn, subset)
    requests, shown = snippet_requests(pairs, llm, config)
    context.log.info(f"{subset}: {len(requests)} snippet requests")
    calls, stats = cached_generate(duckdb, llm, requests, config.batch_size, log=context.log.info)
    verdicts = [core.judge_snippet(c.response, p) for c, p in zip(calls, pairs["passage"], strict=True)]
    rows = pl.DataFrame(
        {
            "subset": subset,
            "query_id": pairs["query_id"],
            "passage_id": pairs["passage_id"],
            "role": pairs["role"],
            "status": [v.status for v in verdicts],
            "snippet": [v.snippet for v in verdicts],
            "match": [v.match for v in verdicts],
            "detail": [v.detail for v in verdicts],
            "passage_truncated": [shown[p][1] for p in pairs["passage_id"]],
            "call_id": [c.call_id for c in calls],
            "template_version": core.TEMPLATE.version,
            "model": llm.model_id(),
        },
        schema_overrides={"snippet": pl.String, "match": pl.String, "detail": pl.String},
    )
    with duckdb.get_connection() as conn:
        replace_partition(conn, "snippets", subset, rows)
        set_parse_status(
            conn,
            {
                c.call_id: "unparsed" if v.status == core.UNPARSED else "parsed"
                for c, v in zip(calls, verdicts, strict=True)
            },
        )
    counts = rows.group_by("role", "status").len().sort("role", "status")
    return dg.MaterializeResult(
        metadata={
            "pairs": len(rows),
            **{f"status_{s}": int(n) for s, n in rows["status"].value_counts().iter_rows()},
            "truncated_passages": sum(1 for _, cut in shown.values() if cut),
            **stats.as_metadata(),
            "model": llm.model_id(),
            "prompt_version": core.TEMPLATE.version,
            "by_role_and_status": dg.MetadataValue.md(md_table(["role", "status", "pairs"], counts.rows())),
        }
    )


@dg.asset_check(asset=snippets, blocking=True, description="Every (query, candidate) pair has a snippet row.")
def every_pair_has_a_snippet(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource):
    with duckdb.get_connection() as conn:
        missing = conn.execute(
            "SELECT count(*) FROM candidates c ANTI JOIN snippets s USING (subset, query_id, passage_id) "
            "WHERE c.subset = ?",
            [context.partition_key],
        ).fetchone()[0]
    return dg.AssetCheckResult(passed=missing == 0, metadata={"pairs_without_snippet": missing})


@dg.asset_check(
    asset=snippets,
    blocking=False,
    description="Unparsed answers stay below SnippetsConfig.max_unparsed_share; rows stay for inspection.",
)
def snippet_unparsed_share(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource):
    with duckdb.get_connection() as conn:
        return unparsed_check(conn, "snippets", context.partition_key, SnippetsConfig().max_unparsed_share)
