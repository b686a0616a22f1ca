"""Train and evaluate retrievers on real data, seed-controlled, printing a table and the time each step took.

    .venv/bin/python scripts/compare_retrievers.py trec_dl   # DL19 judged rows: as-is / human FNs -> positives
                                                             # / human FNs removed; eval on beir/trec_dl20_pooled
    .venv/bin/python scripts/compare_retrievers.py scifact   # SciFact train (BM25 negatives): original / margin
                                                             # (m=0.05) flagged negatives removed; eval on beir/scifact

Settings (both): all-MiniLM-L6-v2 (offline), MultipleNegativesRankingLoss, batch 16, 3 negatives, lr 2e-5,
max length 256, 1 epoch, seed 42. Needs ../shared/data. Models go to var/compare/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from arhn_pipeline import embeddings, settings
from arhn_pipeline.evaluate import core as ev
from arhn_pipeline.train import core as tr
from arhn_pipeline.train.assets import TrainedRetrieverConfig

SETTINGS = TrainedRetrieverConfig(
    negatives_per_query=3, batch_size=16, learning_rate=2e-5, max_length=256, epochs=1, seed=42
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def trec_dl_variants(shared: Path) -> dict[str, list[dict]]:
    rows = read_jsonl(shared / "judged" / "trec_dl19_bm25_hardneg_human_grades.jsonl")
    out = {"as_is": [], "fn_to_positive": [], "fn_removed": []}
    for r in rows:
        fn = [n for n, g in zip(r["neg"], r["neg_human_grades"], strict=True) if g is not None and g >= 2]
        rest = [n for n in r["neg"] if n not in fn]
        out["as_is"].append({"query": r["query"], "pos": r["pos"], "neg": r["neg"]})
        out["fn_to_positive"].append({"query": r["query"], "pos": r["pos"] + fn, "neg": rest})
        out["fn_removed"].append({"query": r["query"], "pos": r["pos"], "neg": rest})
    return out


def scifact_variants(shared: Path) -> dict[str, list[dict]]:
    from arhn_pipeline.judgments.core import NONE, margin_label_sets

    rows = read_jsonl(shared / "train" / "scifact_train_bm25_hardneg.jsonl")
    # the negatives as mined: the top 3 BM25 negatives, as in DESIGN.md's measurement
    original = [{"query": r["query"], "pos": r["pos"], "neg": r["neg"][:3]} for r in rows]
    t0 = time.perf_counter()
    items = [(r["query"], r["pos"], r["neg"]) for r in original]
    cleaned, flagged = [], 0
    for r, (labels, _) in zip(original, margin_label_sets(embeddings.load(), items, margin=0.05), strict=True):
        keep = [n for n, lab in zip(r["neg"], labels, strict=True) if lab == NONE]
        flagged += len(r["neg"]) - len(keep)
        cleaned.append({"query": r["query"], "pos": r["pos"], "neg": keep})
    print(
        f"margin 0.05 flagged {flagged} of {sum(len(r['neg']) for r in original)} negatives "
        f"({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    return {"original": original, "margin_removed": cleaned}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment", choices=["trec_dl", "scifact"])
    args = ap.parse_args()
    shared = settings.shared_data_dir()
    if args.experiment == "trec_dl":
        variants, beir = trec_dl_variants(shared), shared / "beir" / "trec_dl20_pooled"
    else:
        variants, beir = scifact_variants(shared), shared / "beir" / "scifact"
    corpus, queries, qrels = ev.load_beir(beir)
    print(f"eval set {beir.name}: {len(corpus):,} docs, {len(queries)} queries", flush=True)
    from sentence_transformers import SentenceTransformer

    results = []
    models = [("base", embeddings.model_location(embeddings.DEFAULT_EMBEDDER), 0.0)]
    for name, rows in variants.items():
        out = settings.var_dir() / "compare" / args.experiment / name
        t0 = time.perf_counter()
        info = tr.fine_tune(embeddings.DEFAULT_EMBEDDER, rows, out, SETTINGS, log=lambda m: None)
        seconds = time.perf_counter() - t0
        print(f"trained {name}: {info} in {seconds:.0f} s", flush=True)
        models.append((name, str(out), seconds))
    for name, location, train_s in models:
        t0 = time.perf_counter()
        model = SentenceTransformer(location, device="cpu")
        model.max_seq_length = SETTINGS.max_length
        s = ev.score(ev.retrieve(model, corpus, queries), qrels)
        results.append((name, s["nDCG@10"], s["R@100"], train_s, time.perf_counter() - t0))
        print(f"evaluated {name}: {s} in {results[-1][4]:.0f} s", flush=True)
    print("\n| variant | nDCG@10 | Recall@100 | train s | eval s |\n|---|---|---|---|---|")
    for name, ndcg, recall, train_s, eval_s in results:
        print(f"| {name} | {ndcg:.4f} | {recall:.4f} | {train_s:.0f} | {eval_s:.0f} |")


if __name__ == "__main__":
    main()
