"""Run one job of the shipped definitions for one partition, with the engine and storage the environment
names (ARHN_ENGINE, ARHN_STORAGE, ...), in this process: a run process of the storage tests.

    python -m arhn_pipeline_tests.helpers.run_job JOB PARTITION [PARTITION ...]

Prints "start <unix time>" and "end <unix time>" around the runs; exits 1 when a run fails.
"""

import sys
import time

import dagster as dg


def main() -> None:
    job_name, partitions = sys.argv[1], sys.argv[2:]
    from arhn_pipeline.definitions import build_defs

    defs = build_defs()
    job = defs.resolve_job_def(job_name)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", partitions)
    print(f"start {time.time()}", flush=True)
    ok = all(job.execute_in_process(partition_key=p, instance=instance).success for p in partitions)
    print(f"end {time.time()}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
