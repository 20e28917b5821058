"""Write evaluation outputs: results JSON, a markdown table and a bar chart with 95% CIs, each atomically."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_fslm.files import write_atomically, write_text


@dataclass(frozen=True)
class Bar:
    """One bar of the chart: a score with its 95% confidence interval (and an optional chance line).

    Attributes:
        label: What the bar is (a task, a model).
        score: The score, 0-1.
        low: Lower end of the 95% interval.
        high: Upper end of the 95% interval.
        chance: The chance level, drawn as a dashed line (None: none).
        metric: The metric's name; bars of different metrics go to different panels, one axis each.
        n: Items behind the score (shown under the label).
    """

    label: str
    score: float
    low: float
    high: float
    chance: float | None = None
    metric: str = "accuracy"
    n: int | None = None


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


def _draw_panel(ax: Any, bars: Sequence[Bar], metric: str) -> None:
    """One panel: the bars of one metric, their 95% CIs, chance lines and values; the axis is the metric."""
    xs = list(range(len(bars)))
    errors = [[max(0.0, b.score - b.low) for b in bars], [max(0.0, b.high - b.score) for b in bars]]
    ax.bar(xs, [b.score for b in bars], yerr=errors, capsize=4, color="#4C72B0", width=0.6)
    for x, b in zip(xs, bars, strict=True):
        if b.chance:
            ax.hlines(b.chance, x - 0.4, x + 0.4, colors="grey", linestyles="dashed")
        ax.text(x, min(b.high + 0.02, 1.08), f"{b.score:.2f}", ha="center", fontsize=8)
    labels = [b.label if b.n is None else f"{b.label}\n(n={b.n})" for b in bars]
    ax.set_xticks(xs, labels, rotation=20 if len(bars) > 3 else 0, ha="right" if len(bars) > 3 else "center")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlim(-0.6, len(bars) - 0.4)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel(metric)


def chart_figure(bars: Sequence[Bar], *, title: str, subtitle: str = "", ylabel: str | None = None) -> Any:
    """The matplotlib figure of :func:`bar_chart` (Agg backend; the caller closes it).

    Bars of different metrics (``Bar.metric``) are drawn in separate panels, each axis named by its
    metric; ``n`` is shown under each bar. The title and the ``subtitle`` (e.g. the sample and the
    ``--limit``) are wrapped to the figure's width.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[Bar]] = {}
    for b in bars:
        panels.setdefault(ylabel or b.metric, []).append(b)
    if not panels:
        panels[ylabel or "accuracy"] = []
    widths = [max(1.6, 1.1 * len(group) + 0.8) for group in panels.values()]
    fig_width = max(5.0, sum(widths) + 1.0)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(fig_width, 4.4), squeeze=False, gridspec_kw={"width_ratios": widths}
    )
    for ax, (metric, group) in zip(axes[0], panels.items(), strict=True):
        _draw_panel(ax, group, metric)
    chars = max(30, int(fig_width * 11))
    heading = textwrap.fill(title, chars, break_on_hyphens=False)
    if subtitle:
        heading += "\n" + textwrap.fill(subtitle, int(chars * 1.15), break_on_hyphens=False)
    fig.suptitle(heading, fontsize=9)
    fig.tight_layout()
    return fig


def bar_chart(
    path: Path, bars: Sequence[Bar], *, title: str, subtitle: str = "", ylabel: str | None = None
) -> Path:
    """A bar chart PNG of scores with 95% CI error bars and dashed chance levels (matplotlib, Agg).

    See :func:`chart_figure`. Saved with a tight bounding box and a margin, so no title or label is
    clipped.

    Args:
        path: Where to write the PNG.
        bars: The bars.
        title: The title.
        subtitle: A second, smaller line of context (sample, limit, scoring).
        ylabel: Override the axis name of a single-metric chart.
    """
    import matplotlib.pyplot as plt

    fig = chart_figure(bars, title=title, subtitle=subtitle, ylabel=ylabel)
    try:
        return write_atomically(
            path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", pad_inches=0.15)
        )
    finally:
        plt.close(fig)


def write_outputs(
    out_dir: str | Path,
    *,
    results: dict[str, Any],
    markdown: str,
    bars: Sequence[Bar],
    title: str,
    subtitle: str = "",
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
        "plot": bar_chart(out / f"{stem}.png", bars, title=title, subtitle=subtitle),
    }


__all__ = [
    "Bar",
    "bar_chart",
    "chart_figure",
    "markdown_table",
    "write_atomically",
    "write_outputs",
    "write_text",
]
