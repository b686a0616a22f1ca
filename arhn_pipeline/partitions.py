"""The pipeline's two partition sets: one partition per sub-dataset (`subset`), and one per training variant
(`variant`: the original collection, each cleaning method's, the pruned one) for the trained models.

One partition per sub-dataset. The partitions are dynamic: the source registry (sources.yaml) decides
which exist. The `source_registry_sensor` adds a partition for each new registry entry (it runs by default
in the shipped definitions), and `arhn sources sync` does the same at once from the command line.
Removing an entry never deletes a partition's history: `sync_partitions` reports it as orphaned instead.
"""

import dagster as dg

from arhn_pipeline.sources.registry import load_registry
from arhn_pipeline.vocab import VARIANTS

PARTITIONS_NAME = "subset"
subset_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)
variant_partitions = dg.StaticPartitionsDefinition(list(VARIANTS))


def sync_partitions(instance: dg.DagsterInstance) -> tuple[list[str], list[str]]:
    """Register every registry entry as a partition; return (added, orphaned)."""
    wanted = load_registry().names()
    existing = set(instance.get_dynamic_partitions(PARTITIONS_NAME))
    added = [name for name in wanted if name not in existing]
    if added:
        instance.add_dynamic_partitions(PARTITIONS_NAME, added)
    return added, sorted(existing - set(wanted))


@dg.sensor(
    name="source_registry_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a `subset` partition for every entry of the source registry (sources.yaml).",
)
def source_registry_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    wanted = load_registry().names()
    existing = set(context.instance.get_dynamic_partitions(PARTITIONS_NAME))
    new = [name for name in wanted if name not in existing]
    if not new:
        return dg.SkipReason("every registry entry already has a partition")
    return dg.SensorResult(dynamic_partitions_requests=[subset_partitions.build_add_request(new)])
