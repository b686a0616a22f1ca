"""The shipped Definitions, the partition sensor, and in-process runs through Dagster (scripted engine)."""

import dagster as dg
import pytest

from arhn_pipeline.definitions import build_defs
from arhn_pipeline.engine.scripted import CALLS, ScriptedEngine
from arhn_pipeline.partitions import source_registry_sensor, subset_partitions, variant_partitions


@pytest.fixture
def defs():
    return build_defs(ScriptedEngine(model="constant_no"))


def test_definitions_load_with_every_asset_check_job_and_sensor(defs):
    graph = defs.resolve_asset_graph()
    per_subset = {"raw_triplets", "snippets", "rankings", "judgments", "judge_qualification", "relabeled"}
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == per_subset | {
        "trained_judge",
        "pruned_collection",
        "trained_retriever",
        "retriever_eval",
        "trained_reranker",
        "reranker_eval",
        "method_comparison",
        "reviews",
    }
    assert graph.get(dg.AssetKey("reviews")).is_observable  # a source: observed by the review page, never made
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks >= {
        ("raw_triplets", "quarantine_share"),
        ("raw_triplets", "every_query_has_positive_and_negative"),
        ("snippets", "every_pair_has_a_snippet"),
        ("snippets", "snippet_unparsed_share"),
        ("rankings", "every_candidate_set_is_fully_ranked"),
        ("rankings", "ranking_unparsed_share"),
        ("judgments", "judgment_unparsed_share"),
        ("relabeled", "one_decision_per_candidate_and_method"),
        ("relabeled", "agreement_with_reference"),
        ("relabeled", "judges_qualified"),
        ("snippets", "snippet_degenerate_share"),
        ("rankings", "ranking_echoed_or_degenerate_share"),
        ("judgments", "judgment_degenerate_share"),
    }
    assert defs.resolve_job_def("clean_subset").partitions_def == subset_partitions
    assert defs.resolve_job_def("build_collection").partitions_def is None
    assert defs.resolve_sensor_def("source_registry_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    for key in graph.get_all_asset_keys():
        name = key.to_user_string()
        expected = (
            subset_partitions
            if name in per_subset | {"reviews"}
            else variant_partitions
            if name in ("trained_retriever", "trained_reranker")
            else None
        )
        assert graph.get(key).partitions_def == expected
        assert (graph.get(key).automation_condition is not None) == (name != "reviews")
    assert defs.resolve_sensor_def("prompt_change_automation").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("nightly_refresh").default_status == dg.DefaultScheduleStatus.STOPPED
    pools = [set(graph.get(dg.AssetKey(n)).pools) for n in ("snippets", "rankings", "judgments")]
    assert pools == [{"llm_engine"}] * 3


def test_sensor_adds_one_partition_per_registry_entry():
    instance = dg.DagsterInstance.ephemeral()
    result = source_registry_sensor(dg.build_sensor_context(instance=instance))
    added = result.dynamic_partitions_requests[0].partition_keys
    assert {"sample_geo", "sample_bio", "sample_fin", "scifact_train"} <= set(added)
    instance.add_dynamic_partitions("subset", list(added))
    assert isinstance(source_registry_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)


def test_partition_run_then_rerun_sends_nothing_to_the_engine(defs):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", ["sample_fin"])
    job = defs.resolve_job_def("clean_subset")
    first = job.execute_in_process(partition_key="sample_fin", instance=instance)
    assert first.success
    meta = first.asset_materializations_for_node("snippets")[0].metadata
    assert meta["llm_cache_misses"].value == 176
    before = CALLS["constant_no"]
    second = job.execute_in_process(partition_key="sample_fin", instance=instance)
    meta = second.asset_materializations_for_node("snippets")[0].metadata
    assert CALLS["constant_no"] == before
    assert (meta["llm_cache_hits"].value, meta["llm_cache_misses"].value) == (176, 0)
    # "no" is not a JSON snippet: every answer is recorded as unparsed, never as NO_ANSWER
    assert meta["status_unparsed"].value == 176 and "status_no_answer" not in meta
    evals = {e.check_name: e.passed for e in second.get_asset_check_evaluations()}
    assert evals["snippet_unparsed_share"] is False and evals["every_pair_has_a_snippet"] is True


def test_a_threshold_set_at_launch_reaches_its_check(defs):
    """The checks are returned with the materialization, so they judge by the run's configuration."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", ["sample_fin"])
    job = defs.resolve_job_def("clean_subset")
    config = {"ops": {"snippets": {"config": {"max_unparsed_share": 1.0}}}}
    result = job.execute_in_process(partition_key="sample_fin", instance=instance, run_config=config)
    evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evals["snippet_unparsed_share"].passed is True
    assert evals["snippet_unparsed_share"].metadata["threshold"].value == 1.0
    assert evals["snippet_unparsed_share"].metadata["share"].value == 1.0  # every "no" is unparsed, and allowed
