"""Automation: a prompt edit re-requests exactly the materialized partitions of that stage and what depends
on them; nothing when no prompt changed. Evaluated with dagster.evaluate_automation_conditions."""

import importlib
from contextlib import contextmanager

import dagster as dg
import pytest

from arhn_pipeline_tests.conftest import write_jsonl, write_registry
from arhn_pipeline_tests.test_arhn_pipeline import Q1, Q2

# the modules that hold the snippets asset or an asset object built on it, in import order
RELOAD = [
    "arhn_pipeline.snippets.core",
    "arhn_pipeline.snippets.assets",
    "arhn_pipeline.rankings.assets",
    "arhn_pipeline.judgments.assets",
    "arhn_pipeline.relabel.assets",
    "arhn_pipeline.prune.assets",
    "arhn_pipeline.train.assets",
    "arhn_pipeline.evaluate.assets",
    "arhn_pipeline.definitions",
]


def load_defs():
    """What reloading the code location does: re-import, so code versions are read from the files again."""
    for name in RELOAD:
        importlib.reload(importlib.import_module(name))
    return importlib.import_module("arhn_pipeline.definitions").build_defs()


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
    monkeypatch.setenv("ARHN_ENGINE", "scripted")
    monkeypatch.setenv("ARHN_SCRIPT", "arhn_oracle")
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
    source = write_jsonl(tmp_path / "d.jsonl", [Q1, Q2])
    monkeypatch.setenv(
        "ARHN_SOURCES", str(write_registry(tmp_path / "s.yaml", {"d": {"format": "bge", "path": str(source)}}))
    )
    monkeypatch.setenv("ARHN_ENGINE", "scripted")
    monkeypatch.setenv("ARHN_SCRIPT", "arhn_oracle")
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", ["d"])
    before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert defs.resolve_job_def("clean_subset").execute_in_process(partition_key="d", instance=instance).success
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    assert after.total_requested == 0
