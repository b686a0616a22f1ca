"""Fitting a judge on registry entries with a reference (their raw_triplets ingested), for the trained_judge
asset and `arhn train-judge`."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np

from arhn_pipeline import agreement as ag
from arhn_pipeline import settings
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
) -> tuple[core.JudgeModel, str]:
    """Fit the judge on the entries' labelled negatives; save it as settings.judges_dir()/NAME.json."""
    registry = load_registry()
    triples: list[core.Triple] = []
    labels, trained_on = [], {}
    for entry_name in train_on:
        entry = registry.get(entry_name)
        if entry is None or entry.reference is None:
            raise ValueError(f"{entry_name!r} is not a registry entry with a `reference` to train on")
        pairs = load_pairs(conn, entry_name)
        if pairs.is_empty():
            raise ValueError(f"{entry_name!r} has no ingested rows: materialize its raw_triplets first")
        t, y = core.labelled_triples(pairs, ag.load_reference(entry.reference.format, entry.reference.path))
        triples += t
        labels.append(y)
        trained_on[entry_name] = core.file_sha256(entry.reference.path)
    x = core.features(triples, embedders, max_length)
    judge = core.fit(x, np.concatenate(labels), embedders, trained_on, regularization, max_length)
    path = judge.save(settings.judges_dir() / f"{name}.json")
    return judge, str(path)
