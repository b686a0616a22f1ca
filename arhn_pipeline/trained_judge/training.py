"""Fitting a judge on labelled negatives, for the trained_judge asset and `arhn train-judge`. What a judge
trains on, each named in its `trained_on` with a fingerprint:
  NAME                a registry entry with a reference (its raw_triplets ingested)
  NAME:reviews        a partition's reviews (arhn review), of the queries in the training half only
                      (review/core.py `train_half`): the other half qualifies the judge on that partition
  NAME:verdicts:STAGE a cascade stage's stored verdicts on a partition (e.g. a hosted LLM's on a sample):
                      better or worse = a false negative, none = not, unparsed left out
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import duckdb
import numpy as np

from arhn_pipeline import agreement as ag
from arhn_pipeline import settings
from arhn_pipeline.review import core as review_core
from arhn_pipeline.review import data as review_data
from arhn_pipeline.sources.registry import load_registry
from arhn_pipeline.store import load_pairs
from arhn_pipeline.trained_judge import core


def train(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    train_on: Sequence[str],
    embedders: Sequence[str] = core.DEFAULT_EMBEDDERS,
    regularization: float = 1.0,
    max_length: int = 256,
    cheap_embedders: Sequence[str] = (),
) -> tuple[core.JudgeModel, str]:
    """Fit the judge on the labelled negatives named by `train_on`; save it as settings.judges_dir()/NAME.json."""
    triples: list[core.Triple] = []
    labels, trained_on = [], {}
    for spec in train_on:
        subset, reference, fingerprint = labelled(conn, spec)
        pairs = load_pairs(conn, subset)
        if pairs.is_empty():
            raise ValueError(f"{subset!r} has no ingested rows: materialize its raw_triplets first")
        t, y = core.labelled_triples(pairs, reference)
        if not len(y):
            raise ValueError(f"{spec!r}: no labelled negatives to train on")
        triples += t
        labels.append(y)
        trained_on[spec] = fingerprint
    x = core.features(triples, embedders, max_length)
    y = np.concatenate(labels)
    judge = core.fit(x, y, embedders, trained_on, regularization, max_length)
    if cheap_embedders:
        judge = core.fit_cascade(x, y, judge, cheap_embedders)
    path = judge.save(settings.judges_dir() / f"{name}.json")
    return judge, str(path)


def labelled(conn: duckdb.DuckDBPyConnection, spec: str) -> tuple[str, dict[tuple[str, str], bool], str]:
    """(partition, labels, fingerprint) of one `train_on` entry (see the module's docstring)."""
    name, _, kind = spec.partition(":")
    if not kind:
        entry = load_registry().get(name)
        if entry is None or entry.reference is None:
            raise ValueError(f"{name!r} is not a registry entry with a `reference` to train on")
        return (
            name,
            ag.load_reference(entry.reference.format, entry.reference.path),
            core.file_sha256(entry.reference.path),
        )
    if kind == "reviews":
        answers = review_core.labels(review_data.reviews(conn, name))
        reference = {
            (q, p): label
            for (q, p), answer in answers.items()
            for label in [review_core.is_false_negative(answer)]
            if label is not None and review_core.train_half(q)
        }
        if not reference:
            raise ValueError(f"{spec!r}: no reviews of {name!r} in the training half (arhn review --subset {name})")
        return name, reference, f"reviews {review_data.version(conn, name)}, training half of the queries"
    if kind.startswith("verdicts:"):
        stage = kind.split(":", 1)[1]
        rows = conn.execute(
            "SELECT query_id, passage_id, verdict FROM verdicts WHERE subset = ? AND stage = ? AND verdict != "
            "'unparsed' ORDER BY ALL",
            [name, stage],
        ).fetchall()
        if not rows:
            raise ValueError(f"{spec!r}: no verdicts of stage {stage!r} stored for {name!r}")
        digest = hashlib.sha256(repr(rows).encode()).hexdigest()[:16]
        return name, {(q, p): v in ("better", "worse") for q, p, v in rows}, f"verdicts {digest}"
    raise ValueError(f"{spec!r}: train on NAME, NAME:reviews or NAME:verdicts:STAGE")
