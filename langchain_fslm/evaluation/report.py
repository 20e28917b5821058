"""Write evaluation outputs: results JSON, a markdown table and a bar chart with 95% CIs, each atomically."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_fslm.files import write_atomically, write_text


@dataclass(frozen=True)
class Bar:
    """One bar of the chart: a score with its 95% confidence interval (and an optional chance line)."""

    label: str
    score: float
    low: float
    high: float
    chance: float | None = None


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (floats to 3 decimals, None as ``n/a``)."""

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def bar_chart(path: Path, bars: Sequence[Bar], *, title: str, ylabel: str = "accuracy") -> Path:
    """A bar chart PNG of scores with 95% CI error bars and dashed chance levels (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(bars) + 2), 4.0))
    xs = list(range(len(bars)))
    errors = [[max(0.0, b.score - b.low) for b in bars], [max(0.0, b.high - b.score) for b in bars]]
    ax.bar(xs, [b.score for b in bars], yerr=errors, capsize=4, color="#4C72B0")
    for x, b in zip(xs, bars, strict=True):
        if b.chance:
            ax.hlines(b.chance, x - 0.4, x + 0.4, colors="grey", linestyles="dashed")
        ax.text(x, b.high + 0.02, f"{b.score:.2f}", ha="center", fontsize=8)
    ax.set_xticks(xs, [b.label for b in bars], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        return write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)


def write_outputs(
    out_dir: str | Path,
    *,
    results: dict[str, Any],
    markdown: str,
    bars: Sequence[Bar],
    title: str,
    stem: str = "results",
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``.

    Returns:
        The written paths by kind (``json``, ``markdown``, ``plot``).
    """
    out = Path(out_dir)
    return {
        "json": write_text(out / f"{stem}.json", json.dumps(results, indent=2, default=str) + "\n"),
        "markdown": write_text(out / f"{stem}.md", markdown),
        "plot": bar_chart(out / f"{stem}.png", bars, title=title),
    }


__all__ = ["Bar", "bar_chart", "markdown_table", "write_atomically", "write_outputs", "write_text"]
