"""Which engine the shipped definitions use, chosen by environment so the assets never know:

ARHN_ENGINE=vllm      (default) vLLM offline inference; ARHN_MODEL names the model (default: smollm2)
ARHN_ENGINE=scripted  answers by a registered rule (ARHN_SCRIPT), for logic tests and demos;
                      ARHN_SCRIPT_LATENCY=seconds makes each engine call take that long
"""

from __future__ import annotations

import os

from arhn_pipeline.engine import sample_oracle  # noqa: F401  (registers the sample_oracle script)
from arhn_pipeline.engine.base import LLMEngine
from arhn_pipeline.engine.scripted import ScriptedEngine
from arhn_pipeline.engine.vllm_engine import SMOLLM2, VLLMEngine


def engine_from_env() -> LLMEngine:
    kind = os.environ.get("ARHN_ENGINE", "vllm")
    if kind == "vllm":
        return VLLMEngine(model=os.environ.get("ARHN_MODEL", SMOLLM2))
    if kind == "scripted":
        return ScriptedEngine(
            model=os.environ.get("ARHN_SCRIPT", "constant_no"),
            latency_seconds=float(os.environ.get("ARHN_SCRIPT_LATENCY", "0")),
        )
    raise ValueError(f"ARHN_ENGINE must be 'vllm' or 'scripted', not {kind!r}")
