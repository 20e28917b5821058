"""``fslm eval`` speed: the README's 60-item run on the old request path and on the batched one.

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/eval_speed.py [--limit 10] [--upstream-max-new-tokens 16]

The default zero-shot four-stage stack on SmolLM2-135M, ``--scoring stack``, six multiple-choice tasks,
``--limit 10`` (60 items), upstream stages capped at 16 new tokens, as ``fslm eval --limit 10
--upstream-max-new-tokens 16`` runs them. After one warm-up item (the first call compiles the stages'
grammars and warms torch), in one process:

* **before**: the old path's settings: one task at a time, the upstream stages on 8 contexts per batch,
  every ``context + choice`` row scored from scratch (``shared_contexts=False``);
* **after**: the defaults: items of all tasks in chunks, the upstream stages on up to 32 contexts per
  batch, each scored context run once with its KV cache reused for every choice.

Reports wall time of each, the time in the upstream stages and in scoring, the speed-up, and whether the
two give the same per-item predictions and log-likelihoods (within 1e-4). Writes
``benchmarks/results/eval_speed.json`` (with each way's per-item predictions). ``--reuse-before`` takes
the before figures and predictions from that file and runs only the after way (the JSON says so).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, machine, report  # noqa: E402

TASKS = ["arc_easy", "arc_challenge", "mmlu", "winogrande", "truthfulqa_mc1", "hellaswag"]


class Timed:
    """Wall time spent in the upstream stages and in scoring of one ``FSLMLM``."""

    def __init__(self, lm: Any) -> None:
        self.upstream = self.scoring = 0.0
        upstream, score = lm.upstream_states, lm.score

        def timed_upstream(contexts: Any) -> Any:
            start = time.perf_counter()
            try:
                return upstream(contexts)
            finally:
                self.upstream += time.perf_counter() - start

        def timed_score(pairs: Any) -> Any:
            start, before = time.perf_counter(), self.upstream
            try:
                return score(pairs)
            finally:  # scoring time without the upstream stages it ran
                self.scoring += time.perf_counter() - start - (self.upstream - before)

        lm.upstream_states, lm.score = timed_upstream, timed_score


def run(way: str, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """One way over the tasks: its timings and its results."""
    from langchain_fslm.evaluation import FSLMLM, evaluate

    old = way == "before"
    lm = FSLMLM(
        scoring="stack",
        batch_size=8,
        upstream_max_new_tokens=args.upstream_max_new_tokens,
        upstream_batch_size=8 if old else 32,
        shared_contexts=not old,
    )
    timed = Timed(lm)
    start = time.perf_counter()
    if old:  # one task at a time, all its requests in one call, as the old runner did
        results: dict[str, Any] = {"tasks": {}, "items": {}}
        for task in args.tasks:
            one = evaluate(lm, [task], limit=args.limit, chunk_items=10**6, progress=False)
            results["tasks"].update(one["tasks"])
            results["items"].update(one["items"])
    else:
        results = evaluate(lm, args.tasks, limit=args.limit)
    wall = time.perf_counter() - start
    timing = {
        "wall_s": round(wall, 1),
        "upstream_s": round(timed.upstream, 1),
        "scoring_s": round(timed.scoring, 1),
    }
    return timing, results


def predictions(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per task, each item's predictions and log-likelihoods."""
    keep = ("index", "pred", "pred_norm", "loglikelihoods")
    return {task: [{k: r[k] for k in keep} for r in records] for task, records in results["items"].items()}


def same_scores(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, float]:
    """Whether two runs predict the same for every item, and the largest log-likelihood difference."""
    same, worst = True, 0.0
    for task, records in a.items():
        for x, y in zip(records, b[task], strict=True):
            same = same and (x["pred"], x["pred_norm"]) == (y["pred"], y["pred_norm"])
            worst = max(
                [worst, *(abs(p - q) for p, q in zip(x["loglikelihoods"], y["loglikelihoods"], strict=True))]
            )
    return same and worst <= 1.5e-4, worst  # the records keep 4 decimals: 1e-4 is one rounding step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--upstream-max-new-tokens", type=int, default=16)
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=TASKS)
    parser.add_argument("--reuse-before", action="store_true", help="before from the last results file")
    args = parser.parse_args()

    from langchain_fslm.evaluation import FSLMLM, evaluate

    out: dict[str, Any] = {"machine": machine(), "settings": vars(args)}
    warm = FSLMLM(scoring="stack", upstream_max_new_tokens=args.upstream_max_new_tokens)
    start = time.perf_counter()
    evaluate(warm, args.tasks[:1], limit=1, progress=False)
    out["warm_up_s"] = round(time.perf_counter() - start, 1)
    previous = json.loads((RESULTS_DIR / "eval_speed.json").read_text()) if args.reuse_before else {}
    if previous:
        assert previous["settings"]["limit"] == args.limit and previous["settings"]["tasks"] == args.tasks
        out["before"] = {**previous["before"], "reused_from": previous["machine"]["time"]}
        out["predictions"] = {"before": previous.get("predictions", {}).get("before")}
    else:
        out["predictions"] = {}
    for way in ("after",) if previous else ("before", "after"):
        out[way], results = run(way, args)
        out["predictions"][way] = predictions(results)
        print(way, out[way], f"load {os.getloadavg()[0]:.1f}", flush=True)
    out["speedup"] = round(out["before"]["wall_s"] / out["after"]["wall_s"], 2)
    if out["predictions"]["before"] is not None:
        out["same_scores"], out["max_loglikelihood_diff"] = same_scores(
            out["predictions"]["before"], out["predictions"]["after"]
        )
    else:  # a reused file from before predictions were kept: the comparison is that run's
        out["same_scores"] = previous.get("same_scores")
        out["max_loglikelihood_diff"] = previous.get("max_loglikelihood_diff")
        out["same_scores_from"] = "the reused run (its after way, before length buckets)"
    out["scores"] = {task: t["score"] for task, t in results["tasks"].items()}
    out["load_avg_at_end"] = os.getloadavg()[0]
    items = sum(len(r) for r in results["items"].values())
    rows = [
        (f"items ({len(args.tasks)} tasks, --limit {args.limit})", str(items), ""),
        ("warm-up, 1 item (s)", f"{out['warm_up_s']:.1f}", ""),
        *(
            (
                f"{way}: wall / upstream / scoring (s)",
                f"{t['wall_s']:.0f} / {t['upstream_s']:.0f} / {t['scoring_s']:.0f}",
                "",
            )
            for way, t in ((w, out[w]) for w in ("before", "after"))
        ),
        ("speed-up (wall)", f"{out['speedup']:.2f}x", ">= 4x"),
        ("same predictions, log-likelihoods within 1e-4", str(out["same_scores"]), "True"),
    ]
    report("eval_speed", rows, out)


if __name__ == "__main__":
    main()
