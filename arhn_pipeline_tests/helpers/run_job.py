"""Run one job of the shipped definitions for one partition, with the engine and storage the environment
names (ARHN_ENGINE, ARHN_STORAGE, ...), in this process: a run process of the storage tests.

    python -m arhn_pipeline_tests.helpers.run_job JOB [--config RUN_CONFIG.yaml] PARTITION [PARTITION ...]

`--config`: a run config ({ops: {ASSET: {config: ...}}}, as `arhn run --config` takes it). Prints
"start <unix time>" and "end <unix time>" around the runs; exits 1 when a run fails. The script
`slow_no_answer` (NO_ANSWER to every request) is registered here too, for sources without planted labels.
"""

import sys
import time

import dagster as dg


def main() -> None:
    job_name, rest = sys.argv[1], sys.argv[2:]
    run_config: dict = {}
    if rest[:1] == ["--config"]:
        import yaml

        run_config = yaml.safe_load(open(rest[1], encoding="utf-8")) or {}
        rest = rest[2:]
    partitions = rest
    import arhn_pipeline_tests.helpers.slow_run  # noqa: F401 (registers slow_no_answer)
    from arhn_pipeline.definitions import build_defs, job_run_config

    defs = build_defs()
    job = defs.resolve_job_def(job_name)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", partitions)
    print(f"start {time.time()}", flush=True)
    config = job_run_config(job, run_config.get("ops", {}))
    ok = all(job.execute_in_process(partition_key=p, instance=instance, run_config=config).success for p in partitions)
    print(f"end {time.time()}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
