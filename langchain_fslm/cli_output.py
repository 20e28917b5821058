"""How ``fslm`` commands end: a short table for people, or the full result as JSON (``--json``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import typer

JsonOpt = typer.Option("--json", help="Print the full result as JSON instead of a summary table.")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as a plain aligned text table (numbers right-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def finish(summary: str, result: Any, as_json: bool) -> None:
    """Print the summary (people) or ``result`` as one JSON document (machines)."""
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        typer.echo(summary)


def mean_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95% interval (the interval is the mean alone for n < 2)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
