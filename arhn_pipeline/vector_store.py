"""Every text embedded once: vectors and sparse term weights kept on disk per model, beside the store.

A folder per (model, role, sequence length, precision) under `settings.embeddings_dir()` (ARHN_EMBEDDINGS_DIR,
default `<state folder>/embeddings`) holds Parquet parts, each a chunk of texts as they were embedded: `h` (the
sha256 of the exact text: a vector is of the text the model read), and `v` (a dense unit vector, float32 bytes)
or `i`, `w` (a sparse row's term ids and weights) with the vocabulary size `n`. A part is written to a
temporary name and renamed, so a kill leaves whole parts only, and a re-run embeds only what no part holds.
Parts are only ever added (several processes may embed at once: a text embedded twice costs time, never
correctness); a look-up reads the parts' `h` column, then the rows it needs (memory follows what is asked).

ARHN_EMBEDDINGS_STORE=0 turns it off (each process then embeds again, as before).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def enabled() -> bool:
    from arhn_pipeline import settings

    return settings.flag("ARHN_EMBEDDINGS_STORE")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class Shelf:
    """One model's vectors for one role at one sequence length and precision."""

    folder: Path
    sparse: bool

    @classmethod
    def of(cls, model_name: str, query: bool, max_length: int, precision: str, sparse: bool) -> Shelf:
        from arhn_pipeline import settings

        key = f"{model_name}|{'query' if query else 'document'}|{max_length}|{precision}"
        readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)[:48]
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return cls(settings.embeddings_dir() / f"{readable}-{digest}", sparse)

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def get(self, texts: Iterable[str]) -> dict[str, Any]:
        """The stored vectors (dense: 1-d arrays; sparse: 1-row CSR matrices) of those of `texts` that have one."""
        import pyarrow.parquet as pq

        wanted = {text_hash(t): t for t in texts}
        found: dict[str, Any] = {}
        if not wanted:
            return found
        for part in self._parts():
            try:
                hashes = pq.read_table(part, columns=["h"]).column("h").to_pylist()
            except (OSError, ValueError):  # a part another process is renaming, or a damaged one: embed again
                continue
            rows = [i for i, h in enumerate(hashes) if h in wanted and wanted[h] not in found]
            if not rows:
                continue
            table = pq.read_table(part).take(rows)
            for n, h in enumerate(table.column("h").to_pylist()):
                found[wanted[h]] = self._row(table, n)
        return found

    def _row(self, table: Any, n: int) -> Any:
        if not self.sparse:
            return np.frombuffer(table.column("v")[n].as_py(), dtype=np.float32)
        import scipy.sparse as sp

        ids = np.asarray(table.column("i")[n].as_py(), dtype=np.int32)
        weights = np.asarray(table.column("w")[n].as_py(), dtype=np.float32)
        size = int(table.column("n")[n].as_py())
        return sp.csr_matrix((weights, (np.zeros(len(ids), dtype=np.int32), ids)), shape=(1, size))

    def put(self, texts: list[str], vectors: list[Any]) -> None:
        """Add one part: these texts' vectors (written whole, then renamed into place)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not texts:
            return
        columns: dict[str, Any] = {"h": pa.array([text_hash(t) for t in texts], pa.string())}
        if self.sparse:
            rows = [v.tocsr() for v in vectors]
            columns["i"] = pa.array([r.indices.astype(np.int32).tolist() for r in rows], pa.list_(pa.int32()))
            columns["w"] = pa.array([r.data.astype(np.float32).tolist() for r in rows], pa.list_(pa.float32()))
            columns["n"] = pa.array([r.shape[1] for r in rows], pa.int32())
        else:
            columns["v"] = pa.array([np.asarray(v, dtype=np.float32).tobytes() for v in vectors], pa.binary())
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = self.folder / f".{name}.tmp"
        pq.write_table(pa.table(columns), tmp)
        os.replace(tmp, self.folder / name)

    def count(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(p).metadata.num_rows for p in self._parts())
