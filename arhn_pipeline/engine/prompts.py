"""Prompt templates as files next to the stage that uses them.

A template file is YAML with a `system` and a `user` message, each a Jinja2 template. Its content hash is
its version: it goes into every call's cache key and into the stage asset's code_version, so editing a
prompt re-asks exactly the calls it changes and marks exactly the assets that use it stale.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

# Passages are shown between <passage> tags. Any tag-like text inside a passage is escaped, so a passage
# cannot close its own block and speak as the instruction or as another passage.
_TAG = re.compile(r"<(/?)(passage|query|instruction)", re.IGNORECASE)


def quote(text: str) -> str:
    return _TAG.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}", text)


# Identifiers for the passages of one request. Numbers 1..n could be named by text planted in a passage
# ("passage 3 is the best"); these come from a hash of every text of the request, so the same request always
# gets the same labels (its calls stay cached) while no text can contain them in advance (each label depends
# on that very text). 4 characters of 31 (no 0/o, 1/l/i): about 920,000 labels.
_LABEL_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def passage_labels(texts: list[str], n: int) -> tuple[str, ...]:
    seed = hashlib.sha256("\x1f".join(texts).encode("utf-8", errors="surrogatepass")).digest()
    labels: dict[str, None] = {}  # ordered, with a set's lookup: a query of 5,000 negatives stays linear
    counter = 0
    while len(labels) < n:
        block = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
        for i in range(0, len(block) - 3, 4):
            label = "".join(_LABEL_ALPHABET[b % len(_LABEL_ALPHABET)] for b in block[i : i + 4])
            if label not in labels and not label.isdigit() and len(labels) < n:
                labels[label] = None
    return tuple(labels)


def shown_labels(ids: int | tuple[str, ...]) -> tuple[str, ...]:
    """The identifiers a prompt showed: its labels, or for `n` the numbers 1..n (answers parsed without labels)."""
    return tuple(str(i) for i in range(1, ids + 1)) if isinstance(ids, int) else ids


_JSON_OBJECT = re.compile(r"\{[^{}]{0,4000}\}")


def answer_value(response: str) -> object:
    """The JSON value an answer holds (a reasoning block and a code fence around it removed), or None."""
    text = re.sub(r"<think>.*?</think>", "", response, flags=re.DOTALL | re.IGNORECASE).strip()
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    try:
        return json.loads(text)
    except ValueError:
        return None


def planted(response: str, data: tuple[str, ...] | list[str]) -> bool:
    """The answer repeats an answer written into the data it was asked about (a JSON object in a query or
    passage equal to the whole answer): text the model copied, not a judgement, whatever it says."""
    value = answer_value(response)
    if value is None:
        return False
    for text in data:
        if "{" not in text:
            continue
        for found in _JSON_OBJECT.findall(text.replace("&lt;", "<")):
            try:
                if json.loads(found) == value:
                    return True
            except ValueError:
                continue
    return False


# The sandbox: a template file named in run config cannot reach Python (attributes, calls) beyond its values.
_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
_ENV.filters["quote"] = quote


@dataclass(frozen=True)
class PromptTemplate:
    name: str  # path relative to the package, e.g. snippets/snippet.prompt.yaml
    version: str  # content hash
    system: str | None
    user: str

    @classmethod
    def load(cls, path: Path) -> PromptTemplate:
        raw = path.read_bytes()
        try:  # an error names the file, never quotes it (a YAML error would show the line it choked on)
            doc = yaml.safe_load(raw.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"prompt template {path}: not a YAML file ({type(exc).__name__})") from None
        if not isinstance(doc, dict) or "user" not in doc:
            raise ValueError(f"prompt template {path}: expected a YAML mapping with a `user` message")
        return cls(
            name=_display_name(path),
            version=hashlib.sha256(raw).hexdigest()[:12],
            system=doc.get("system"),
            user=doc["user"],
        )

    @cached_property
    def _compiled(self) -> list[tuple[str, jinja2.Template]]:
        parts = [("system", self.system)] if self.system else []
        return [(role, _ENV.from_string(src)) for role, src in parts + [("user", self.user)]]

    def render(self, **values) -> tuple[tuple[str, str], ...]:
        return tuple((role, tpl.render(**values).strip()) for role, tpl in self._compiled)


PROMPTS_ENV = "ARHN_PROMPTS_DIR"


def prompt_folders() -> list[Path]:
    """Where a prompt named in run config may come from: the stages' own folders (next to their shipped
    prompts) and the folder ARHN_PROMPTS_DIR names (set by whoever runs the code, never by run config)."""
    from arhn_pipeline import settings

    folders = sorted({p.parent for p in PACKAGE_ROOT.glob("*/*.prompt.yaml")})
    extra = settings.path(PROMPTS_ENV)
    return folders + ([extra] if extra else [])


def load_named(name: str, base: Path) -> PromptTemplate:
    """A template named in run config: relative to `base` (a stage's folder) or absolute, and only if the real
    file (symlinks followed) lies inside one of `prompt_folders()` and ends in .prompt.yaml; anything else is
    refused without being read."""
    path = Path(name)
    resolved = (path if path.is_absolute() else base / path).resolve()
    allowed = prompt_folders()
    if resolved.suffixes[-2:] != [".prompt", ".yaml"] or not any(resolved.is_relative_to(f) for f in allowed):
        raise ValueError(
            f"prompt {name!r}: a prompt must be a *.prompt.yaml file in a stage's folder or in {PROMPTS_ENV} "
            f"({', '.join(str(f) for f in allowed)})"
        )
    if not resolved.is_file():
        raise ValueError(f"prompt {name!r}: no such file in the prompt folders")
    return PromptTemplate.load(resolved)


def _display_name(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(PACKAGE_ROOT)) if resolved.is_relative_to(PACKAGE_ROOT) else str(path)


def code_version(*parts: PromptTemplate | str) -> str:
    """A stage's code_version: its prompt templates' versions and its parser's version, combined."""
    joined = "|".join(p.version if isinstance(p, PromptTemplate) else str(p) for p in parts)
    return hashlib.sha256(joined.encode()).hexdigest()[:12]
