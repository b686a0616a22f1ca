"""Tables: Markdown for asset metadata previews, plain text for the terminal."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def md_table(header: Sequence[str], rows: Iterable[Sequence], max_cell: int = 160) -> str:
    def cell(value) -> str:
        text = "" if value is None else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_cell else text[: max_cell - 1] + "…"

    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    lines += [f"| {' | '.join(cell(v) for v in row)} |" for row in rows]
    return "\n".join(lines) if len(lines) > 2 else "(none)"


def text_table(header: Sequence[str], rows: Iterable[Sequence], max_cell: int = 60) -> list[str]:
    """A plain-text table for a terminal: columns padded to their widest cell, long cells cut."""

    def cell(value) -> str:
        text = "" if value is None else str(value).replace("\n", " ")
        return text if len(text) <= max_cell else text[: max_cell - 1] + "…"

    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    line = "  ".join
    return [line(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()] + [
        line(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body
    ]
