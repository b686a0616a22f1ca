"""The `rankings` asset (ARHN stage 2) and its checks."""

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from arhn_pipeline.engine.base import LLMEngine, LLMRequest
from arhn_pipeline.engine.cache import CallStats, cached_generate, set_parse_status
from arhn_pipeline.engine.prompts import code_version
from arhn_pipeline.llm_stage import llm_stage_asset, unparsed_check
from arhn_pipeline.markdown import md_table
from arhn_pipeline.rankings import core
from arhn_pipeline.store import load_pairs, replace_partition, transaction


class RankingsConfig(dg.Config):
    passage_max_tokens: int = Field(default=128, description="each passage is cut to this many tokens in the prompt")
    window_size: int = Field(default=20, description="candidates per listwise request; larger sets use sliding windows")
    stride: int = Field(default=10, description="how far the window moves up (back to front) between requests")
    shuffle: bool = Field(default=True, description="show candidates in a fixed per-query shuffle, not source order")
    batch_size: int = Field(default=256, description="requests per engine call")
    max_unparsed_share: float = Field(default=0.05, description="the unparsed-window check fails above this")


class RankingPlan:
    """Each query's candidates in their starting order and its window spans. Window k's content depends on
    the answers to windows before it, so requests are built one step at a time."""

    def __init__(self, pairs: pl.DataFrame, llm: LLMEngine, config: RankingsConfig):
        self.shown: dict[str, str] = {}
        self.states: dict[str, core.QueryRanking] = {}
        self.query_text: dict[str, str] = {}
        size = min(config.window_size, int(pairs.group_by("query_id").len()["len"].max() or 1))
        budget = llm.passage_budget(config.passage_max_tokens, size, core.answer_budget(size))
        for (qid,), group in pairs.group_by("query_id", maintain_order=True):
            keys = group["passage_id"].to_list()
            self.query_text[qid] = group["query"][0]
            for key, text in zip(keys, group["passage"], strict=True):
                if key not in self.shown:
                    self.shown[key] = llm.truncate(text, budget)[0]
            self.states[qid] = core.QueryRanking(order=core.shuffled(keys, qid) if config.shuffle else keys)
        self.spans = {q: core.windows(len(s.order), config.window_size, config.stride) for q, s in self.states.items()}
        self.steps = max((len(s) for s in self.spans.values()), default=0)

    def requests(self, step: int) -> tuple[list[str], list[LLMRequest]]:
        active = [qid for qid in self.states if step < len(self.spans[qid])]
        out = []
        for qid in active:
            start, end = self.spans[qid][step]
            passages = [self.shown[k] for k in self.states[qid].order[start:end]]
            out.append(core.build_request(self.query_text[qid], passages))
        return active, out


def rank_partition(
    pairs: pl.DataFrame, llm: LLMEngine, db, config: RankingsConfig, log=None
) -> tuple[dict[str, core.QueryRanking], CallStats]:
    """Rank every query's candidate set; window k of every query goes to the engine in one batch."""
    plan = RankingPlan(pairs, llm, config)
    states = plan.states
    total = CallStats()
    for step in range(plan.steps):
        active, requests = plan.requests(step)
        calls, stats = cached_generate(db, llm, requests, config.batch_size, log=log)
        total.add(stats)
        for qid, call in zip(active, calls, strict=True):
            span = plan.spans[qid][step]
            states[qid].apply(span, core.parse_permutation(call.response, span[1] - span[0]), call.call_id)
    return states, total


@llm_stage_asset(
    group_name="arhn",
    code_version=code_version(core.TEMPLATE, core.PARSER_VERSION),
    description="ARHN stage 2: a listwise LLM ranking of each query's candidates (sliding windows when the set "
    "is larger than the window); every candidate's rank and the original positive's rank.",
)
def rankings(context: dg.AssetExecutionContext, config: RankingsConfig, duckdb: DuckDBResource, llm: LLMEngine):
    subset = context.partition_key
    model = llm.model_id()
    # short connections: the DuckDB file is not held open while the engine generates (see cached_generate)
    with duckdb.get_connection() as conn:
        pairs = load_pairs(conn, subset)
    roles = dict(zip(zip(pairs["query_id"], pairs["passage_id"], strict=True), pairs["role"], strict=True))
    states, stats = rank_partition(pairs, llm, duckdb, config, log=context.log.info)
    rank_rows, window_rows = [], []
    for qid, state in states.items():
        ranks = {key: i for i, key in enumerate(state.order)}
        positive_rank = min(r for key, r in ranks.items() if roles[(qid, key)] == "positive")
        for key, r in ranks.items():
            rank_rows.append(
                dict(
                    subset=subset,
                    query_id=qid,
                    passage_id=key,
                    role=roles[(qid, key)],
                    rank=r,
                    placed=key in state.placed,
                    positive_rank=positive_rank,
                    call_ids=state.call_ids[key],
                )
            )
        for i, w in enumerate(state.window_log):
            window_rows.append(
                dict(
                    subset=subset,
                    query_id=qid,
                    window_index=i,
                    span_start=w["span"][0],
                    span_end=w["span"][1],
                    shown=w["shown"],
                    status=w["status"],
                    repairs=w["repairs"],
                    call_id=w["call_id"],
                    template_version=core.TEMPLATE.version,
                    model=model,
                )
            )
    windows = pl.DataFrame(window_rows)
    with duckdb.get_connection() as conn, transaction(conn):  # both tables, or neither
        replace_partition(conn, "rankings", subset, pl.DataFrame(rank_rows))
        replace_partition(conn, "ranking_windows", subset, windows)
        set_parse_status(conn, dict(zip(windows["call_id"], windows["status"], strict=True)))
    ranks = pl.DataFrame(rank_rows)
    negatives = ranks.filter(pl.col("role") == "negative")
    above = negatives.filter(pl.col("placed") & (pl.col("rank") < pl.col("positive_rank"))).height
    repaired = windows.filter(pl.col("status") == core.REPAIRED).select("query_id", "repairs").head(10)
    return dg.MaterializeResult(
        metadata={
            "queries": len(states),
            "windows": windows.height,
            **{f"windows_{s}": int(n) for s, n in windows["status"].value_counts().iter_rows()},
            "negatives_ranked_above_positive": above,
            "mean_positive_rank": round(
                float(ranks.group_by("query_id").agg(pl.col("positive_rank").first())["positive_rank"].mean()), 2
            ),
            **stats.as_metadata(),
            "model": model,
            "prompt_version": core.TEMPLATE.version,
            "repaired_windows": dg.MetadataValue.md(
                md_table(["query_id", "what the parser repaired"], repaired.rows())
            ),
        }
    )


@dg.asset_check(
    asset=rankings,
    blocking=True,
    description="Every candidate set has a complete ranking: each candidate once, ranks 0..n-1.",
)
def every_candidate_set_is_fully_ranked(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource):
    with duckdb.get_connection() as conn:
        bad = conn.execute(
            """
            WITH c AS (SELECT query_id, count(*) n FROM candidates WHERE subset = $s GROUP BY ALL),
                 r AS (SELECT query_id, count(*) n, count(DISTINCT passage_id) d, min(rank) lo, max(rank) hi,
                              count(DISTINCT rank) dr
                       FROM rankings WHERE subset = $s GROUP BY ALL)
            SELECT count(*) FROM c LEFT JOIN r USING (query_id)
            WHERE r.n IS NULL OR r.n != c.n OR r.d != c.n OR r.lo != 0 OR r.hi != c.n - 1 OR r.dr != c.n
            """,
            {"s": context.partition_key},
        ).fetchone()[0]
    return dg.AssetCheckResult(passed=bad == 0, metadata={"queries_with_incomplete_ranking": bad})


@dg.asset_check(
    asset=rankings,
    blocking=False,
    description="Unparsed listwise answers stay below RankingsConfig.max_unparsed_share.",
)
def ranking_unparsed_share(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource):
    with duckdb.get_connection() as conn:
        return unparsed_check(conn, "ranking_windows", context.partition_key, RankingsConfig().max_unparsed_share)
