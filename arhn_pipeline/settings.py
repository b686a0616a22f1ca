"""Every `ARHN_*` setting, declared once (name, default, kind, one line of help), and where things live.

A setting's value comes from the environment, else from the settings file (`ARHN_SETTINGS_FILE`, default
`arhn.env` in the project: `NAME=value` lines, `#` comments), else its default; `arhn config` prints each one's
effective value and where it came from. Code reads settings through `value()` (or the typed helpers), never
`os.environ` itself, so a new setting is one line here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SettingError(ValueError):
    """A setting that cannot be read: names the variable (and the file and line when it came from one)."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: str  # as it would be written in the environment; "" = unset
    help: str
    kind: str = "text"  # text | path | int | float | flag (1/0) | choice
    choices: tuple[str, ...] = ()
    group: str = "general"


def _s(
    name: str, default: str, text: str, kind: str = "text", choices: tuple[str, ...] = (), group: str = ""
) -> Setting:
    return Setting(name, default, text, kind, choices, group or "general")


SETTINGS: tuple[Setting, ...] = (
    # where things live
    _s("ARHN_VAR_DIR", "var", "runtime state: the store, models, caches, logs", "path", group="paths"),
    _s("ARHN_DB", "", "the DuckDB file (default: ARHN_VAR_DIR/arhn.duckdb)", "path", group="paths"),
    _s("ARHN_MODELS_DIR", "", "converted offline models (default: ARHN_VAR_DIR/models)", "path", group="paths"),
    _s("ARHN_VLLM_CACHE", "", "vLLM's compile cache (default: ARHN_VAR_DIR/vllm-cache)", "path", group="paths"),
    _s("ARHN_JUDGES_DIR", "", "trained judges (default: ARHN_VAR_DIR/judges)", "path", group="paths"),
    _s("ARHN_EMBEDDINGS_DIR", "", "stored vectors per model (default: ARHN_VAR_DIR/embeddings)", "path",
       group="paths"),
    _s("ARHN_SOURCES", "sources.yaml", "the source registry", "path", group="paths"),
    _s("ARHN_SHARED_DATA", "../shared/data", "the team's real test data", "path", group="paths"),
    _s("ARHN_PROMPTS_DIR", "", "a folder of your own *.prompt.yaml files that stage configs may name", "path",
       group="paths"),
    # storage
    _s("ARHN_STORAGE", "duckdb", "duckdb (one file) or ducklake (PostgreSQL catalog, Parquet rows)", "choice",
       ("duckdb", "ducklake"), "storage"),
    _s("ARHN_DUCKLAKE_CATALOG", "", "DuckLake: libpq connection string of the catalog (no password in it)",
       group="storage"),
    _s("ARHN_DUCKLAKE_DATA", "", "DuckLake: the folder or URL the Parquet rows are written under", group="storage"),
    # the LLM engine
    _s("ARHN_ENGINE", "vllm", "vllm (in process), openai (a served or hosted endpoint) or scripted (tests)", "choice",
       ("vllm", "openai", "scripted"), "engine"),
    _s("ARHN_MODEL", "", "the LLM: hub id or folder (vllm; default the packaged SmolLM2), served name (openai)",
       group="engine"),
    _s("ARHN_DTYPE", "auto", "vllm's dtype: auto (bfloat16 where native, else float32), float32, bfloat16, float16",
       group="engine"),
    _s("ARHN_TENSOR_PARALLEL", "", "vllm: GPUs one model is split across (unset: 1)", "int", group="engine"),
    _s("ARHN_PIPELINE_PARALLEL", "", "vllm: pipeline stages per engine (unset: 1)", "int", group="engine"),
    _s("ARHN_QUANTIZATION", "", "vllm: quantization method (fp8, awq, gptq, ...; part of the call key)",
       group="engine"),
    _s("ARHN_KV_CACHE_DTYPE", "", "vllm: KV-cache dtype (unset: auto; fp8)", group="engine"),
    _s("ARHN_ENFORCE_EAGER", "", "vllm: 1 = no CUDA graphs / compilation (unset: on CPU only)", "choice",
       ("", "1", "0", "true", "false"), "engine"),
    _s("ARHN_GPU_MEMORY_UTILIZATION", "", "vllm: GPU memory share, weights and KV cache (unset: 0.85)", "float",
       group="engine"),
    _s("ARHN_MAX_NUM_SEQS", "", "vllm: sequences decoded at once (unset: vLLM's default)", "int", group="engine"),
    _s("ARHN_LLM_JUDGE", "", "1 / 0: whether stages that need a judge ask the engine (unset: the engine's rule)",
       "choice", ("", "1", "0", "true", "false"), "engine"),
    _s("ARHN_OPENAI_BASE_URL", "http://127.0.0.1:8000/v1", "openai: endpoint(s), comma-separated", group="engine"),
    _s("ARHN_OPENAI_API_KEY_ENV", "OPENAI_API_KEY", "openai: the NAME of the variable holding the key", group="engine"),
    _s("ARHN_OPENAI_CONCURRENCY", "32", "openai: requests in flight", "int", group="engine"),
    _s("ARHN_OPENAI_RPM", "0", "openai: client-side requests per minute (0: no limit)", "int", group="engine"),
    _s("ARHN_OPENAI_TPM", "0", "openai: client-side tokens per minute (0: no limit)", "int", group="engine"),
    _s("ARHN_OPENAI_MODE", "online", "openai: online or batch (the provider's Batch API)", "choice",
       ("online", "batch"), "engine"),
    _s("ARHN_OPENAI_BATCH_WAIT", "600", "openai batch: seconds a step waits for its batches", "float", group="engine"),
    _s("ARHN_OPENAI_STRUCTURED", "json_schema", "openai: json_schema, vllm (guided decoding) or none", "choice",
       ("json_schema", "vllm", "none"), "engine"),
    _s("ARHN_TOKENIZER", "", "openai: a tokenizer (hub id or folder) to count and cut tokens", group="engine"),
    _s("ARHN_MAX_MODEL_LEN", "", "context length (vllm: reserved per request, default 4096; openai: the served "
       "model's)", "int", group="engine"),
    _s("ARHN_SCRIPT", "constant_no", "scripted engine: the registered rule that answers", group="engine"),
    _s("ARHN_SCRIPT_LATENCY", "0", "scripted engine: seconds each call takes", "float", group="engine"),
    _s("ARHN_TCMALLOC", "1", "arhn run preloads Debian's tcmalloc where installed (0: never)", "flag", group="engine"),
    # costs
    _s("ARHN_PRICES", "", "MODEL=IN,OUT dollars per million tokens, separated by spaces (arhn run --price)",
       group="costs"),
    _s("ARHN_BUDGET_USD", "", "dollars: a hosted run estimated above this stops before it starts", "float",
       group="costs"),
    # embedders
    _s("ARHN_EMBED_DTYPE", "float32", "the embedders' precision: float32, bfloat16, float16 (GPU), int8 (CPU), auto",
       "choice", ("float32", "bfloat16", "float16", "int8", "auto"), "embedders"),
    _s("ARHN_EMBEDDINGS_STORE", "1", "keep every text's vectors for reuse (0: off)", "flag", group="embedders"),
    # runs
    _s("ARHN_HEARTBEAT_SECONDS", "30", "seconds between a run's heartbeats (a tag in the Dagster instance)",
       "float", group="runs"),
    _s("ARHN_HEARTBEAT_LIMIT_SECONDS", "600", "a STARTED run of another machine with an older heartbeat is failed "
       "and its slots freed", "float", group="runs"),
    # progress and diagnostics
    _s("ARHN_PROGRESS_SECONDS", "30", "seconds between progress lines of a long step", "float", group="progress"),
    _s("ARHN_CALL_LOG", "", "a file to append the key of every LLM call sent (diagnostics, tests)", "path",
       group="progress"),
    _s("ARHN_FAULT", "", "tests: NAME[:N] kills the process at the Nth pass of a fault point", group="progress"),
    _s("ARHN_SETTINGS_FILE", "arhn.env", "the settings file (NAME=value lines)", "path", group="paths"),
    _s("ARHN_EXTRAS", "cpu,dev", "scripts/setup.sh: the extras installed (gpu,dev on a GPU machine)", group="setup"),
)  # fmt: skip
BY_NAME = {s.name: s for s in SETTINGS}


def settings_file() -> Path:
    configured = os.environ.get("ARHN_SETTINGS_FILE") or BY_NAME["ARHN_SETTINGS_FILE"].default
    return _resolve(configured)


def _resolve(text: str) -> Path:
    path = Path(text).expanduser()
    return (path if path.is_absolute() else PROJECT_ROOT / path).resolve()


@lru_cache(maxsize=8)
def _file_values(path: Path, mtime: float) -> dict[str, tuple[str, int]]:
    """NAME -> (value, line) of a settings file; an unknown ARHN_ name or a malformed line is an error."""
    out: dict[str, tuple[str, int]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, eq, value = text.partition("=")
        name = name.strip().removeprefix("export ").strip()
        if not eq:
            raise SettingError(f"{path} line {n}: expected NAME=value, found {text[:60]!r}")
        if name not in BY_NAME:
            raise SettingError(f"{path} line {n}: {name!r} is not a setting (arhn config lists them)")
        out[name] = (value.strip().strip("'\""), n)
    return out


def _from_file(name: str) -> tuple[str, int] | None:
    path = settings_file()
    if name == "ARHN_SETTINGS_FILE" or not path.is_file():
        return None
    return _file_values(path, path.stat().st_mtime).get(name)


def source(name: str) -> str:
    """Where a setting's value comes from: environment, the file (with its line), or default."""
    if os.environ.get(name):
        return "environment"
    found = _from_file(name)
    return f"{settings_file().name} line {found[1]}" if found else "default"


def value(name: str) -> str:
    """A declared setting's effective text ("" when unset); a choice outside its list is an error naming it."""
    setting = BY_NAME[name]  # KeyError: not declared here
    raw = os.environ.get(name) or ""
    if not raw:
        found = _from_file(name)
        raw = found[0] if found else setting.default
    raw = raw.strip()
    if setting.kind == "choice" and raw.lower() not in setting.choices:
        raise SettingError(f"{name}={raw!r}: expected one of {', '.join(c for c in setting.choices if c)}")
    return raw.lower() if setting.kind == "choice" else raw


def integer(name: str) -> int | None:
    return _number(name, int)  # type: ignore[return-value]


def number(name: str) -> float | None:
    return _number(name, float)


def _number(name: str, kind: type) -> float | int | None:
    text = value(name)
    if not text:
        return None
    try:
        parsed: float | int = kind(text)
    except ValueError:
        raise SettingError(f"{name}={text!r}: expected {'an integer' if kind is int else 'a number'}") from None
    return parsed


def flag(name: str) -> bool:
    return value(name) not in ("0", "false", "no", "off", "")


def path(name: str, default: Path | None = None) -> Path | None:
    """A path setting, or `default` when unset: relative to the working folder when from the environment (as
    a shell user means it), to the project when from the file or the default."""
    text = value(name)
    if not text:
        return default
    return Path(text).expanduser().resolve() if os.environ.get(name) else _resolve(text)


def effective() -> list[tuple[str, str, str, str]]:
    """(name, value, source, help) of every setting: what `arhn config` prints."""
    rows = []
    for s in SETTINGS:
        try:
            shown = value(s.name) or "(unset)"
        except SettingError as exc:
            shown = f"INVALID: {exc}"
        rows.append((s.name, shown, source(s.name), s.help))
    return rows


def unknown_in_environment() -> list[str]:
    """ARHN_* variables set in the environment that are not settings (a typo, or one from another version)."""
    return sorted(n for n in os.environ if n.startswith("ARHN_") and n not in BY_NAME)


def _env_path(name: str, default: Path) -> Path:
    if name not in BY_NAME:  # another tool's variable (DAGSTER_HOME): the environment only
        text = os.environ.get(name)
        return Path(text).expanduser().resolve() if text else default
    found = path(name)
    return found if found is not None else default


def var_dir() -> Path:
    """Runtime state (DuckDB file, converted models, vLLM cache); never committed."""
    return _env_path("ARHN_VAR_DIR", PROJECT_ROOT / "var")


def db_path() -> Path:
    return _env_path("ARHN_DB", var_dir() / "arhn.duckdb")


def models_dir() -> Path:
    return _env_path("ARHN_MODELS_DIR", var_dir() / "models")


def vllm_cache_dir() -> Path:
    return _env_path("ARHN_VLLM_CACHE", var_dir() / "vllm-cache")


def judges_dir() -> Path:
    """Judges trained by the pipeline (the trained_judge asset, `arhn train-judge`)."""
    return _env_path("ARHN_JUDGES_DIR", var_dir() / "judges")


def embeddings_dir() -> Path:
    """Vectors and term weights already computed, per model (vector_store.py)."""
    return _env_path("ARHN_EMBEDDINGS_DIR", var_dir() / "embeddings")


def sources_file() -> Path:
    return _env_path("ARHN_SOURCES", PROJECT_ROOT / "sources.yaml")  # default declared above


def shared_data_dir() -> Path:
    """The team's real test data (`../shared/data` beside the checkout); absent on a user's machine."""
    return _env_path("ARHN_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data")


def make_private_dir(path: Path) -> Path:
    """`path` made (with its parents) if missing; the state folder and what it makes inside private to its user
    (0700): the call cache holds every prompt and answer, the Dagster instance every run's config."""
    var = var_dir()
    for folder in [var, path] if path.is_relative_to(var) else [path]:
        if not folder.exists():
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
    return path


def make_private_file(path: Path) -> None:
    """A state file this process just made: readable by its user only (0600)."""
    try:
        if path.exists() and path.stat().st_uid == os.getuid():
            path.chmod(0o600)
    except OSError:
        pass


def dagster_home() -> Path:
    """DAGSTER_HOME for the CLI and scripts: var/dagster, with the project's dagster.yaml linked in."""
    home = make_private_dir(_env_path("DAGSTER_HOME", var_dir() / "dagster"))
    link = home / "dagster.yaml"
    if not link.exists() and (PROJECT_ROOT / "dagster.yaml").exists() and home.is_relative_to(var_dir()):
        link.symlink_to(PROJECT_ROOT / "dagster.yaml")
    return home
