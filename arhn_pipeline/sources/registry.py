"""The source registry: a YAML file naming each sub-dataset (one partition each) and where it comes from."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from arhn_pipeline import settings
from arhn_pipeline.sources.rows import Format

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


class HubSource(BaseModel):
    """A Hugging Face dataset, read with `datasets` in streaming mode."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="hub id (e.g. rlhn/rlhn-680K) or a `datasets` builder such as `json`")
    split: str = "train"
    config: str | None = Field(default=None, description="the dataset's configuration name, if any")
    data_files: list[str] | None = Field(default=None, description="for file builders such as `json`")
    filter: dict[str, Any] = Field(default_factory=dict, description="keep rows whose columns equal these")


class Reference(BaseModel):
    """Labels to measure false-negative detectors against (arhn agreement, and relabeled's agreement check)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["human_grades", "rlhn_labels", "sample_labels"]
    path: Path


class SourceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    format: Format
    path: Path | None = None
    hub: HubSource | None = None
    reference: Reference | None = None
    limit: int | None = Field(default=None, ge=1, description="read only the first N records (a slice)")
    description: str = ""
    in_default_run: bool = Field(
        default=True, description="materialized by `arhn run`; entries that need ../shared say false"
    )

    @model_validator(mode="after")
    def _one_origin(self) -> SourceEntry:
        if not _NAME.match(self.name):
            raise ValueError(f"source name {self.name!r} must be lower-case letters, digits, '_' or '-'")
        if (self.path is None) == (self.hub is None):
            raise ValueError(f"source {self.name!r} needs exactly one of `path` or `hub`")
        return self

    @property
    def location(self) -> str:
        if self.path is not None:
            return str(self.path)
        assert self.hub is not None  # the validator requires one of the two
        return f"hub:{self.hub.dataset}"


class RegistryError(Exception):
    pass


def _expand(value: str, base: Path) -> Path:
    env = dict(os.environ)
    env.setdefault("ARHN_SHARED_DATA", str(settings.shared_data_dir()))
    expanded = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), value)
    if "${" in expanded:
        raise RegistryError(f"unset variable in path {value!r}")
    path = Path(expanded).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_registry(path: Path | None = None) -> dict[str, SourceEntry]:
    """Read the registry; relative paths are relative to the registry file."""
    path = path or settings.sources_file()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise RegistryError(f"cannot read source registry {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise RegistryError(f"source registry {path} is not valid YAML: {exc}") from exc
    raw = doc.get("sources")
    if not isinstance(raw, dict):
        raise RegistryError(f"source registry {path}: expected a `sources:` mapping of name -> entry")
    entries: dict[str, SourceEntry] = {}
    for name, spec in raw.items():
        spec = dict(spec or {})
        if "path" in spec:
            spec["path"] = _expand(str(spec["path"]), path.parent)
        if spec.get("reference"):
            spec["reference"]["path"] = _expand(str(spec["reference"]["path"]), path.parent)
        if spec.get("hub", {}).get("data_files"):
            spec["hub"]["data_files"] = [str(_expand(f, path.parent)) for f in spec["hub"]["data_files"]]
        try:
            entries[name] = SourceEntry(name=name, **spec)
        except ValidationError as exc:
            raise RegistryError(f"source registry {path}, entry {name!r}: {exc}") from exc
    return entries
