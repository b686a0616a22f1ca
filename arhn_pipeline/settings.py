"""Where things live. Every path can be moved with an environment variable; the defaults sit in the project."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


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
    return _env_path("ARHN_SOURCES", PROJECT_ROOT / "sources.yaml")


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
