"""The `rankings` asset (ARHN stage 2): a thin shell over rankings/core.py."""

import dagster as dg
import polars as pl
from pydantic import Field

from arhn_pipeline import embeddings, faults, scorers
from arhn_pipeline.engine.base import LLMEngine
from arhn_pipeline.engine.batch_api import set_stage
from arhn_pipeline.engine.cache import CallStats
from arhn_pipeline.engine.prompts import code_version
from arhn_pipeline.llm_stage import llm_stage_asset, share_check
from arhn_pipeline.markdown import md_table
from arhn_pipeline.rankings import core
from arhn_pipeline.store import (
    DuckDBStore,
    load_pairs,
    other_tables_metadata,
    replace_partition,
    scalar,
    set_parse_status,
    table_metadata,
    transaction,
)
from arhn_pipeline.vocab import ParseStatus, Ranker, Role

FULLY_RANKED = "every_candidate_set_is_fully_ranked"
UNPARSED_SHARE = "ranking_unparsed_share"
NO_EVIDENCE_SHARE = "ranking_echoed_or_degenerate_share"


class RankingsConfig(dg.Config):
    ranker: Ranker = Field(
        default=Ranker.auto,
        description="llm: a listwise LLM ranking (ARHN); scorer: the candidates ordered by `scorer`'s scores; "
        "auto: llm where the engine is a judge worth asking (a served or hosted model, vLLM on a GPU; see the "
        "engine's `judge` setting), scorer elsewhere",
    )
    scorer: str = Field(
        default=scorers.DEFAULT_SCORER,
        description="ranker=scorer: judge:NAME (a trained judge), cross:MODEL (a CrossEncoder) or a "
        "sentence-transformers model name or folder (see arhn_pipeline/scorers.py)",
    )
    passage_max_tokens: int = Field(
        default=core.PASSAGE_MAX_TOKENS, description="each passage is cut to this many tokens in the prompt"
    )
    window_size: int = Field(
        default=core.WINDOW_SIZE, description="candidates per listwise request; larger sets use sliding windows"
    )
    stride: int = Field(default=core.STRIDE, description="how far the window moves up (back to front) between requests")
    shuffle: bool = Field(default=True, description="show candidates in a fixed per-query shuffle, not source order")
    batch_size: int = Field(default=256, description="requests per engine call")
    max_unparsed_share: float = Field(default=0.05, description="the unparsed-window check fails above this")
    max_no_evidence_share: float = Field(
        default=0.2, description="the check of echoed (order shown repeated) or degenerate windows fails above this"
    )

    def chosen_ranker(self, llm: LLMEngine) -> tuple[Ranker, str]:
        """The ranker this config uses with this engine (`auto`: the engine's judge rule), and why."""
        if self.ranker != Ranker.auto:
            return self.ranker, "configured"
        ask, why = llm.judge_rule()
        return (Ranker.llm if ask else Ranker.scorer), f"auto -> {'llm' if ask else 'scorer'}: {why}"

    def plan(self, pairs: pl.DataFrame, llm: LLMEngine) -> core.RankingPlan:
        return core.RankingPlan(
            pairs,
            llm,
            window_size=self.window_size,
            stride=self.stride,
            shuffle=self.shuffle,
            passage_max_tokens=self.passage_max_tokens,
        )


@llm_stage_asset(
    name="rankings",
    group_name="arhn",
    code_version=code_version(core.TEMPLATE, core.PARSER_VERSION),
    description="ARHN stage 2: a listwise ranking of each query's candidates (an LLM with sliding windows, or a "
    "scorer); every candidate's rank, whether the ranker placed it, and the original positive's rank.",
    check_specs=[
        dg.AssetCheckSpec(
            FULLY_RANKED, asset="rankings", blocking=True, description="Each candidate once, ranks 0..n-1."
        ),
        dg.AssetCheckSpec(UNPARSED_SHARE, asset="rankings", description="Unparsed windows below max_unparsed_share."),
        dg.AssetCheckSpec(
            NO_EVIDENCE_SHARE,
            asset="rankings",
            description="Echoed or degenerate windows (no ranking evidence) below max_no_evidence_share.",
        ),
    ],
)
def rankings(context: dg.AssetExecutionContext, config: RankingsConfig, duckdb: DuckDBStore, llm: LLMEngine):
    subset = context.partition_key
    set_stage(subset, "rankings")  # a Batch API run records what to re-run when its batches finish
    faults.point("stage_start")  # a fault-injection point: the stages before this one are materialized
    with duckdb.reading() as conn:  # a snapshot: no write lock
        pairs = load_pairs(conn, subset)
    stats = CallStats()
    ranker, rule = config.chosen_ranker(llm)
    context.log.info(f"{subset}: ranker {ranker} ({rule})")
    if ranker == Ranker.scorer:
        scorer = scorers.load(config.scorer)
        context.log.info(f"{subset}: ranking {pairs.height} candidates with {scorer.scorer_id}")
        with embeddings.reporting(context.log.info):
            scores = scorer.score_pairs(pairs)
        states = core.rank_by_scores(pairs, scores, scorer.scorer_id)
        model, version = scorer.scorer_id, "scorer"
    else:
        states, stats = core.rank_partition(
            config.plan(pairs, llm), llm, duckdb, config.batch_size, log=context.log.info
        )
        model, version = llm.model_id(), core.TEMPLATE.version
    ranks, windows = core.ranking_rows(subset, pairs, states, model, version)
    with duckdb.get_connection() as conn, transaction(conn):  # both tables, or neither
        replace_partition(conn, "rankings", subset, ranks)
        replace_partition(conn, "ranking_windows", subset, windows)
        if ranker == Ranker.llm:
            set_parse_status(conn, dict(zip(windows["call_id"], windows["status"], strict=True)))
        incomplete = scalar(conn, FULLY_RANKED_SQL, {"s": subset})
        tables = {
            **table_metadata(conn, "rankings", subset),
            **other_tables_metadata(conn, ["ranking_windows"], subset),
        }
    negatives = ranks.filter(pl.col("role") == Role.NEGATIVE)
    above = negatives.filter(pl.col("placed") & (pl.col("rank") < pl.col("positive_rank"))).height
    repaired = windows.filter(pl.col("status") != ParseStatus.PARSED).select("query_id", "status", "repairs").head(10)
    statuses = windows["status"].to_list()
    positive_ranks = ranks.group_by("query_id").agg(pl.col("positive_rank").first())["positive_rank"].to_list()
    return dg.MaterializeResult(
        metadata={
            **tables,
            "ranker": str(ranker),
            "ranker_chosen_by": rule,
            "queries": len(states),
            "windows": windows.height,
            **{f"windows_{s}": int(n) for s, n in windows["status"].value_counts().iter_rows()},
            "negatives_ranked_above_positive": above,
            "mean_positive_rank": round(sum(positive_ranks) / len(positive_ranks) if positive_ranks else 0.0, 2),
            **stats.as_metadata(),
            "model": model,
            **(llm.settings_metadata() if ranker == Ranker.llm else {}),
            "prompt_version": version,
            "windows_not_read_as_given": dg.MetadataValue.md(
                md_table(["query_id", "status", "what the parser repaired or why no evidence"], repaired.rows())
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=FULLY_RANKED,
                passed=incomplete == 0,
                metadata={"queries_with_incomplete_ranking": incomplete},
            ),
            share_check(UNPARSED_SHARE, statuses, {ParseStatus.UNPARSED}, config.max_unparsed_share),
            share_check(
                NO_EVIDENCE_SHARE, statuses, {ParseStatus.ECHOED, ParseStatus.DEGENERATE}, config.max_no_evidence_share
            ),
        ],
    )


FULLY_RANKED_SQL = """
WITH c AS (SELECT query_id, count(*) n FROM candidates WHERE subset = $s GROUP BY ALL),
     r AS (SELECT query_id, count(*) n, count(DISTINCT passage_id) d, min(rank) lo, max(rank) hi,
                  count(DISTINCT rank) dr
           FROM rankings WHERE subset = $s GROUP BY ALL)
SELECT count(*) FROM c LEFT JOIN r USING (query_id)
WHERE r.n IS NULL OR r.n != c.n OR r.d != c.n OR r.lo != 0 OR r.hi != c.n - 1 OR r.dr != c.n
"""
