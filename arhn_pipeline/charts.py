"""Bar charts for asset metadata: a PNG written under var/plots/ and shown inline in the UI."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from arhn_pipeline import settings


def grouped_bars(categories: Sequence[str], series: Mapping[str, Sequence[float | None]], ylabel: str) -> bytes:
    """One group of bars per category, one bar per series in each (a missing value draws no bar), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * max(1, len(categories)) * max(1, len(series)) ** 0.5 * 1.4, 3.8))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j, v in enumerate(values) if v is not None]
        ys = [v for v in values if v is not None]
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=6)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(categories))], categories, rotation=25)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_metadata(png: bytes, name: str, alt: str, key: str = "plot") -> dict[str, Any]:
    """Write the chart to var/plots/NAME.png; the metadata entries that show it (`key`) and name its file
    (`key`_path)."""
    path = settings.var_dir() / "plots" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return {
        key: dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"),
        f"{key}_path": dg.MetadataValue.path(str(path)),
    }
