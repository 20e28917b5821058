"""The 100-item suite table of docs/results.md: every system side by side, with paired differences.

    python benchmarks/suite_table.py runs/suite100 [--reference base-chat]

Reads ``<dir>/<system>/results.json`` (written by ``fslm eval``), prints a markdown table of each task's
score per system (the task's own metric: acc or acc_norm), the mean over tasks, and each system's
difference from the reference system in that mean with a paired bootstrap 95% interval (the same
resampled items of every task for both systems). Writes ``<dir>/table.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bootstrap_ci  # noqa: E402


def correct(result: dict[str, Any], task: str) -> list[float]:
    """Per item, 1.0 where the task's metric counts it right."""
    key = "correct_norm" if result["tasks"][task]["metric"] == "acc_norm" else "correct"
    return [float(item[key]) for item in result["items"][task]]


def paired_diff_ci(mine: dict[str, list[float]], ref: dict[str, list[float]]) -> tuple[float, float]:
    """95% interval of the difference in mean-over-tasks accuracy, items resampled within each task."""
    return bootstrap_ci([[a - b for a, b in zip(mine[t], ref[t], strict=True)] for t in mine])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--reference", default="base-chat")
    args = parser.parse_args()

    results = {p.parent.name: json.loads(p.read_text()) for p in sorted(args.folder.glob("*/results.json"))}
    tasks = list(next(iter(results.values()))["tasks"])
    scores = {name: {t: correct(r, t) for t in tasks if t in r["tasks"]} for name, r in results.items()}
    ref = scores.get(args.reference)
    out: dict[str, Any] = {}
    print("| system | " + " | ".join(tasks) + f" | mean | Δ mean vs {args.reference} [paired 95% CI] |")
    print("|---" * (len(tasks) + 3) + "|")
    for name, per_task in scores.items():
        if set(per_task) != set(tasks):
            print(f"<!-- {name}: incomplete, skipped -->")
            continue
        means = {t: sum(v) / len(v) for t, v in per_task.items()}
        overall = sum(means.values()) / len(means)
        row: dict[str, Any] = {"tasks": means, "mean": overall}
        delta = ""
        if ref is not None and name != args.reference:
            lo, hi = paired_diff_ci(per_task, ref)
            row["diff"] = overall - sum(sum(v) / len(v) for v in ref.values()) / len(ref)
            row["diff_ci"] = [lo, hi]
            delta = f"{row['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        out[name] = row
        cells = " | ".join(f"{means[t]:.2f}" for t in tasks)
        print(f"| {name} | {cells} | {overall:.3f} | {delta} |")
    (args.folder / "table.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
