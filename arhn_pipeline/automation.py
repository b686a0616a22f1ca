"""Re-running what a prompt change made stale.

Each LLM stage's code_version is its prompt file's content hash with its parser's version, so editing a
prompt (and reloading the code location) changes exactly that stage's code_version. The condition below,
on every asset, requests:
  - the already-materialized partitions of an asset whose code_version changed, and
  - the already-materialized partitions downstream of a partition requested in the same evaluation, so one
    run re-makes the stale stage and what was built from it;
and never a partition that was not materialized before (adding a source does not start LLM work by itself).
The call cache then re-asks only the requests whose prompt changed.

Why not Dagster's `any_deps_updated` for the downstream part: a run of a whole job (the `clean_subset` job
launched from the Launchpad) records no asset selection, so Dagster cannot tell that a parent was updated by
the same run that updated the child. It then relies on comparing timestamps between sensor ticks, and a tick
that lands while the run writes its events can see the parent's update without the child's and request the
child again (seen once in CI: a second run after a UI-launched one). The condition here has no time-based
trigger for downstream assets, so a tick at any moment of a run requests nothing. A partition re-made by
hand upstream (say `snippets` alone) is shown as stale in the UI and re-made with its job; it is not
chased automatically.
"""

import json
from collections.abc import Sequence
from typing import Any

import dagster as dg

from arhn_pipeline import shards
from arhn_pipeline.partitions import PARTITIONS_NAME
from arhn_pipeline.qualify.assets import EVIDENCE
from arhn_pipeline.sources.registry import RegistryError, load_registry

AC = dg.AutomationCondition

# `since_last_handled`: a changed code version counts until the asset is next requested or updated, so a
# partition that was in progress when the prompt changed is requested on a later tick.
RERUN_WHEN_STALE = (
    (AC.code_version_changed() | AC.any_deps_match(AC.will_be_requested())).since_last_handled()  # type: ignore[misc]
    & ~AC.missing()
    & ~AC.in_progress()
    & ~AC.any_deps_in_progress()
).with_label("materialized, and its prompt/code changed or an upstream partition is requested with it")


# A partition's reviews (the `reviews` source, observed by the review page) are a reference for its own judges:
# a new data version requests the assets that read them, for that partition (and what depends on them, above).
REVIEWS = dg.AssetKey("reviews")
REVIEWED = (
    AC.any_deps_match(AC.newly_updated()).allow(dg.AssetSelection.assets(REVIEWS)) & ~AC.missing() & ~AC.in_progress()
).with_label("materialized, and the partition's reviews changed")


def with_automation(assets: Sequence[Any]) -> list[Any]:
    out = []
    for a in assets:
        if isinstance(a, dg.SourceAsset):  # an observable source (reviews) is observed, never materialized
            out.append(a)
            continue
        reads_reviews = REVIEWS in a.dependency_keys
        out.append(
            a.with_attributes(automation_condition=RERUN_WHEN_STALE | REVIEWED if reads_reviews else RERUN_WHEN_STALE)
        )
    return out


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
    known = set(context.instance.get_dynamic_partitions(PARTITIONS_NAME))
    for subset in sorted(done & known):
        yield dg.RunRequest(run_key=f"{context.scheduled_execution_time:%Y%m%d}-{subset}", partition_key=subset)


def _ready(instance: dg.DagsterInstance) -> set[str]:
    """The partitions whose every evidence stage (snippets, rankings, judgments) is materialized."""
    have: set[str] | None = None
    for name in EVIDENCE:
        done = set(instance.get_materialized_partitions(dg.AssetKey(name)))
        have = done if have is None else have & done
    return have or set()


def decide_requests(instance: dg.DagsterInstance, cursor: str | None) -> tuple[list[dg.RunRequest], str, list[str]]:
    """The `decide` runs to start now, the next cursor, and why each waiting sub-dataset waits.

    A sub-dataset is decided when the evidence of every one of its shards and of every partition with a
    reference (what its judges are qualified on) is materialized, once per change of that evidence: the
    cursor keeps the newest evidence event seen and the sub-datasets whose evidence changed but that still
    wait. New evidence of a reference re-decides every sub-dataset (its judges' qualification changed)."""
    state = json.loads(cursor) if cursor else {}
    after, waiting = int(state.get("after", 0)), set(state.get("waiting", []))
    newest = after
    for name in EVIDENCE:
        page: str | None = None
        while True:  # Dagster returns at most 10,000 events a call
            result = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), after_storage_id=after),
                limit=10_000,
                cursor=page,
                ascending=True,
            )
            for record in result.records:
                if record.partition_key:
                    waiting.add(shards.dataset_of(record.partition_key))
                newest = max(newest, record.storage_id)
            if not result.has_more:
                break
            page = result.cursor
    partitions = instance.get_dynamic_partitions(PARTITIONS_NAME)
    registry = load_registry()
    references = []
    for key in partitions:
        try:
            if registry.entry(key).reference is not None:
                references.append(key)
        except RegistryError:
            continue
    ready = _ready(instance)
    if waiting & {shards.dataset_of(r) for r in references}:
        waiting |= {shards.dataset_of(p) for p in ready}
    missing_references = sorted(set(references) - ready)
    requests, reasons, still = [], [], set()
    for dataset in sorted(waiting):
        members = [p for p in partitions if shards.dataset_of(p) == dataset]
        missing = list(dict.fromkeys([p for p in members if p not in ready] + missing_references))
        if missing:
            still.add(dataset)
            reasons.append(
                f"{dataset}: waiting for the evidence of {', '.join(missing[:5])}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            )
            continue
        requests += [dg.RunRequest(run_key=f"decide:{p}:{newest}", partition_key=p) for p in members]
    return requests, json.dumps({"after": newest, "waiting": sorted(still)}), reasons


@dg.sensor(
    job_name="decide",
    default_status=dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=60,
    description="For a cluster (docs/scaling.md): starts `decide` for a sub-dataset's partitions once the evidence "
    "of all its shards and of every reference partition is materialized, and again when that evidence changes. "
    "Turn it on when runs on many machines gather the evidence (`arhn run --phase evidence`).",
)
def decide_when_evidence_is_in(context: dg.SensorEvaluationContext):
    requests, cursor, reasons = decide_requests(context.instance, context.cursor)
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor)
    return dg.SensorResult(skip_reason="; ".join(reasons) or "no new evidence", cursor=cursor)
