"""Automation: a prompt edit re-requests exactly the materialized partitions of that stage and what depends
on them; nothing when no prompt changed. Evaluated with dagster.evaluate_automation_conditions."""

import importlib
import sys
from contextlib import contextmanager

import dagster as dg
import pytest

from arhn_pipeline.engine.scripted import register_script
from arhn_pipeline_tests.conftest import engine, one_source_pipeline, write_jsonl, write_registry
from arhn_pipeline_tests.test_arhn_pipeline import Q1, Q2, arhn_oracle


def load_defs(llm=None):
    """What reloading the code location does: re-import, so code versions are read from the files again.
    Stage cores (which read the prompt files) first, then the asset modules (no asset module imports another),
    then the definitions."""
    loaded = sorted(name for name in sys.modules if name.startswith("arhn_pipeline."))
    for suffix in (".core", ".assets"):
        for name in loaded:
            if name.endswith(suffix):
                importlib.reload(sys.modules[name])
    definitions = importlib.reload(importlib.import_module("arhn_pipeline.definitions"))
    return definitions.build_defs(llm or engine("arhn_oracle"))


@contextmanager
def edited_snippet_prompt():
    from arhn_pipeline.snippets import core

    path = core.TEMPLATE_PATH
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# an edit: a new comment line is a new prompt version\n")
        yield
    finally:
        path.write_bytes(original)
        load_defs()


@pytest.fixture
def materialized(tmp_path, monkeypatch):
    entries = {n: {"format": "bge", "path": str(write_jsonl(tmp_path / f"{n}.jsonl", [Q1, Q2]))} for n in "abc"}
    monkeypatch.setenv("ARHN_SOURCES", str(write_registry(tmp_path / "s.yaml", entries)))
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", ["a", "b", "c"])
    for name in ("a", "b"):  # c stays unmaterialized
        assert defs.resolve_job_def("clean_subset").execute_in_process(partition_key=name, instance=instance).success
    return defs, instance


def test_prompt_unchanged_requests_nothing_then_an_edit_requests_that_stage_and_downstream(materialized):
    defs, instance = materialized
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert second.total_requested == 0

    with edited_snippet_prompt():
        edited = load_defs()
        result = dg.evaluate_automation_conditions(defs=edited, instance=instance, cursor=second.cursor)
        by_asset = {
            key.to_user_string(): set(result.get_requested_partitions(key))
            for key in edited.resolve_asset_graph().get_all_asset_keys()
            if result.get_num_requested(key)
        }
    assert by_asset == {"snippets": {"a", "b"}, "relabeled": {"a", "b"}}


def test_a_run_that_updates_the_whole_chain_requests_nothing_afterwards(tmp_path, monkeypatch):
    """The sensor ticks before and after a run of every stage: nothing is stale, so nothing re-runs."""
    defs, instance = single_partition_defs(tmp_path, monkeypatch, "arhn_oracle")
    before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert defs.resolve_job_def("clean_subset").execute_in_process(partition_key="d", instance=instance).success
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    assert after.total_requested == 0


def single_partition_defs(tmp_path, monkeypatch, script: str):
    source = write_jsonl(tmp_path / "d.jsonl", [Q1, Q2])
    return one_source_pipeline(tmp_path, monkeypatch, source, script, name="d", load=load_defs)


def test_sensor_ticks_during_a_run_request_nothing(tmp_path, monkeypatch):
    """Ticks land in the middle of a whole-job run (the UI's Launchpad run, which records no asset
    selection): after raw_triplets is written and while the LLM stages run. No tick, during or after,
    requests anything."""
    defs, instance = single_partition_defs(tmp_path, monkeypatch, "ticks_mid_run")
    ticks = [dg.evaluate_automation_conditions(defs=defs, instance=instance)]

    @register_script("ticks_mid_run")
    def ticks_mid_run(req):
        if len(ticks) < 4:  # a tick at each of the first LLM calls
            ticks.append(dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=ticks[-1].cursor))
        return arhn_oracle(req)

    assert defs.resolve_job_def("clean_subset").execute_in_process(partition_key="d", instance=instance).success
    for _ in range(2):
        ticks.append(dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=ticks[-1].cursor))
    assert len(ticks) == 6
    assert [t.total_requested for t in ticks] == [0] * 6


def test_an_upstream_stage_re_made_by_hand_is_not_chased(tmp_path, monkeypatch):
    """Only a prompt (code version) change starts work: re-materializing raw_triplets alone leaves the
    downstream partitions for the user (the UI shows them stale), it does not re-run the LLM stages."""
    defs, instance = single_partition_defs(tmp_path, monkeypatch, "arhn_oracle")
    before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert defs.resolve_job_def("clean_subset").execute_in_process(partition_key="d", instance=instance).success
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    ingest = [a for a in defs.assets if a.key.to_user_string() == "raw_triplets"]
    assert dg.materialize(ingest, partition_key="d", instance=instance, resources=defs.resources).success
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
    assert (settled.total_requested, after.total_requested) == (0, 0)


def test_relabeled_alone_after_a_prompt_edit_records_the_versions_of_its_evidence(materialized, tmp_path):
    """Re-deciding without re-asking: the decision rows name the prompt version stored with the snippets they
    rest on, not the edited file's; and the UI's stale status shows the snippets stage as stale."""
    import duckdb
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from arhn_pipeline.snippets import core

    defs, instance = materialized
    stored = core.TEMPLATE.version
    with edited_snippet_prompt():
        edited = load_defs()
        assert core.TEMPLATE.version != stored
        relabeled = [a for a in edited.assets if a.key.to_user_string() == "relabeled"]
        assert dg.materialize(relabeled, partition_key="a", instance=instance, resources=edited.resources).success
        with duckdb.connect(str(tmp_path / "arhn.duckdb"), read_only=True) as conn:
            versions = {
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT prompt_versions FROM decisions WHERE subset = 'a' AND method LIKE 'arhn:%'"
                ).fetchall()
            }
        assert versions and all(f"snippets={stored}," in v for v in versions)
        assert not any(core.TEMPLATE.version in v for v in versions)
        resolver = get_stale_status_resolver(instance, list(edited.assets))
        assert resolver.get_status(dg.AssetKey("snippets"), "a") == StaleStatus.STALE


def test_new_reviews_of_a_partition_request_its_qualification_and_decisions_only(materialized):
    """The review page reports the `reviews` source's new data version: that partition's judge_qualification
    and relabeled are requested (nothing else, no other partition); the same version again requests nothing."""
    from arhn_pipeline.review import assets as review_assets

    defs, instance = materialized
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert settled.total_requested == 0
    review_assets.report(instance, "a", "3-abcdef01")
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
    by_asset = {
        key.to_user_string(): set(result.get_requested_partitions(key))
        for key in defs.resolve_asset_graph().get_all_asset_keys()
        if result.get_num_requested(key)
    }
    assert by_asset == {"judge_qualification": {"a"}, "relabeled": {"a"}}
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert after.total_requested == 0


def test_decide_starts_once_every_shard_and_every_reference_has_its_evidence(tmp_path, monkeypatch):
    """The cluster's ordering (decide_when_evidence_is_in): geo in two shards and bio, each with a reference,
    gathered one partition at a time as separate machines would. No `decide` is requested while a shard of geo
    or the reference bio lacks evidence (the reason names what is missing); then each partition once; nothing
    again for the same evidence; new evidence of a reference re-decides every sub-dataset. The requested runs
    succeed."""
    from arhn_pipeline.automation import decide_requests, decide_when_evidence_is_in
    from arhn_pipeline.definitions import build_defs
    from arhn_pipeline.sources.registry import load_registry
    from arhn_pipeline.store import DuckDBStore
    from arhn_pipeline_tests.conftest import SCRIPTED_LLM_OPS
    from arhn_pipeline_tests.test_shards import sample

    registry = write_registry(tmp_path / "sources.yaml", {"geo": sample("sample_geo", 2), "bio": sample("sample_bio")})
    monkeypatch.setenv("ARHN_SOURCES", str(registry))
    keys = load_registry(registry).names()
    assert sorted(keys) == ["bio", "geo.shard0of2", "geo.shard1of2"]
    defs = build_defs(engine("sample_oracle"), DuckDBStore(database=str(tmp_path / "arhn.duckdb")))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", keys)
    evidence = defs.resolve_job_def("gather_evidence")
    from arhn_pipeline.definitions import job_run_config

    config = job_run_config(evidence, SCRIPTED_LLM_OPS)

    def gather(key: str) -> None:
        assert evidence.execute_in_process(partition_key=key, instance=instance, run_config=config).success

    def tick(cursor: str | None) -> tuple[list[str], str, str]:
        context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
        result = decide_when_evidence_is_in(context)
        assert isinstance(result, dg.SensorResult) and result.cursor is not None
        requested = sorted(r.partition_key for r in result.run_requests or [])
        reason = result.skip_reason.skip_message if result.skip_reason else ""
        return requested, result.cursor, reason or ""

    requested, cursor, reason = tick(None)
    assert requested == [] and reason == "no new evidence"
    gather("geo.shard0of2")
    requested, cursor, reason = tick(cursor)
    assert requested == [] and "geo: waiting for the evidence of geo.shard1of2, bio" in reason
    gather("geo.shard1of2")
    requested, cursor, reason = tick(cursor)
    assert requested == [] and "waiting for the evidence of bio" in reason  # the reference is not in yet
    gather("bio")
    requested, cursor, _ = tick(cursor)
    assert requested == ["bio", "geo.shard0of2", "geo.shard1of2"]
    assert tick(cursor)[0] == []  # the same evidence: nothing again
    decide = defs.resolve_job_def("decide")
    for key in requested:
        assert decide.execute_in_process(partition_key=key, instance=instance).success
    assert tick(cursor)[0] == []  # decisions are not evidence
    gather("bio")  # a reference's evidence re-made: every sub-dataset's qualification changed
    requested, cursor, _ = tick(cursor)
    assert requested == ["bio", "geo.shard0of2", "geo.shard1of2"]
    # run keys differ per change of evidence, so Dagster runs each request once per change
    first, _, _ = decide_requests(instance, None)
    assert len({r.run_key for r in first}) == 3
