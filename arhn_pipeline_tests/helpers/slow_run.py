"""Run `clean_subset` for one partition with a slow recording engine, for the kill -9 test.

    python -m arhn_pipeline_tests.helpers.slow_run PARTITION LOG SLEEP_SECONDS

Every engine call appends "start <n>" then each request's key to LOG, sleeps, and answers NO_ANSWER.
"""

import json
import os
import sys
import time

import dagster as dg

from arhn_pipeline.engine.base import LLMRequest
from arhn_pipeline.engine.scripted import ScriptedEngine, register_script


@register_script("slow_no_answer")
def _no_answer(req: LLMRequest) -> str:
    return json.dumps({"snippet": "NO_ANSWER"})


class Recorder(ScriptedEngine):
    log: str
    sleep: float

    def generate(self, requests):
        with open(self.log, "a") as fh:
            fh.write("start\n")
            fh.writelines(r.cache_key(self.model_id()) + "\n" for r in requests)
            fh.flush()
            os.fsync(fh.fileno())
        time.sleep(self.sleep)
        return super().generate(requests)


def main() -> None:
    partition, log, sleep = sys.argv[1], sys.argv[2], float(sys.argv[3])
    from arhn_pipeline.definitions import build_defs

    defs = build_defs()
    job = defs.resolve_job_def("clean_subset")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("subset", [partition])
    engine = Recorder(model="slow_no_answer", log=log, sleep=sleep)
    result = dg.materialize(
        [a for a in defs.assets if a.key.to_user_string() in ("raw_triplets", "snippets")],
        partition_key=partition,
        instance=instance,
        resources={**defs.resources, "llm": engine},
        run_config={"ops": {"snippets": {"config": {"batch_size": 16}}}},
    )
    del job
    sys.exit(0 if result.success else 1)


if __name__ == "__main__":
    main()
