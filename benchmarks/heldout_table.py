"""The held-out result table of docs/results.md, with paired bootstrap intervals of each difference.

    python benchmarks/heldout_table.py RUNS_DIR [--reference base] [--with-input]

Reads ``RUNS_DIR/heldout-<system>.json`` (written by ``fslm heldout``), prints a markdown table of
ROUGE-L and per-token reference log-likelihood per system with 95% intervals (bootstrap over
records), and each system's difference from the reference system with a paired bootstrap 95% interval
(the same resampled records for both systems). ``--with-input`` keeps only the held-out records with an
``input`` field (context + question, the RAG-like case). Writes
``RUNS_DIR/table-<reference>[-with-input].json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bootstrap_ci  # noqa: E402


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def bootstrap(xs: list[float], ys: list[float] | None = None) -> tuple[float, float]:
    """95% interval of mean(xs), or of mean(xs - ys) with records paired."""
    return bootstrap_ci([xs if ys is None else [x - y for x, y in zip(xs, ys, strict=True)]])


def with_input_only(result: dict[str, Any]) -> dict[str, Any]:
    """The result restricted to the held-out records (seed 0, the first n) that have an ``input``."""
    from langchain_fslm.models import shared_dir
    from langchain_fslm.training.data import load_alpaca, split_heldout

    rows = split_heldout(load_alpaca(shared_dir() / "data" / "alpaca" / "alpaca_5000.json"), 200, 0)[1]
    keep = [i for i, row in enumerate(rows[: result["n"]]) if str(row.get("input") or "").strip()]
    return {
        **result,
        "n": len(keep),
        "rouge_l_per_record": [result["rouge_l_per_record"][i] for i in keep],
        "loglik_per_record": [result["loglik_per_record"][i] for i in keep],
    }


def fmt(row: dict[str, Any], key: str) -> str:
    """``value [lo, hi]`` of one measure, or ``-`` where the row has none."""
    if key not in row:
        return "-"
    lo, hi = row[key + "_ci"]
    return f"{row[key]:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path)
    parser.add_argument("--reference", default="base")
    parser.add_argument("--with-input", action="store_true", help="only records with an input field")
    args = parser.parse_args()

    results = {
        p.stem.removeprefix("heldout-"): json.loads(p.read_text()) for p in args.runs.glob("heldout-*.json")
    }
    results.pop("table", None)
    if args.with_input:
        results = {name: with_input_only(r) for name, r in results.items()}
    ref = results[args.reference]
    out: dict[str, Any] = {}
    delta = f"Δ vs {args.reference} [paired 95% CI]"
    print(f"| system | n | ROUGE-L [95% CI] | {delta} | loglik/token [95% CI] | {delta} |")
    print("|---|---|---|---|---|---|")
    for name, r in sorted(results.items(), key=lambda kv: kv[0] != args.reference):
        rouge, ll = r["rouge_l_per_record"], r["loglik_per_record"]
        both = [i for i, x in enumerate(ll) if x is not None and ref["loglik_per_record"][i] is not None]
        row: dict[str, Any] = {
            "n": r["n"],
            "rouge_l": mean(rouge),
            "rouge_l_ci": bootstrap(rouge),
            "loglik": mean([ll[i] for i in both]),
            "loglik_ci": bootstrap([ll[i] for i in both]),
        }
        if name != args.reference:
            row["rouge_l_diff"] = mean(rouge) - mean(ref["rouge_l_per_record"])
            row["rouge_l_diff_ci"] = bootstrap(rouge, ref["rouge_l_per_record"])
            mine, theirs = [ll[i] for i in both], [ref["loglik_per_record"][i] for i in both]
            row["loglik_diff"] = mean(mine) - mean(theirs)
            row["loglik_diff_ci"] = bootstrap(mine, theirs)
        out[name] = row
        cells = " | ".join(fmt(row, k) for k in ("rouge_l", "rouge_l_diff", "loglik", "loglik_diff"))
        print(f"| {name} | {row['n']} | {cells} |")
    name = f"table-{args.reference}{'-with-input' if args.with_input else ''}.json"
    (args.runs / name).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
