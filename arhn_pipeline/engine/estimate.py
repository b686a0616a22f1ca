"""What the LLM stages of a partition will cost before they run: requests, how many the call cache already
answers, prompt tokens to send (the model's own tokenizer and chat template where it has one, else about 3.5
characters a token), generated tokens, dollars at the user's prices, and time at the engine's measured rate.

The cascade's LLM judge sees only the queries the stage before it flagged: the exact set where that stage's
verdicts are stored for the partition, else the stage's flag rate measured on the other partitions (an
expectation), else every query (an upper bound, and said to be one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl

from arhn_pipeline.engine.base import LLMEngine, LLMRequest

# The Batch API's price, as a share of the online one (OpenAI: half).
BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class Price:
    """Dollars per million input and output tokens."""

    input: float
    output: float


def parse_prices(specs: Sequence[str]) -> dict[str | None, Price]:
    """`IN,OUT` (every model) or `MODEL=IN,OUT` (dollars per million tokens) -> {model or None: Price}."""
    prices: dict[str | None, Price] = {}
    for spec in specs:
        model, _, numbers = spec.rpartition("=")
        try:
            inp, out = (float(x) for x in numbers.split(","))
        except ValueError:
            raise ValueError(f"price {spec!r}: expected IN,OUT or MODEL=IN,OUT in dollars per million tokens") from None
        prices[model or None] = Price(inp, out)
    return prices


@dataclass
class Estimate:
    stage: str
    model: str
    requests: int
    cached: int
    prompt_tokens: int  # of the requests still to send
    completion_tokens_bound: int  # sum of max_tokens of the requests still to send
    completion_tokens_expected: int | None  # from the mean of earlier answers to the same template, if any
    reach: str = "every request"  # which share of the stage's requests this counts, and how it is known
    seconds_per_request: float | None = None

    @property
    def to_send(self) -> int:
        return self.requests - self.cached

    @property
    def completion_tokens(self) -> int:
        """Expected where earlier answers tell, else the bound."""
        return (
            self.completion_tokens_bound if self.completion_tokens_expected is None else self.completion_tokens_expected
        )

    def dollars(self, price: Price | None, discount: float = 0.0) -> float | None:
        if price is None:
            return None
        return (self.prompt_tokens * price.input + self.completion_tokens * price.output) / 1e6 * (1 - discount)

    def scaled(self, share: float, reach: str) -> Estimate:
        def part(n: int) -> int:
            return math.ceil(n * share)

        expected = self.completion_tokens_expected
        return Estimate(
            self.stage,
            self.model,
            part(self.requests),
            part(self.cached),
            part(self.prompt_tokens),
            part(self.completion_tokens_bound),
            None if expected is None else part(expected),
            reach,
            self.seconds_per_request,
        )

    def lines(self) -> list[str]:
        expected = (
            "no earlier answers to go by"
            if self.completion_tokens_expected is None
            else (f"~{self.completion_tokens_expected:,} expected")
        )
        return [
            f"{self.stage}: {self.requests:,} requests, {self.cached:,} already in the call cache, "
            f"{self.to_send:,} to send ({self.reach})",
            f"  prompt tokens to send: {self.prompt_tokens:,}",
            f"  generated tokens: at most {self.completion_tokens_bound:,}, {expected}",
        ]


def estimate(store: Any, llm: LLMEngine, stage: str, requests: list[LLMRequest]) -> Estimate:
    model = llm.model_id()
    requests = [llm.with_defaults(r) for r in requests]
    keys = [r.cache_key(model) for r in requests]
    known = set(store.lookup_calls(keys)) if requests else set()
    todo = list({k: r for k, r in zip(keys, requests, strict=True) if k not in known}.values())
    mean = store.mean_completion_tokens(model, requests[0].template) if requests else None
    return Estimate(
        stage=stage,
        model=model,
        requests=len(requests),
        cached=len(requests) - len(todo),
        prompt_tokens=sum(llm.count_tokens(todo)) if todo else 0,
        completion_tokens_bound=sum(r.sampling.max_tokens for r in todo),
        completion_tokens_expected=None if mean is None else round(mean * len(todo)),
    )


def forwarded_share(
    conn: duckdb.DuckDBPyConnection | None, subset: str, stage_index: int, stage_name: str
) -> tuple[set[str] | float | None, str]:
    """Which queries cascade stage `stage_index` - 1 sends on: its exact set from this partition's stored
    verdicts, else its measured share elsewhere, else None (every query: an upper bound)."""
    if conn is None or stage_index == 0:
        return None, "every query" if stage_index == 0 else "every query: an upper bound (nothing measured yet)"
    rows = conn.execute(
        "SELECT query_id, bool_and(final) FROM verdicts WHERE subset = ? AND stage_index = ? GROUP BY query_id",
        [subset, stage_index - 1],
    ).fetchall()
    if rows:
        flagged = {q for q, final in rows if not final}
        return flagged, f"the {len(flagged):,} of {len(rows):,} queries the stage before flagged here"
    row = conn.execute(
        "SELECT count(DISTINCT (subset, query_id)) FILTER (WHERE NOT final), count(DISTINCT (subset, query_id)) "
        "FROM verdicts v WHERE stage_index = ? AND subset != ?",
        [stage_index - 1, subset],
    ).fetchone()
    if row and row[1]:
        share = row[0] / row[1]
        return share, f"{share:.1%} of queries: the stage before's flag rate on {row[1]:,} queries elsewhere"
    return None, f"every query: an upper bound (no flag rate measured for {stage_name}'s stage before)"


def table(
    estimates: list[tuple[str, Estimate]], prices: dict[str | None, Price], discount: float
) -> tuple[list[str], list[tuple[Any, ...]], float | None]:
    """A row per (partition, stage) and a total: requests to send, tokens, dollars, time."""
    headers = ["partition", "stage", "model", "to send", "prompt tok", "output tok", "$", "time", "reaches"]
    rows: list[tuple[Any, ...]] = []
    total: float | None = 0.0
    seconds = 0.0
    for partition, e in estimates:
        price = prices.get(e.model.removeprefix("openai/"), prices.get(None))
        cost = e.dollars(price, discount)
        total = None if total is None or cost is None else total + cost
        time_text = "-"
        if e.seconds_per_request is not None and e.to_send:
            seconds += e.seconds_per_request * e.to_send
            time_text = f"{e.seconds_per_request * e.to_send / 60:.1f} min"
        rows.append(
            (
                partition,
                e.stage,
                e.model,
                f"{e.to_send:,}",
                f"{e.prompt_tokens:,}",
                f"{e.completion_tokens:,}",
                "-" if cost is None else f"{cost:,.2f}",
                time_text,
                e.reach,
            )
        )
    rows.append(
        (
            "all",
            "",
            "",
            f"{sum(e.to_send for _, e in estimates):,}",
            f"{sum(e.prompt_tokens for _, e in estimates):,}",
            f"{sum(e.completion_tokens for _, e in estimates):,}",
            "-" if total is None else f"{total:,.2f}",
            f"{seconds / 60:.1f} min" if seconds else "-",
            "",
        )
    )
    return headers, rows, total


def pairs_from_records(values: list[object], fmt: str) -> pl.DataFrame:
    """A not-yet-ingested source's pairs as load_pairs gives them (invalid rows left out), for an estimate."""
    from arhn_pipeline.identity import passage_key
    from arhn_pipeline.sources.rows import RowError, parse_row

    rows = []
    for value in values:
        try:
            t = parse_row(value, fmt)  # type: ignore[arg-type]
        except RowError:
            continue
        for role, items in (("positive", t.positives), ("negative", t.negatives)):
            for rank, c in enumerate(items):
                rows.append(
                    dict(
                        query_id=t.query_id,
                        query=t.query,
                        passage_id=passage_key(c.text, c.title),
                        role=role,
                        original_rank=rank,
                        title=c.title,
                        passage=c.text,
                    )
                )
    schema = dict.fromkeys(["query_id", "query", "passage_id", "role", "title", "passage"], pl.String)
    return pl.DataFrame(rows, schema={**schema, "original_rank": pl.Int64}).select(
        "query_id", "query", "passage_id", "role", "original_rank", "title", "passage"
    )
