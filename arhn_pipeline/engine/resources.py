"""Which engine the shipped definitions use, chosen by environment so the assets never know:

ARHN_ENGINE=vllm      (default) vLLM offline inference; ARHN_MODEL names the model (default: smollm2),
                      ARHN_DTYPE its dtype (default auto: bfloat16 where native, else float32)
ARHN_ENGINE=openai    an OpenAI-compatible endpoint (a `vllm serve`, a hosted API): ARHN_MODEL (served name),
                      ARHN_OPENAI_BASE_URL (default http://127.0.0.1:8000/v1; several, comma-separated),
                      ARHN_OPENAI_API_KEY_ENV (the NAME of the variable holding the key, default OPENAI_API_KEY),
                      ARHN_OPENAI_CONCURRENCY (32),
                      ARHN_OPENAI_RPM, ARHN_OPENAI_TPM (client-side limits), ARHN_OPENAI_MODE (online | batch),
                      ARHN_OPENAI_BATCH_WAIT (seconds a step waits for its batches),
                      ARHN_OPENAI_STRUCTURED (json_schema | vllm | none), ARHN_TOKENIZER, ARHN_MAX_MODEL_LEN
ARHN_ENGINE=scripted  answers by a registered rule (ARHN_SCRIPT), for logic tests and demos;
                      ARHN_SCRIPT_LATENCY=seconds makes each engine call take that long
ARHN_LLM_JUDGE=1|0    whether the stages that need a judge ask the engine (unset: the engine's rule, judge_rule)
"""

from __future__ import annotations

import os

from arhn_pipeline.engine import sample_oracle  # noqa: F401  (registers the sample_oracle script)
from arhn_pipeline.engine.base import LLMEngine
from arhn_pipeline.engine.scripted import ScriptedEngine
from arhn_pipeline.engine.vllm_engine import SMOLLM2, VLLMEngine


def engine_from_env() -> LLMEngine:
    judge_env = os.environ.get("ARHN_LLM_JUDGE", "").strip().lower()
    if judge_env not in ("", "1", "0", "true", "false"):
        raise ValueError(f"ARHN_LLM_JUDGE must be 1 or 0, not {judge_env!r}")
    judge = None if not judge_env else judge_env in ("1", "true")
    kind = os.environ.get("ARHN_ENGINE", "vllm")
    if kind == "vllm":
        return VLLMEngine(
            model=os.environ.get("ARHN_MODEL", SMOLLM2), dtype=os.environ.get("ARHN_DTYPE", "auto"), judge=judge
        )
    if kind == "scripted":
        return ScriptedEngine(
            model=os.environ.get("ARHN_SCRIPT", "constant_no"),
            latency_seconds=float(os.environ.get("ARHN_SCRIPT_LATENCY", "0")),
            judge=judge,
        )
    if kind == "openai":
        from arhn_pipeline.engine.openai_engine import OpenAIEngine

        env = os.environ
        return OpenAIEngine(
            model=env.get("ARHN_MODEL", "smollm2"),
            base_url=env.get("ARHN_OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"),
            api_key_env=env.get("ARHN_OPENAI_API_KEY_ENV", "OPENAI_API_KEY"),
            concurrency=int(env.get("ARHN_OPENAI_CONCURRENCY", "32")),
            requests_per_minute=int(env.get("ARHN_OPENAI_RPM", "0")),
            tokens_per_minute=int(env.get("ARHN_OPENAI_TPM", "0")),
            mode=env.get("ARHN_OPENAI_MODE", "online"),  # type: ignore[arg-type]
            batch_wait_seconds=float(env.get("ARHN_OPENAI_BATCH_WAIT", "600")),
            structured=env.get("ARHN_OPENAI_STRUCTURED", "json_schema"),
            tokenizer=env.get("ARHN_TOKENIZER") or None,
            max_model_len=int(env["ARHN_MAX_MODEL_LEN"]) if env.get("ARHN_MAX_MODEL_LEN") else None,
            judge=judge,
        )
    raise ValueError(f"ARHN_ENGINE must be 'vllm', 'openai' or 'scripted', not {kind!r}")
