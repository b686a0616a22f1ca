"""The source registry: a YAML file naming each sub-dataset (one partition each) and where it comes from."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from arhn_pipeline import settings, shards
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
    shards: int | None = Field(
        default=None, ge=2, le=4096, description="split the queries into this many partitions (shards.py)"
    )
    shard: int | None = Field(default=None, exclude=True, description="set on the entry of one shard's partition")
    path_as_written: str | None = Field(
        default=None, exclude=True, description="`path` before ${VAR} expansion: what logs and metadata show"
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
        """Where the rows come from, as the registry wrote it (an expanded ${VAR} may hold a secret)."""
        if self.path is not None:
            return self.path_as_written or str(self.path)
        assert self.hub is not None  # the validator requires one of the two
        return f"hub:{self.hub.dataset}"


class RegistryError(Exception):
    pass


class Registry(dict[str, SourceEntry]):
    """The registry's valid entries by name; `problems` names each entry that is not valid and why. A broken
    entry fails its own partition only."""

    def __init__(self, entries: dict[str, SourceEntry], problems: dict[str, str], path: Path):
        super().__init__(entries)
        self.problems = problems
        self.path = path

    def names(self) -> list[str]:
        """Every partition key: each entry's name (or, with `shards`, one key per shard), broken entries
        included (each is a partition that fails with its problem), except names that cannot be a partition
        key (those are only reported)."""
        keys = [k for name, e in self.items() for k in shards.keys(name, e.shards)]
        return [*keys, *(name for name in self.problems if name not in self and _NAME.match(name))]

    def partitions(self, names: list[str]) -> list[str]:
        """The partition keys of these entries (a sharded entry's shards), in order."""
        return [k for name in names for k in (shards.keys(name, self[name].shards) if name in self else [name])]

    def entry(self, name: str) -> SourceEntry:
        """The entry of a partition key (a shard's key gives its entry with `shard` set), or a RegistryError
        saying what is wrong with it (or that it does not exist)."""
        sharded = shards.parse(name)
        base = sharded[0] if sharded else name
        if base in self.problems:
            raise RegistryError(self.problems[base])
        if base not in self:
            raise RegistryError(f"{name!r} is not in the source registry {self.path} (entries: {sorted(self)})")
        entry = self[base]
        if sharded:
            if entry.shards != sharded[2] or sharded[1] >= sharded[2]:
                raise RegistryError(
                    f"{name!r} is not a partition of {base!r}, which has "
                    f"{f'{entry.shards} shards' if entry.shards else 'no shards'}"
                )
            return entry.model_copy(update={"shard": sharded[1]})
        if entry.shards:
            raise RegistryError(
                f"{base!r} has {entry.shards} shards: its partitions are {shards.keys(base, entry.shards)}"
            )
        return entry


def _expand(value: str, base: Path) -> Path:
    env = dict(os.environ)
    env.setdefault("ARHN_SHARED_DATA", str(settings.shared_data_dir()))
    expanded = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), value)
    if "${" in expanded:
        raise RegistryError(f"unset variable in path {value!r}")
    path = Path(expanded).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_registry(path: Path | None = None) -> Registry:
    """Read the registry; relative paths are relative to the registry file. A file that cannot be read as a
    registry raises RegistryError; an entry that is not valid is named in `problems`, the others load."""
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
    problems: dict[str, str] = {}
    for name, spec in raw.items():
        name = str(name)
        try:
            entries[name] = _entry(name, spec, path.parent)
        except (RegistryError, ValidationError, TypeError, ValueError) as exc:
            problems[name] = f"source registry {path}, entry {name!r}: {_explain(exc)}"
    return Registry(entries, problems, path)


def _entry(name: str, spec: Any, base: Path) -> SourceEntry:
    if not isinstance(spec, dict):
        raise RegistryError(f"expected a mapping of settings, got {type(spec).__name__}")
    spec = dict(spec)
    if "path" in spec:
        spec["path_as_written"] = str(spec["path"])
        spec["path"] = _expand(str(spec["path"]), base)
    if isinstance(spec.get("reference"), dict) and "path" in spec["reference"]:
        spec["reference"] = {**spec["reference"], "path": _expand(str(spec["reference"]["path"]), base)}
    hub = spec.get("hub")
    if isinstance(hub, dict) and hub.get("data_files"):
        spec["hub"] = {**hub, "data_files": [str(_expand(str(f), base)) for f in hub["data_files"]]}
    return SourceEntry(name=name, **spec)


def _explain(exc: Exception) -> str:
    """One line per problem, naming the setting: `format: Input should be 'bge' or 'tevatron' (got 'bgee')`."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "entry"
            got = f" (got {err['input']!r})" if err["type"] not in ("missing", "value_error") else ""
            parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}{got}")
        return "; ".join(parts)
    return str(exc)
