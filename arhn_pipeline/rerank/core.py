"""A reranker per training variant, without Dagster: a sentence-transformers CrossEncoder fine-tuned with binary
cross-entropy on the variant's triplets ((query, positive) = 1, (query, hard negative) = 0), and its evaluation by
re-ranking a first-stage retriever's top k of a BEIR-layout set (RLHN's second downstream model).

The offline default starts from the packaged all-MiniLM-L6-v2 weights with a new one-logit head; on a connected
machine any CrossEncoder or encoder by name (e.g. cross-encoder/ms-marco-MiniLM-L6-v2, BAAI/bge-reranker-base).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from arhn_pipeline import settings
from arhn_pipeline.markdown import figures_line


def reranker_dir(variant: str) -> Path:
    return settings.var_dir() / "rerankers" / variant


class RerankerSettings(Protocol):
    """What reranker training reads; the settings themselves, with defaults and descriptions, are
    rerank.assets.TrainedRerankerConfig."""

    negatives_per_query: int
    epochs: int
    learning_rate: float
    batch_size: int
    max_length: int
    seed: int
    warmup_ratio: float


def pairs(rows: list[dict[str, Any]], s: RerankerSettings) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """rows: {query, pos: [...], neg: [...]} -> (query, passage, label) examples: every positive with label 1,
    and up to `negatives_per_query` of the query's hard negatives (drawn with the seed) with label 0."""
    rng = random.Random(s.seed)
    out: list[dict[str, Any]] = []
    counts = {"queries": 0, "positive_pairs": 0, "negative_pairs": 0}
    for r in rows:
        if not r["pos"]:
            continue
        counts["queries"] += 1
        negs = list(r["neg"])
        if len(negs) > s.negatives_per_query:
            negs = rng.sample(negs, s.negatives_per_query)
        out += [{"query": r["query"], "passage": p, "label": 1.0} for p in r["pos"]]
        out += [{"query": r["query"], "passage": n, "label": 0.0} for n in negs]
        counts["positive_pairs"] += len(r["pos"])
        counts["negative_pairs"] += len(negs)
    rng.shuffle(out)
    return out, counts


def load(location: str, max_length: int = 256) -> Any:
    import torch
    from sentence_transformers import CrossEncoder

    from arhn_pipeline import embeddings

    device = None if torch.cuda.is_available() else "cpu"
    return CrossEncoder(embeddings.model_location(location), num_labels=1, max_length=max_length, device=device)


def fine_tune(
    base_model: str,
    rows: list[dict[str, Any]],
    out_dir: Path,
    s: RerankerSettings,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune a CrossEncoder from `base_model` on `rows` with BinaryCrossEntropyLoss (positives weighted by
    negatives / positives, so both classes count alike); save it to `out_dir`."""
    import datasets
    import torch
    from sentence_transformers.cross_encoder import CrossEncoderTrainer
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as Args
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import TrainerCallback, set_seed

    from arhn_pipeline import faults

    set_seed(s.seed)
    torch.manual_seed(s.seed)
    data, counts = pairs(rows, s)
    if not counts["positive_pairs"] or not counts["negative_pairs"]:
        raise ValueError("no training pair: the reranker needs queries with positives and hard negatives")
    model = load(base_model, s.max_length)

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
        use_cpu=not torch.cuda.is_available(),
    )
    pos_weight = torch.tensor(counts["negative_pairs"] / counts["positive_pairs"])
    trainer = CrossEncoderTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(data),
        loss=BinaryCrossEntropyLoss(model, pos_weight=pos_weight),
        callbacks=[Progress()],
    )
    result = trainer.train()
    model.save_pretrained(str(out_dir))
    return {**counts, "steps": result.global_step, "train_loss": round(float(result.training_loss), 4)}


def rerank(
    model: Any,
    corpus: dict[str, str],
    queries: dict[str, str],
    run: dict[str, dict[str, float]],
    k: int = 100,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """The first stage's top k of every query, scored again by the cross-encoder (its scores replace the
    first stage's; documents below k are left out)."""
    out = {}
    for qid, docs in run.items():
        top = sorted(docs, key=lambda d: -docs[d])[:k]
        scores = model.predict([(queries[qid], corpus[d]) for d in top], batch_size=batch_size, convert_to_numpy=True)
        out[qid] = {d: float(x) for d, x in zip(top, scores, strict=True)}
    return out
