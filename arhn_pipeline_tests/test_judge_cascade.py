"""The cascade inside the CPU judge, without embedding: features come from a table, so the test sees which
pairs each embedder was asked for. The cheap judge's thresholds keep the share of the whole judge's flags they
promise on the pairs they were fitted on; the whole judge is asked only for the pairs left open; a judge file
without a cascade reads as before."""

from __future__ import annotations

import numpy as np
import pytest

from arhn_pipeline.trained_judge import core

EMBEDDERS = ["big", "small", "sparse"]


@pytest.fixture
def table(monkeypatch):
    """1,000 triples whose features are drawn at random: the label follows the big model's margin closely and
    the small models' loosely."""
    rng = np.random.default_rng(0)
    n = 1000
    y = rng.random(n) < 0.2
    signal = y * 1.5 + rng.normal(0, 0.6, n)
    x = rng.normal(0, 1, (n, 12))
    x[:, 3] = signal + rng.normal(0, 0.2, n)  # big: margin
    x[:, 7] = signal + rng.normal(0, 0.8, n)  # small: margin
    x[:, 11] = signal + rng.normal(0, 1.0, n)  # sparse: margin
    triples = [core.Triple(f"q{i}", "pos", f"neg{i}") for i in range(n)]
    row = {t: i for i, t in enumerate(triples)}
    asked: dict[str, int] = {}

    def fake_features(ts, names, max_length=256):
        cols = [EMBEDDERS.index(e) * 4 + k for e in names for k in range(4)]
        for e in names:
            asked[e] = asked.get(e, 0) + len(ts)
        return x[[row[t] for t in ts]][:, cols]

    monkeypatch.setattr(core, "features", fake_features)
    return x, y, triples, asked


def test_the_cascade_keeps_its_share_of_flags_and_asks_the_big_model_only_for_the_open_pairs(table):
    x, y, triples, asked = table
    judge = core.fit(x, y, EMBEDDERS, {"toy": "-"})
    whole = judge.decision(x) >= judge.threshold
    cascaded = core.fit_cascade(x, y, core.JudgeModel(**judge.__dict__), ["small", "sparse"], keep=0.98)
    assert cascaded.cheap["flags_kept"] >= 0.98
    judged = cascaded.judge(triples)
    open_pairs = int(judged.whole.sum())
    assert 0 < open_pairs < len(triples)
    # the big model sees only the open pairs (the small ones' vectors for those come again from the memo)
    assert asked["big"] == open_pairs and asked["small"] == asked["sparse"] == len(triples) + open_pairs
    flagged = judged.value >= cascaded.threshold
    assert np.array_equal(flagged[judged.whole], whole[judged.whole])  # the open pairs: the whole judge's call
    lost = (whole & ~flagged).sum() / whole.sum()
    assert lost <= 0.02 + 1e-9  # at most 1 - keep of the whole judge's flags lost below `low`
    assert "first" in core.describe(cascaded)["cascade"]


def test_a_judge_without_a_cascade_asks_every_embedder_for_every_pair(table, tmp_path):
    x, y, triples, asked = table
    judge = core.fit(x, y, EMBEDDERS, {"toy": "-"})
    loaded = core.JudgeModel.load(judge.save(tmp_path / "j.json"))
    judged = loaded.judge(triples)
    assert judged.whole.all() and asked == {e: len(triples) for e in EMBEDDERS}
    assert np.allclose(judged.value, judge.decision(x))


def test_cheap_embedders_must_be_the_judges_own(table):
    x, y, _, _ = table
    judge = core.fit(x, y, EMBEDDERS, {})
    with pytest.raises(ValueError, match="cheap embedders must be the judge's own"):
        core.fit_cascade(x, y, judge, ["other"])


def test_the_shipped_cascade_judges_real_pairs_and_asks_embeddinggemma_only_for_the_open_ones(monkeypatch):
    """`dl19_dl20_cascade` (the shipped judge with its cascade, fitted on TREC DL) on the sample partitions'
    pairs with the real offline models: the clear pairs never reach EmbeddingGemma."""
    import json

    from arhn_pipeline import embeddings
    from arhn_pipeline_tests.conftest import PROJECT

    asked: list[int] = []
    dense = embeddings._encode_dense

    def counted(model, part, query):
        if getattr(model, "_arhn_name", "") == embeddings.EMBEDDINGGEMMA:
            asked.append(len(part))
        return dense(model, part, query)

    monkeypatch.setattr(embeddings, "_encode_dense", counted)
    embeddings._MEMO.clear()
    rows = [json.loads(line) for line in (PROJECT / "data" / "samples" / "sample_geo.jsonl").open()][:4]
    triples = [core.Triple(r["query"], r["pos"][0], n) for r in rows for n in r["neg"]]
    judge = core.JudgeModel.load(core.judge_path("dl19_dl20_cascade", core.SHIPPED))
    whole = core.JudgeModel.load(core.judge_path("dl19_dl20", core.SHIPPED))
    judged = judge.judge(triples)
    open_pairs = int(judged.whole.sum())
    assert open_pairs < len(triples)
    # EmbeddingGemma embedded only texts of the open pairs (their queries, positives and negatives)
    opened = [t for t, w in zip(triples, judged.whole, strict=True) if w]
    texts = len({t.query for t in opened}) + len({t.positive for t in opened} | {t.negative for t in opened})
    assert sum(asked) <= texts
    # on the open pairs the cascade's call is the whole judge's
    reference = whole.judge(opened).value >= whole.threshold if opened else np.array([], dtype=bool)
    assert np.array_equal(judged.value[judged.whole] >= judge.threshold, reference)
    embeddings._MEMO.clear()


def test_judging_in_chunks_gives_the_same_calls_as_judging_at_once(monkeypatch):
    """A partition larger than JUDGE_CHUNK is judged a chunk at a time (bounded memory): the same values,
    margins and cascade shares as all at once, each text embedded once across the chunks."""
    import json

    from arhn_pipeline import embeddings
    from arhn_pipeline_tests.conftest import PROJECT

    rows = [json.loads(line) for line in (PROJECT / "data" / "samples" / "sample_bio.jsonl").open()][:3]
    triples = [core.Triple(r["query"], r["pos"][0], n) for r in rows for n in r["neg"]]
    judge = core.JudgeModel.load(core.judge_path("dl19_dl20_cascade", core.SHIPPED))
    at_once = judge.judge(triples)
    embeddings._MEMO.clear()
    seen: list[int] = []
    dense = embeddings._encode_dense
    monkeypatch.setattr(embeddings, "_encode_dense", lambda m, part, q: seen.append(len(part)) or dense(m, part, q))
    monkeypatch.setattr(core, "JUDGE_CHUNK", 7)
    chunked = judge.judge(triples)
    assert len(triples) > 7
    for field in ("value", "margin", "whole"):
        assert np.allclose(getattr(chunked, field), getattr(at_once, field)), field
    assert sum(seen) == 0  # every vector from the store the first pass filled
    embeddings._MEMO.clear()
