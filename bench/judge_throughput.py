"""The CPU judge's pairs per second and agreement, as shipped and as a cascade, in one run on one machine.

On TREC DL's judged hard negatives, each year is judged by the recipe fitted on the other year (threshold from
that year), and Cohen's kappa taken against the NIST grades (grade >= 2 = false negative):
  shipped       every pair through the three embedders (EmbeddingGemma-300M, all-MiniLM-L6-v2, SPLADE-tiny)
  cascade       all-MiniLM-L6-v2 and SPLADE-tiny first; EmbeddingGemma only on the pairs they leave open
  cascade bf16  the same with every embedder in bfloat16 (where the CPU computes it natively)
  cascade int8  the same with every embedder's linear layers quantized to int8 (PyTorch dynamic quantization)
  relative margin (MiniLM)  the filter a user would otherwise run: sentence-transformers' `relative_margin`
                (NV-Retriever's TopK-PercPos), a negative flagged when its cosine to the query is at least (1 - m) x
                the positive's, with all-MiniLM-L6-v2; at m = 0.05 and at the m fitted on the other year
  stored        the shipped judge again over the same texts, their vectors read from the store (vector_store.py)
Each variant starts from an empty vector store and memo with its models loaded (load time apart); the time is
judging only. Memory: the process's peak RSS after each variant (it can only grow). Projected hours for 1.5
million pairs at each rate.

    .venv/bin/python bench/judge_throughput.py            # needs ../shared/data; ~25 min on 2 cores
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
PAIRS_AT_SIZE = 1_500_000


def fresh_store() -> None:
    from arhn_pipeline import embeddings

    os.environ["ARHN_EMBEDDINGS_DIR"] = tempfile.mkdtemp(prefix="arhn-bench-vectors-")
    embeddings._MEMO.clear()


def timed(judge, triples, label, y) -> dict:
    from arhn_pipeline.trained_judge import core

    for name in judge.embedders:  # load apart from the timing
        core.embeddings.load(name).encode(["warm up"])
    t0 = time.perf_counter()
    judged = judge.judge(triples)
    seconds = time.perf_counter() - t0
    flagged = judged.value >= judge.threshold
    return {
        "variant": label,
        "pairs": len(triples),
        "seconds": seconds,
        "pairs_per_s": len(triples) / seconds,
        "kappa": core.kappa(y, flagged),
        "whole_share": float(judged.whole.mean()),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


MARGINS = [round(0.01 * i, 2) for i in range(0, 31)]


def relative_margin(triples, y, label, m_fitted) -> list[dict]:
    """sentence-transformers' relative_margin filter with all-MiniLM-L6-v2, timed from an empty store."""
    from arhn_pipeline import embeddings
    from arhn_pipeline.trained_judge import core

    model = embeddings.load(embeddings.DEFAULT_EMBEDDER)
    model.encode(["warm up"])
    t0 = time.perf_counter()
    ratio = margin_ratio(model, triples)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = []
    for m, name in ((0.05, f"{label} 0.05"), (m_fitted, f"{label} {m_fitted:.2f} (fitted)")):
        out.append({"variant": name, "pairs": len(triples), "seconds": seconds, "pairs_per_s": len(triples) / seconds,
                    "kappa": core.kappa(y, ratio >= 1 - m), "whole_share": 0.0, "peak_mib": peak})  # fmt: skip
    return out


def margin_ratio(model, triples) -> np.ndarray:
    """cos(query, negative) / cos(query, positive) per triple."""
    from arhn_pipeline.embeddings import encode_unique

    qi, qv = encode_unique(model, [t.query for t in triples], query=True)
    pi, pv = encode_unique(model, [t for tr in triples for t in (tr.positive, tr.negative)], query=False)
    q = qv[[qi[t.query] for t in triples]]
    pos = (pv[[pi[t.positive] for t in triples]] * q).sum(1)
    neg = (pv[[pi[t.negative] for t in triples]] * q).sum(1)
    return neg / np.maximum(pos, 1e-6)


def fitted_margin(triples, y) -> float:
    """The relative margin with the best kappa on a training year (MiniLM)."""
    from arhn_pipeline import embeddings
    from arhn_pipeline.trained_judge import core

    ratio = margin_ratio(embeddings.load(embeddings.DEFAULT_EMBEDDER), triples)
    return max(MARGINS, key=lambda m: core.kappa(y, ratio >= 1 - m))


def main() -> None:
    from judge_features import judged

    from arhn_pipeline.trained_judge import core

    data = {name: judged(name) for name in ("dl19", "dl20")}
    fitted = {}
    for train in ("dl19", "dl20"):  # the training years' features (not timed; kept by review_sample_size.py too)
        cache = ROOT / "var" / "bench-cache" / f"judge_features_{train}.npz"
        triples, y = data[train]
        if cache.exists():
            x = np.load(cache)["x"]
        else:
            fresh_store()
            x = core.features(triples, core.DEFAULT_EMBEDDERS)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, x=x, y=y)
        judge = core.fit(x, y, core.DEFAULT_EMBEDDERS, {f"trec_{train}_judged": "bench"})
        cascaded = core.fit_cascade(
            x, y, core.JudgeModel(**judge.__dict__), [core.embeddings.DEFAULT_EMBEDDER, core.embeddings.SPLADE_TINY]
        )
        fitted[train] = (judge, cascaded)
        print(f"fitted on {train}: cascade passes on {cascaded.cheap['passed_on_share']:.0%} of the training pairs, "
              f"keeps {cascaded.cheap['flags_kept']:.1%} of the whole judge's flags", flush=True)  # fmt: skip
    fresh_store()
    margins = {train: fitted_margin(*data[train]) for train in ("dl19", "dl20")}
    rows = []
    for train, test in (("dl20", "dl19"), ("dl19", "dl20")):
        triples, y = data[test]
        judge, cascaded = fitted[train]
        for label, model, dtype in (("shipped", judge, "float32"), ("cascade", cascaded, "float32"),
                                    ("cascade bf16", cascaded, "bfloat16"),
                                    ("cascade int8", cascaded, "int8")):  # fmt: skip
            os.environ["ARHN_EMBED_DTYPE"] = dtype
            fresh_store()
            rows.append((test, timed(model, triples, label, y)))
            print(test, rows[-1][1], flush=True)
            if label == "shipped":  # the same texts again: every vector from the store
                core.embeddings._MEMO.clear()
                rows.append((test, timed(model, triples, "stored (shipped)", y)))
                print(test, rows[-1][1], flush=True)
        os.environ["ARHN_EMBED_DTYPE"] = "float32"
        fresh_store()
        for r in relative_margin(triples, y, "relative margin (MiniLM)", margins[train]):
            rows.append((test, r))
            print(test, r, flush=True)
    print("\n| year | variant | pairs | seconds | pairs/s | x shipped | kappa | kappa - shipped | whole judge on | "
          "peak RSS | hours for 1.5M pairs |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for test, r in rows:
        base = next(b for t, b in rows if t == test and b["variant"] == "shipped")
        hours = PAIRS_AT_SIZE / r["pairs_per_s"] / 3600
        print(f"| {test} | {r['variant']} | {r['pairs']:,} | {r['seconds']:.1f} | {r['pairs_per_s']:.1f} | "
              f"{r['pairs_per_s'] / base['pairs_per_s']:.1f}x | {r['kappa']:.3f} | {r['kappa'] - base['kappa']:+.3f} | "
              f"{r['whole_share']:.0%} | {r['peak_mib']:.0f} MiB | {hours:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
