"""acc_norm of ``fslm eval`` results, rescored with lm-eval's rule from the stored log-likelihoods.

    python benchmarks/rescore_acc_norm.py docs/eval-results

Until 2026-11-29 ``fslm eval`` divided each choice's log-likelihood by the length in bytes of the scored
continuation, its leading space included; lm-eval's ``acc_norm`` (and ``fslm eval`` since) divides by the
choice's length in characters, without that space. ``results.json`` keeps every choice's
log-likelihood, so the new rule can be applied without running a model again. For each
``results.json`` under the folder and each task with a stored ``acc_norm``, this prints the old and the
rescored ``acc_norm`` and how many predictions change. Items whose scored text changed too (HellaSwag
endings that start with ``,`` or ``.`` now get lm-eval's space before them) are counted apart and keep
their old prediction: rescoring those needs a new run. Writes ``benchmarks/results/rescore_acc_norm.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import report  # noqa: E402


def old_request(task: str, cont: str, choice: str) -> str:
    """The continuation as scored before 2026-11-29 (HellaSwag: no space before , or .)."""
    if task == "hellaswag" and choice.startswith((",", ".")):
        return choice
    return cont


def rescore(result: dict[str, Any], task: str, items: dict[int, Any]) -> dict[str, Any]:
    """Old and rescored acc_norm of one task of one results file."""
    flipped = changed_text = right = 0
    records = result["items"][task]
    for record in records:
        item = items[record["index"]]
        lls = record["loglikelihoods"]
        pred = record["pred_norm"]
        conts = [cont for _, cont in item.requests]
        if any(old_request(task, c, ch) != c for c, ch in zip(conts, item.choices, strict=True)):
            changed_text += 1
        else:
            norms = [ll / max(1, len(c.removeprefix(" "))) for ll, c in zip(lls, conts, strict=True)]
            new = norms.index(max(norms))
            flipped += new != pred
            pred = new
        right += pred == record["gold"]
    n = len(records)
    return {
        "n": n,
        "old": result["tasks"][task]["acc_norm"],
        "rescored": right / n,
        "flipped": flipped,
        "not_rescored": changed_text,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()

    from langchain_fslm.evaluation.tasks import load_task

    cache: dict[str, dict[int, Any]] = {}
    out: dict[str, Any] = {}
    rows = []
    for path in sorted(args.folder.rglob("results.json")):
        result = json.loads(path.read_text())
        if result.get("kind") != "fslm-eval":
            continue
        for task, summary in result["tasks"].items():
            if "acc_norm" not in summary or not result["items"].get(task):
                continue
            if task not in cache:
                cache[task] = {item.index: item for item in load_task(task, full=True)}
            got = rescore(result, task, cache[task])
            name = f"{path.parent.relative_to(args.folder)} {task}"
            out[name] = got
            headline = " (headline)" if summary["metric"] == "acc_norm" else ""
            value = f"{got['old']:.2f} -> {got['rescored']:.2f}"
            note = f"{got['flipped']} of {got['n']} flipped, {got['not_rescored']} kept{headline}"
            rows.append((name, value, note))
    report("rescore_acc_norm", rows, out)


if __name__ == "__main__":
    main()
