"""The row formats the pipeline ingests, validated with pydantic, and the one normalized shape they map to.

BGE / FlagEmbedding: {"query", "pos": [text], "neg": [text], optional "pos_scores", "neg_scores", "prompt",
"type", and ids ("query_id" or "qid", "pos_ids", "neg_ids") when the file has them}.
Tevatron: {"query_id", "query", "positive_passages": [{"docid", "title", "text"}], "negative_passages": [...]}.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from arhn_pipeline.identity import normalize_text, passage_key

Format = Literal["bge", "tevatron"]

# C0 controls other than tab, newline and carriage return (and DEL) never belong in passage text; they
# usually mean a binary or mis-decoded file, so the row is quarantined rather than silently cleaned.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# Characters a query or passage may have (raw_triplets config `max_text_chars`): one 50 MB passage would
# otherwise be tokenized, embedded and held in every stage's memory.
MAX_TEXT_CHARS = 100_000


def _clean_text(value: str, info: ValidationInfo) -> str:
    if not value.strip():
        raise ValueError("empty text")
    limit = (info.context or {}).get("max_text_chars", MAX_TEXT_CHARS)
    if len(value) > limit:
        raise ValueError(f"too_large: {len(value)} characters, over the {limit}-character limit (max_text_chars)")
    bad = _CONTROL.search(value)
    if bad:
        raise ValueError(f"control character U+{ord(bad.group()):04X} at offset {bad.start()}")
    return value


Text = Annotated[str, AfterValidator(_clean_text)]
Id = Annotated[str | int, AfterValidator(str)]


class BGERow(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    query: Text
    pos: list[Text] = Field(min_length=1)
    neg: list[Text] = Field(min_length=1)
    pos_scores: list[FiniteFloat] | None = None  # NaN or infinity is a broken score, not a score
    neg_scores: list[FiniteFloat] | None = None
    pos_ids: list[Id] | None = None
    neg_ids: list[Id] | None = None
    query_id: Id | None = None
    qid: Id | None = None
    prompt: str | None = None
    type: str | None = None

    @model_validator(mode="after")
    def _parallel_lists(self) -> BGERow:
        for name, ref in (("pos_scores", "pos"), ("pos_ids", "pos"), ("neg_scores", "neg"), ("neg_ids", "neg")):
            values = getattr(self, name)
            if values is not None and len(values) != len(getattr(self, ref)):
                raise ValueError(f"{name} has {len(values)} entries but {ref} has {len(getattr(self, ref))}")
        return self


class TevatronPassage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    docid: Id | None = None
    title: str | None = None
    text: Text
    score: FiniteFloat | None = None


class TevatronRow(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    query_id: Id
    query: Text
    positive_passages: list[TevatronPassage] = Field(min_length=1)
    negative_passages: list[TevatronPassage] = Field(min_length=1)


@dataclass(frozen=True)
class Candidate:
    text: str
    title: str | None = None
    source_id: str | None = None
    score: float | None = None
    passage_id: str = ""  # passage_key(text, title), set when the triplet is folded


@dataclass
class Triplet:
    """One query with its positives and hard negatives, whatever format it came in."""

    query_id: str
    query: str
    positives: list[Candidate]
    negatives: list[Candidate]
    prompt: str | None = None
    type: str | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)  # (field, reason) of candidates left out


class RowError(Exception):
    """A row that cannot be ingested; `field` names the offending field (e.g. `neg[3]`)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def derived_query_id(query: str) -> str:
    """Stable id for sources without ids: a re-ingest gives every query the same id."""
    return "q" + hashlib.sha256(normalize_text(query).encode("utf-8")).hexdigest()[:16]


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "row"


def _first_error(exc: ValidationError) -> RowError:
    err = exc.errors(include_url=False)[0]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "required field is missing"
    return RowError(_loc(err["loc"]), msg)


def parse_row(obj: object, fmt: Format, max_text_chars: int = MAX_TEXT_CHARS) -> Triplet:
    """Validate one decoded JSON value and map it to a Triplet; raises RowError naming the field."""
    if not isinstance(obj, dict):
        raise RowError("row", f"expected a JSON object, got {type(obj).__name__}")
    context = {"max_text_chars": max_text_chars}
    try:
        if fmt == "bge":
            return _from_bge(BGERow.model_validate(obj, context=context))
        return _from_tevatron(TevatronRow.model_validate(obj, context=context))
    except ValidationError as exc:
        raise _first_error(exc) from None
    except RecursionError:
        raise RowError("row", "nested too deeply to validate") from None


def _from_bge(row: BGERow) -> Triplet:
    def side(texts, ids, scores):
        return [
            Candidate(text=t, source_id=ids[i] if ids else None, score=scores[i] if scores else None)
            for i, t in enumerate(texts)
        ]

    qid = str(row.query_id or row.qid or derived_query_id(row.query))
    return _fold(
        Triplet(
            query_id=qid,
            query=row.query,
            positives=side(row.pos, row.pos_ids, row.pos_scores),
            negatives=side(row.neg, row.neg_ids, row.neg_scores),
            prompt=row.prompt,
            type=row.type,
        ),
        names=("pos", "neg"),
    )


def _from_tevatron(row: TevatronRow) -> Triplet:
    def side(passages):
        return [Candidate(text=p.text, title=p.title or None, source_id=p.docid, score=p.score) for p in passages]

    return _fold(
        Triplet(
            query_id=str(row.query_id),
            query=row.query,
            positives=side(row.positive_passages),
            negatives=side(row.negative_passages),
        ),
        names=("positive_passages", "negative_passages"),
    )


def _fold(t: Triplet, names: tuple[str, str]) -> Triplet:
    """Leave out repeated passages: a repeat within a list, or a negative that is also a positive.

    Each one left out is recorded in `problems` so the ingest can quarantine it by field.
    """
    seen: dict[str, str] = {}
    kept: dict[str, list[Candidate]] = {"pos": [], "neg": []}
    for side, name, cands in (("pos", names[0], t.positives), ("neg", names[1], t.negatives)):
        for i, c in enumerate(cands):
            key = passage_key(c.text, c.title)
            where = f"{name}[{i}]"
            if key in seen:
                first = seen[key]
                if side == "neg" and first.startswith(names[0]):
                    reason = f"negative identical to positive {first}"
                else:
                    reason = f"duplicate of {first}"
                t.problems.append((where, reason))
                continue
            seen[key] = where
            kept[side].append(replace(c, passage_id=key))
    t.positives, t.negatives = kept["pos"], kept["neg"]
    return t
