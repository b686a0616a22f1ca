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

from typing import Any

from arhn_pipeline import settings
from arhn_pipeline.engine import sample_oracle  # noqa: F401  (registers the sample_oracle script)
from arhn_pipeline.engine.base import LLMEngine
from arhn_pipeline.engine.scripted import ScriptedEngine
from arhn_pipeline.engine.vllm_engine import SMOLLM2, VLLMEngine

# settings -> the VLLMEngine field they set, and how each is read
VLLM_SETTINGS = {
    "ARHN_MAX_MODEL_LEN": ("max_model_len", settings.integer),
    "ARHN_TENSOR_PARALLEL": ("tensor_parallel_size", settings.integer),
    "ARHN_PIPELINE_PARALLEL": ("pipeline_parallel_size", settings.integer),
    "ARHN_KV_CACHE_DTYPE": ("kv_cache_dtype", settings.value),
    "ARHN_GPU_MEMORY_UTILIZATION": ("gpu_memory_utilization", settings.number),
}


def engine_from_env() -> LLMEngine:
    """The engine the settings choose (settings.py declares each variable, its default and its choices)."""
    s = settings
    judge_env = s.value("ARHN_LLM_JUDGE")
    judge = None if not judge_env else judge_env in ("1", "true")
    kind = s.value("ARHN_ENGINE")
    if kind == "vllm":
        eager = s.value("ARHN_ENFORCE_EAGER")
        engine: dict[str, Any] = {
            "model": s.value("ARHN_MODEL") or SMOLLM2,
            "dtype": s.value("ARHN_DTYPE"),
            "enforce_eager": None if not eager else eager in ("1", "true"),
            "quantization": s.value("ARHN_QUANTIZATION") or None,
            "max_num_seqs": s.integer("ARHN_MAX_NUM_SEQS"),
        }
        # the rest only when set: VLLMEngine's fields hold their defaults, written once
        for setting, (field, read) in VLLM_SETTINGS.items():
            if s.value(setting):
                engine[field] = read(setting)
        return VLLMEngine(judge=judge, **engine)
    if kind == "scripted":
        return ScriptedEngine(
            model=s.value("ARHN_SCRIPT"), latency_seconds=s.number("ARHN_SCRIPT_LATENCY") or 0.0, judge=judge
        )
    from arhn_pipeline.engine.openai_engine import OpenAIEngine

    return OpenAIEngine(
        model=s.value("ARHN_MODEL") or "smollm2",
        base_url=s.value("ARHN_OPENAI_BASE_URL"),
        api_key_env=s.value("ARHN_OPENAI_API_KEY_ENV"),
        concurrency=s.integer("ARHN_OPENAI_CONCURRENCY") or 32,
        requests_per_minute=s.integer("ARHN_OPENAI_RPM") or 0,
        tokens_per_minute=s.integer("ARHN_OPENAI_TPM") or 0,
        mode=s.value("ARHN_OPENAI_MODE"),  # type: ignore[arg-type]
        batch_wait_seconds=s.number("ARHN_OPENAI_BATCH_WAIT") or 0.0,
        structured=s.value("ARHN_OPENAI_STRUCTURED"),
        tokenizer=s.value("ARHN_TOKENIZER") or None,
        max_model_len=s.integer("ARHN_MAX_MODEL_LEN"),
        judge=judge,
    )
