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


def text_table(
    header: Sequence[str],
    rows: Iterable[Sequence],
    max_cell: int = 60,
    numbers_right: bool = False,
    rule: bool = False,
) -> list[str]:
    """A plain-text table for a terminal: columns padded to their widest cell, long cells cut; with
    `numbers_right`, a column of numbers (or "-") aligned right; with `rule`, a line of dashes under the header."""

    def cell(value) -> str:
        text = "" if value is None else str(value).replace("\n", " ")
        return text if len(text) <= max_cell else text[: max_cell - 1] + "…"

    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    right = [numbers_right and bool(body) and all(_is_number(r[i]) for r in body) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    head = [line(list(header))] + (["  ".join("-" * w for w in widths)] if rule else [])
    return head + [line(r) for r in body]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return text == "-"
    return True


def figures_line(figures: dict) -> str:
    """A dict of figures (a trainer's logs) as one short line: `loss 0.0862, grad_norm 4.61, epoch 0.333`."""
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
