"""The pruned collection, exports read back, and agreement scores."""

import json

import dagster as dg
import datasets
import duckdb
import pytest

from arhn_pipeline import agreement as ag
from arhn_pipeline import settings
from arhn_pipeline.definitions import build_defs
from arhn_pipeline.export import export, rows
from arhn_pipeline.identity import passage_key
from arhn_pipeline.prune.core import PRESETS
from arhn_pipeline_tests.conftest import engine, gather_then_decide, labelled_entry, write_jsonl, write_registry
from arhn_pipeline_tests.test_arhn_pipeline import LLM_RANKER, Q1, Q2


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    """Three partitions (two named like RLHN's kept sub-datasets) through ARHN with the scripted oracle;
    built once for the module (tests that change state use their own collection names)."""
    tmp_path = tmp_path_factory.mktemp("collection")
    entries = {}
    for name in ("fiqa", "nq", "toy_extra"):
        entries[name] = {"format": "bge", "path": str(write_jsonl(tmp_path / f"{name}.jsonl", [Q1, Q2]))}
    # the labelled entry the oracle's ARHN judge qualifies on (it is not in RLHN's seven)
    entries["labelled"] = labelled_entry(tmp_path, "labelled", [Q1, Q2], {"NEG_ABOVE", "NEG_FILTER"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARHN_SOURCES", str(write_registry(tmp_path / "s.yaml", entries)))
        mp.setenv("ARHN_DB", str(tmp_path / "arhn.duckdb"))
        mp.setenv("ARHN_MODELS_DIR", str(settings.models_dir()))
        mp.setenv("ARHN_VAR_DIR", str(tmp_path / "var"))
        defs = build_defs(engine("arhn_oracle"))
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("subset", list(entries))
        # the gate is tested in test_gate.py; here a judge measured on the labelled entry is applied whatever its
        # interval (two queries give 7 labelled negatives, whose kappa interval reaches below the default 0.2)
        config = {"ops": {**LLM_RANKER["ops"], "relabeled": {"config": {"min_kappa": -1.0}}}}
        gather_then_decide(defs, instance, list(entries), run_config=config)
    return defs, instance, tmp_path / "arhn.duckdb"


def test_pruned_collection_keeps_the_preset_and_reports_sizes(cleaned):
    defs, instance, db = cleaned
    result = defs.resolve_job_def("build_collection").execute_in_process(
        instance=instance, run_config={"ops": {"pruned_collection": {"config": {"preset": "rlhn7"}}}}
    )
    meta = result.asset_materializations_for_node("pruned_collection")[0].metadata
    assert (meta["subsets_kept"].value, meta["subsets_dropped"].value) == (2, 2)
    assert (meta["queries_before"].value, meta["queries_after"].value) == (8, 4)
    assert "| toy_extra | 2 | 0 |" in meta["per_subset"].value and "not in the keep list" in meta["per_subset"].value
    with duckdb.connect(str(db), read_only=True) as conn:
        kept = conn.execute("SELECT DISTINCT subset FROM pruned_collection ORDER BY 1").fetchall()
        q1 = conn.execute("SELECT pos, neg FROM pruned_collection WHERE subset = 'nq' AND query_id = 'q1'").fetchone()
    assert [k[0] for k in kept] == ["fiqa", "nq"] and set(PRESETS["rlhn7"]) >= {"fiqa", "nq"}
    assert len(q1[0]) == 2 and len(q1[1]) == 3  # R+F: one relabeled, one filtered out of 5 negatives


def test_pruning_by_changed_share(cleaned):
    defs, instance, _ = cleaned
    config = {"method": "arhn:R+F", "max_changed_share": 0.1, "name": "strict"}
    result = defs.resolve_job_def("build_collection").execute_in_process(
        instance=instance, run_config={"ops": {"pruned_collection": {"config": config}}}
    )
    meta = result.asset_materializations_for_node("pruned_collection")[0].metadata
    # the labelled entry's own decisions were withheld (no other reference qualifies its judge): nothing changed
    assert meta["subsets_kept"].value == 1 and "changed share 0.286 > 0.1" in meta["per_subset"].value
    assert "| labelled | 2 | 2 | 7 | 0.0 | 0.0 | kept |" in meta["per_subset"].value


@pytest.mark.parametrize("fmt", ["bge", "tevatron", "hf"])
def test_exports_read_back_equal(cleaned, tmp_path, fmt):
    _, _, db = cleaned
    with duckdb.connect(str(db), read_only=True) as conn:
        expected = list(rows(conn, "arhn:R+F"))
        out = tmp_path / ("export" if fmt == "hf" else "export.jsonl")
        assert export(conn, fmt, out, method="arhn:R+F") == len(expected) == 8
    if fmt == "hf":
        back = list(datasets.load_from_disk(str(out)))
    else:
        back = [json.loads(line) for line in out.open()]
    for want, got in zip(expected, back, strict=True):
        assert got["query_id"] == want["query_id"] and got["query"] == want["query"]
        if fmt == "tevatron":
            assert [p["text"] for p in got["positive_passages"]] == want["pos"]
            assert [p["text"] for p in got["negative_passages"]] == want["neg"]
            assert got["negative_passages"][0]["docid"] == passage_key(want["neg"][0])
        else:
            assert got["pos"] == want["pos"] and got["neg"] == want["neg"]


def test_original_and_cleaned_triplets_differ_only_by_decisions(cleaned):
    _, _, db = cleaned
    with duckdb.connect(str(db), read_only=True) as conn:
        original = {r["query_id"]: r for r in rows(conn, "original", ["fiqa"])}
        clean = {r["query_id"]: r for r in rows(conn, "arhn:R+F", ["fiqa"])}
    assert len(original["q1"]["neg"]) == 5 and len(clean["q1"]["neg"]) == 3
    assert set(clean["q1"]["pos"]) - set(original["q1"]["pos"]) == {Q1["neg"][2]}


def test_scores_against_a_hand_worked_example():
    ref = {("q", str(i)): label for i, label in enumerate([True, True, False, False, False, True])}
    pred = {("q", "0"): True, ("q", "1"): False, ("q", "2"): True, ("q", "3"): False, ("q", "4"): None}
    s = ag.scores(pred, ref)
    # scored pairs 0-3: tp=1 fp=1 fn=1 tn=1; pair 4 has no prediction; pair 5 is not covered
    assert (s["pairs"], s["no_prediction"], s["not_covered"]) == (4, 1, 1)
    assert (s["precision"], s["recall"], s["f1"], s["kappa"]) == (0.5, 0.5, 0.5, 0.0)


def test_margin_agreement_on_trec_dl_human_grades(shared_data, db):
    """The embedding margin against NIST grades: the figures DESIGN.md reports for these machines."""
    from arhn_pipeline.raw_triplets.ingest import ingest
    from arhn_pipeline.sources.registry import load_registry

    entry = load_registry()["trec_dl20_judged"]
    ingest(db, "trec_dl20_judged", entry)
    ref = ag.load_reference(entry.reference.format, entry.reference.path)
    s = ag.scores(ag.predictions(db, "trec_dl20_judged", "margin:0.05"), ref)
    assert s["pairs"] == 1301 and s["reference_rate"] == 0.241
    assert s["f1"] == pytest.approx(0.49, abs=0.01) and s["kappa"] == pytest.approx(0.34, abs=0.01)


def test_an_unknown_export_method_is_an_error_that_lists_the_methods(cleaned, tmp_path):
    _, _, db = cleaned
    out = tmp_path / "nothing.jsonl"
    with duckdb.connect(str(db), read_only=True) as conn, pytest.raises(ValueError, match="known: original, arhn:F"):
        export(conn, "bge", out, method="arhn:X")
    assert not out.exists()


def test_an_export_never_replaces_a_file_without_force_nor_writes_through_a_symlink(cleaned, tmp_path):
    _, _, db = cleaned
    kept, target = tmp_path / "kept.jsonl", tmp_path / "elsewhere.txt"
    kept.write_text("mine\n")
    target.write_text("not yours\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    with duckdb.connect(str(db), read_only=True) as conn:
        with pytest.raises(ValueError, match="exists: not replaced without --force"):
            export(conn, "bge", kept, method="arhn:R+F")
        for force in (False, True):
            with pytest.raises(ValueError, match="is a symlink"):
                export(conn, "bge", link, method="arhn:R+F", force=force)
        assert kept.read_text() == "mine\n" and target.read_text() == "not yours\n"
        assert export(conn, "bge", kept, method="arhn:R+F", force=True) == 8
