"""Passage identity: two passages are the same passage when their normalized texts are equal, and a passage's
id is a hash of that form. Sources, exports, references and the sample oracle all key passages this way."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The form two passages must share to count as the same passage: NFC, whitespace runs as one space."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def passage_key(text: str, title: str | None = None) -> str:
    """A passage's id: 20 hex digits of the sha256 of its normalized (title and) text."""
    body = normalize_text(text) if not title else normalize_text(title) + "\n" + normalize_text(text)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:20]
