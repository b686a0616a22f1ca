"""Re-running what a prompt change made stale.

Each LLM stage's code_version is its prompt file's content hash with its parser's version, so editing a
prompt (and reloading the code location) changes exactly that stage's code_version. The condition below,
on every asset, requests:
  - the already-materialized partitions of an asset whose code_version changed, and
  - the materialized partitions whose upstream partitions were just updated (or are requested in the same
    evaluation): what depends on them;
and never a partition that was not materialized before (adding a source does not start LLM work by itself).
The call cache then re-asks only the requests whose prompt changed.
"""

import dagster as dg

from arhn_pipeline.partitions import subset_partitions

AC = dg.AutomationCondition

# `since_last_handled`: a trigger counts only until the asset is next requested or updated, so the downstream
# assets of a run that updated the whole chain are not re-requested for their parents' updates in that run.
RERUN_WHEN_STALE = (
    (AC.code_version_changed() | AC.any_deps_updated()).since_last_handled()
    & ~AC.missing()
    & ~AC.in_progress()
    & ~AC.any_deps_in_progress()
).with_label("materialized, and its prompt/code changed or an upstream partition was updated")


def with_automation(assets: list) -> list:
    return [a.with_attributes(automation_condition=RERUN_WHEN_STALE) for a in assets]


automation_sensor = dg.AutomationConditionSensorDefinition(
    name="prompt_change_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates RERUN_WHEN_STALE (arhn_pipeline/automation.py): re-materializes the materialized "
    "partitions whose prompt changed, and what depends on them.",
)


@dg.schedule(
    cron_schedule="0 3 * * *",
    job_name="clean_subset",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="For users who prefer a fixed time to the sensor: every night, re-run the cleaning stages of "
    "every partition materialized so far. Unchanged prompts cost no LLM call (the call cache answers them).",
)
def nightly_refresh(context: dg.ScheduleEvaluationContext):
    done = context.instance.get_materialized_partitions(dg.AssetKey("relabeled"))
    known = set(context.instance.get_dynamic_partitions(subset_partitions.name))
    for subset in sorted(done & known):
        yield dg.RunRequest(run_key=f"{context.scheduled_execution_time:%Y%m%d}-{subset}", partition_key=subset)
