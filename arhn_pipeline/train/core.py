"""Training examples and the sentence-transformers fine-tuning loop (no Dagster).

One example per (query, positive): relabeled positives add examples, as RLHN's `rlhn` technique intends.
MultipleNegativesRankingLoss needs the same number of hard negatives in every example; when a cleaned query
has fewer than asked, `negative_rule` decides:
  - `sample_with_replacement` (Tevatron's rule): draw the query's own negatives again; a query left with no
    negative at all borrows from other queries;
  - `pad_from_other_queries`: fill up with negatives of other queries, drawn with the seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import duckdb

from arhn_pipeline import settings, shards
from arhn_pipeline.export import rows
from arhn_pipeline.markdown import figures_line
from arhn_pipeline.vocab import VARIANTS, NegativeRule

# variant (a trained_retriever partition) -> the collection it trains on


def retriever_dir(variant: str) -> Path:
    return settings.var_dir() / "retrievers" / variant


def variant_rows(
    read: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]],
    variant: str,
    subsets: list[str] | None = None,
    pruned_name: str = "pruned",
) -> list[dict[str, Any]]:
    """The BGE-shaped rows a variant trains on (the retriever and the reranker alike): the original collection,
    a cleaning method's, the pruned collection named `pruned_name`, or the original less what the relative-margin
    filter flags; only `subsets` when given. Read on a connection of `read()` (the store's `reading`); the
    filter's embedding runs after it is closed."""
    method = VARIANTS[variant]
    with read() as conn:
        if method == "pruned":
            data = list(rows(conn, "", pruned=pruned_name))
        else:
            data = list(rows(conn, "original" if method.startswith("margin:") else method, subsets))
    if subsets:
        data = [r for r in data if r["subset"] in subsets or shards.dataset_of(r["subset"]) in subsets]
    if method.startswith("margin:"):
        data = margin_filtered(data, float(method.split(":", 1)[1]))
    return data


def margin_filtered(data: list[dict[str, Any]], margin: float) -> list[dict[str, Any]]:
    """The rows with every negative the relative-margin filter flags left out: a negative whose cosine to the query
    (all-MiniLM-L6-v2) is at least (1 - margin) x the best positive's, the rule of `margin:M` in `arhn agreement`
    (judgments.core.margin_labels). A query keeps its row even when no negative is left."""
    from arhn_pipeline import embeddings
    from arhn_pipeline.judgments.core import NONE, margin_label_sets

    kept = [r for r in data if r["pos"] and r["neg"]]  # nothing to compare against, or nothing to filter
    items = [(r["query"], r["pos"], r["neg"]) for r in kept]
    labels = {id(r): lab for r, (lab, _) in zip(kept, margin_label_sets(embeddings.load(), items, margin), strict=True)}
    out = []
    for r in data:
        flags = labels.get(id(r))
        out.append(r if flags is None else {**r, "neg": [n for n, f in zip(r["neg"], flags, strict=True) if f == NONE]})
    return out


def method_variant(method: str) -> str | None:
    """The training variant of a collection (`arhn:R+F` -> `arhn_RF`), if there is one."""
    return next((v for v, m in VARIANTS.items() if m == method), None)


FINGERPRINT_FILE = "arhn_fingerprint.txt"


def fingerprint(kind: str, base_model: str, rows: list[dict[str, Any]], s: Any, fields: Any) -> str:
    """What makes a trained model: its kind, the base model, the training rows in their order and every setting
    that training reads (`fields`: the settings protocol). Training is seeded, so two variants with the same
    fingerprint (a withheld method's collection is the original's) make the same model."""
    settings_used = {name: str(getattr(s, name)) for name in fields.__annotations__}
    blob = json.dumps([kind, base_model, [[r["query"], r["pos"], r["neg"]] for r in rows], settings_used])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_fingerprint(model_dir: Path) -> str | None:
    path = model_dir / FINGERPRINT_FILE
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def reuse_model(out_dir: Path, fp: str, siblings: list[Path]) -> str | None:
    """Make `out_dir` hold the model of fingerprint `fp` without training, if it or a sibling variant's folder
    already holds it; returns what was reused (None: train)."""
    import shutil

    if read_fingerprint(out_dir) == fp:
        return "this variant's model, trained on the same data with the same settings"
    twin = next((d for d in siblings if d != out_dir and read_fingerprint(d) == fp), None)
    if twin is None:
        return None
    tmp = out_dir.with_name(out_dir.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(twin, tmp, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return f"the model of variant {twin.name}: the same training data and settings"


def write_fingerprint(model_dir: Path, fp: str) -> None:
    (model_dir / FINGERPRINT_FILE).write_text(fp + "\n", encoding="utf-8")


class TrainingSettings(Protocol):
    """What training reads; the settings themselves, with defaults and descriptions, are
    train.assets.TrainedRetrieverConfig."""

    negatives_per_query: int
    negative_rule: NegativeRule
    scale: float  # MNRL's inverse temperature
    epochs: int
    learning_rate: float
    batch_size: int
    max_length: int
    seed: int
    query_prefix: str
    passage_prefix: str
    warmup_ratio: float


def examples(rows: list[dict[str, Any]], s: TrainingSettings) -> tuple[list[dict[str, str]], dict[str, int]]:
    """rows: {query, pos: [...], neg: [...]} -> columns anchor, positive, negative_1..k; and counts of what
    the negative rule had to do."""
    rule = NegativeRule(s.negative_rule)
    rng = random.Random(s.seed)
    k = s.negatives_per_query
    pool = [n for r in rows for n in r["neg"]]
    counts = {"examples": 0, "queries": 0, "short_of_negatives": 0, "borrowed_negatives": 0}
    out = []
    for r in rows:
        if not r["pos"]:
            continue
        counts["queries"] += 1
        own = list(r["neg"])
        for pos in r["pos"]:
            if len(own) >= k:
                negs = rng.sample(own, k)
            else:
                counts["short_of_negatives"] += 1
                if rule == NegativeRule.sample_with_replacement and own:
                    negs = own + [rng.choice(own) for _ in range(k - len(own))]
                else:
                    others = [n for n in pool if n not in own and n not in r["pos"]]
                    extra = rng.sample(others, min(k - len(own), len(others)))
                    counts["borrowed_negatives"] += len(extra)
                    negs = own + extra
                if len(negs) < k:
                    continue
            row = {"anchor": s.query_prefix + r["query"], "positive": s.passage_prefix + pos}
            row.update({f"negative_{i + 1}": s.passage_prefix + n for i, n in enumerate(negs)})
            out.append(row)
    counts["examples"] = len(out)
    return out, counts


def fine_tune(
    base_model: str, rows: list[dict[str, Any]], out_dir: Path, s: TrainingSettings, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Fine-tune `base_model` (a sentence-transformers name or folder) on `rows`; save it to `out_dir`."""
    import datasets
    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Args
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback, set_seed

    from arhn_pipeline import embeddings, faults

    set_seed(s.seed)
    torch.manual_seed(s.seed)
    data, counts = examples(rows, s)
    if not data:
        raise ValueError("no training example: every query lacks a positive or enough negatives")
    model = SentenceTransformer(
        embeddings.model_location(base_model), device="cpu" if not torch.cuda.is_available() else None
    )
    model.max_seq_length = s.max_length

    class Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs:
                log(f"step {state.global_step}/{state.max_steps}: {figures_line(logs)}")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            faults.point("training_step")

    args = Args(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=s.epochs,
        per_device_train_batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        warmup_steps=s.warmup_ratio,  # a float below 1 is a share of the steps (Transformers v5)
        seed=s.seed,
        data_seed=s.seed,
        logging_steps=max(1, len(data) // s.batch_size // 10),
        save_strategy="no",
        report_to="none",
        batch_sampler="no_duplicates",
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(data),
        loss=MultipleNegativesRankingLoss(model, scale=s.scale),
        callbacks=[Progress()],
    )
    result = trainer.train()
    model.save(str(out_dir))
    return {**counts, "steps": result.global_step, "train_loss": round(float(result.training_loss), 4)}
