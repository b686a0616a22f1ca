"""Every text embedded once: vectors kept per model beside the store are read back equal (dense and sparse), a
second process embeds nothing it already has, and a process killed in the middle of an embedding pass leaves
whole parts, so the next one embeds only what is missing. Real offline models (all-MiniLM-L6-v2,
SPLADE-tiny)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from arhn_pipeline import embeddings, settings, vector_store
from arhn_pipeline_tests.conftest import PROJECT


def texts(n: int, tag: str = "t") -> list[str]:
    return [f"passage {tag}{i} about topic {i % 7} and the number {i * 13}" for i in range(n)]


@pytest.fixture
def counted(monkeypatch):
    """How many texts reach the model (not the memo, not the store)."""
    seen: list[int] = []
    dense, sparse = embeddings._encode_dense, embeddings._encode_sparse

    def count_dense(model, part, query):
        seen.append(len(part))
        return dense(model, part, query)

    def count_sparse(model, part, query):
        seen.append(len(part))
        return sparse(model, part, query)

    monkeypatch.setattr(embeddings, "_encode_dense", count_dense)
    monkeypatch.setattr(embeddings, "_encode_sparse", count_sparse)
    embeddings._MEMO.clear()
    yield seen
    embeddings._MEMO.clear()


@pytest.mark.parametrize("name", [embeddings.DEFAULT_EMBEDDER, embeddings.SPLADE_TINY])
def test_vectors_come_back_equal_from_the_store_and_are_not_embedded_again(counted, name):
    model = embeddings.load(name)
    batch = texts(40)
    index, first = embeddings.encode_unique(model, batch, query=False)
    assert sum(counted) == 40
    embeddings._MEMO.clear()  # as a new process: nothing in memory
    index2, again = embeddings.encode_unique(model, batch + batch[:5], query=False)
    assert sum(counted) == 40  # all 40 from the store
    a = first.toarray() if hasattr(first, "toarray") else first
    b = again.toarray() if hasattr(again, "toarray") else again
    assert index == index2 and np.allclose(a, b, atol=1e-6)
    embeddings._MEMO.clear()
    embeddings.encode_unique(model, batch, query=True)  # queries are encoded apart (another prompt / role)
    assert sum(counted) == 80


def test_the_store_can_be_turned_off(counted, monkeypatch):
    monkeypatch.setenv("ARHN_EMBEDDINGS_STORE", "0")
    model = embeddings.load(embeddings.DEFAULT_EMBEDDER)
    embeddings.encode_unique(model, texts(10, "off"), query=False)
    embeddings._MEMO.clear()
    embeddings.encode_unique(model, texts(10, "off"), query=False)
    assert sum(counted) == 20 and not settings.embeddings_dir().exists()


KILLED = """
import sys, time
from arhn_pipeline import embeddings
embeddings.CHUNK = 64
dense = embeddings._encode_dense
def slow(model, part, query):
    out = dense(model, part, query)
    time.sleep(1.0)  # time for the test to kill it between parts
    return out
embeddings._encode_dense = slow
texts = [f"passage k{i} about topic {i % 7} and the number {i * 13}" for i in range(64 * 8)]
embeddings.encode_unique(embeddings.load(embeddings.DEFAULT_EMBEDDER), texts, query=False)
print("finished")
"""


def test_a_killed_embedding_pass_leaves_whole_parts_and_the_rerun_embeds_only_what_is_missing(counted, monkeypatch):
    env = dict(os.environ)  # ARHN_VAR_DIR (so the embeddings folder) is the test's own: conftest
    proc = subprocess.Popen([sys.executable, "-c", KILLED], env=env, cwd=PROJECT, stdout=subprocess.PIPE, text=True)
    shelf_root = settings.embeddings_dir()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(shelf_root.glob("*/part-*.parquet"))) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    parts = list(shelf_root.glob("*/part-*.parquet"))
    assert 2 <= len(parts) < 8, "killed between the second and the last part"
    stored = vector_store.Shelf(parts[0].parent, sparse=False).count()
    assert stored == 64 * len(parts)  # whole parts only
    all_texts = [f"passage k{i} about topic {i % 7} and the number {i * 13}" for i in range(64 * 8)]
    monkeypatch.setattr(embeddings, "CHUNK", 64)
    embeddings.encode_unique(embeddings.load(embeddings.DEFAULT_EMBEDDER), all_texts, query=False)
    assert sum(counted) == 64 * 8 - stored  # only what the killed pass had not finished


def test_int8_embedders_are_quantized_close_to_float32_and_stored_apart(counted, monkeypatch):
    """ARHN_EMBED_DTYPE=int8: PyTorch's dynamic quantization of the real MiniLM; its vectors point where the
    float32 ones do (cosine > 0.85 per text; 0.91-0.95 seen) without being them, and the store keeps them under
    int8, never handing float32 vectors to an int8 run or the reverse."""
    import torch

    batch = texts(24, "q8")
    monkeypatch.setenv("ARHN_EMBED_DTYPE", "float32")
    _, full = embeddings.encode_unique(embeddings.load(embeddings.DEFAULT_EMBEDDER), batch, query=False)
    monkeypatch.setenv("ARHN_EMBED_DTYPE", "int8")
    model = embeddings.load(embeddings.DEFAULT_EMBEDDER)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())
    _, quantized = embeddings.encode_unique(model, batch, query=False)
    assert sum(counted) == 48  # the int8 run embedded again: nothing read from the float32 vectors
    cosines = (full * quantized).sum(1)
    assert cosines.min() > 0.85 and not np.allclose(full, quantized, atol=1e-4)
    shelves = {p.parent.name for p in settings.embeddings_dir().rglob("*.parquet")}
    assert len(shelves) == 2, shelves  # one per precision
    embeddings._MEMO.clear()
    embeddings.encode_unique(model, batch, query=False)
    assert sum(counted) == 48  # the int8 vectors come back from their own shelf


def test_an_unknown_embedder_precision_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("ARHN_EMBED_DTYPE", "int4")
    with pytest.raises(ValueError, match="ARHN_EMBED_DTYPE='int4'"):
        embeddings.dtype()
