"""Score any lm-eval ``LM`` on the local task suite: requests batched across items and tasks, accuracy + CI.

Items of all tasks are scored in chunks that may span tasks (one ``loglikelihood`` call per chunk, so the
LM batches requests of several tasks together), under one tqdm progress bar that counts items, names the
task(s) being scored and shows tqdm's estimate of the time left.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from langchain_fslm.evaluation.tasks import DEFAULT_SEED, Item, extract_number, load_task, task_spec

Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); ``(0, 0)`` for ``n == 0``."""
    if n == 0:
        return 0.0, 0.0
    if correct == 0:
        return 0.0, z * z / (n + z * z)
    if correct == n:
        return n / (n + z * z), 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _instances(items: Sequence[Item]) -> tuple[list[Any], list[tuple[int, int]]]:
    from lm_eval.api.instance import Instance

    instances: list[Any] = []
    owners: list[tuple[int, int]] = []
    for i, item in enumerate(items):
        if item.is_generation:
            gen_kwargs = {"until": list(item.until), "max_gen_toks": 256, "do_sample": False}
            instances.append(Instance("generate_until", {}, (item.prompt, gen_kwargs), len(instances)))
            owners.append((i, 0))
        else:
            for j, (context, continuation) in enumerate(item.requests):
                instances.append(Instance("loglikelihood", {}, (context, continuation), len(instances)))
                owners.append((i, j))
    return instances, owners


def _call(method: Callable[..., list[Any]], requests: list[Any]) -> list[Any]:
    """Call an lm-eval ``LM`` method without its own progress bar where it takes ``disable_tqdm``."""
    try:
        takes = "disable_tqdm" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        takes = False
    return method(requests, disable_tqdm=True) if takes else method(requests)


def score_items(lm: Any, items: Sequence[Item]) -> list[dict[str, Any]]:
    """Ask ``lm`` (an lm-eval ``LM``) for every item's requests and mark each item right or wrong.

    Multiple-choice items: ``pred`` is the choice of highest log-likelihood (``acc``), ``pred_norm`` of
    highest log-likelihood per character of the choice (``acc_norm``), as lm-eval computes them.
    Generation items: the answer read by lm-eval's gsm8k ``flexible-extract`` filter (the last number)
    must equal the target (``exact_match``); ``pred_strict`` / ``correct_strict`` are its ``strict-match``
    filter (the first ``#### N``).
    An item the LM scored despite an error (kept by request context in the LM's ``failures``, as
    :class:`~langchain_fslm.evaluation.lm_eval_model.FSLMLM` keeps them) gets that ``error`` too.

    Returns:
        One record per item.
    """
    instances, owners = _instances(items)
    mc = [k for k, inst in enumerate(instances) if inst.request_type == "loglikelihood"]
    gen = [k for k, inst in enumerate(instances) if inst.request_type == "generate_until"]
    responses: dict[int, Any] = {}
    if mc:
        for k, resp in zip(mc, _call(lm.loglikelihood, [instances[k] for k in mc]), strict=True):
            responses[k] = resp
    if gen:
        for k, resp in zip(gen, _call(lm.generate_until, [instances[k] for k in gen]), strict=True):
            responses[k] = resp
    per_item: dict[int, dict[int, Any]] = {}
    for k, (i, j) in enumerate(owners):
        per_item.setdefault(i, {})[j] = responses[k]
    records: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        got = per_item[i]
        if item.is_generation:
            output = str(got[0])
            answer, strict = extract_number(output), extract_number(output, strict=True)
            records.append(
                {
                    "index": item.index,
                    "gold": item.gold,
                    "pred": answer,
                    "pred_strict": strict,
                    "correct": answer == item.gold,
                    "correct_strict": strict == item.gold,
                    "output": output,
                }
            )
            continue
        lls = [float(got[j][0]) for j in range(len(item.choices))]
        # lm-eval's acc_norm: log-likelihood over the length in characters of the choice as scored,
        # without the target delimiter (the leading space) that lm-eval puts before it
        norms = [
            ll / max(1, len(cont.removeprefix(" "))) for ll, (_, cont) in zip(lls, item.requests, strict=True)
        ]
        pred, pred_norm = lls.index(max(lls)), norms.index(max(norms))
        records.append(
            {
                "index": item.index,
                "gold": item.gold,
                "pred": pred,
                "pred_norm": pred_norm,
                "correct": pred == item.gold,
                "correct_norm": pred_norm == item.gold,
                "loglikelihoods": [round(x, 4) for x in lls],
            }
        )
    failures: dict[str, str] = getattr(lm, "failures", {})
    for item, record in zip(items, records, strict=True):
        contexts = [item.prompt] if item.is_generation else [c for c, _ in item.requests]
        errors = [failures[c] for c in dict.fromkeys(contexts) if c in failures]
        if errors:
            record["error"] = "; ".join(errors)
    return records


def summarise(task: str, records: Sequence[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Accuracy (headline metric), its 95% Wilson interval, and the other metrics of one task."""
    spec = task_spec(task)
    n = len(records)
    acc = sum(r["correct"] for r in records)
    metrics: dict[str, Any] = {
        "acc" if spec.kind == "multiple_choice" else "exact_match": acc / n if n else 0.0
    }
    if spec.kind == "multiple_choice":
        metrics["acc_norm"] = sum(r["correct_norm"] for r in records) / n if n else 0.0
    else:
        metrics["exact_match_strict"] = sum(r["correct_strict"] for r in records) / n if n else 0.0
    hits = acc if spec.metric in ("acc", "exact_match") else sum(r["correct_norm"] for r in records)
    low, high = wilson_interval(hits, n)
    return {
        "metric": spec.metric,
        "score": hits / n if n else 0.0,
        "ci95": [low, high],
        "n": n,
        "failed": sum("error" in r for r in records),
        "chance": spec.chance,
        "seconds": round(seconds, 2),
        "note": spec.note,
        **metrics,
    }


def _chunks(work: Sequence[tuple[str, Item]], size: int) -> list[list[tuple[str, Item]]]:
    """Consecutive chunks of ``size`` items, generation items apart from log-likelihood ones.

    A chunk may span tasks of the same kind (their requests go to the LM together).
    """
    chunks: list[list[tuple[str, Item]]] = []
    for generation in (False, True):
        rows = [w for w in work if w[1].is_generation == generation]
        chunks += [rows[start : start + size] for start in range(0, len(rows), size)]
    return chunks


def evaluate(
    lm: Any,
    tasks: Sequence[str],
    *,
    limit: int | None = None,
    full: bool = False,
    seed: int = DEFAULT_SEED,
    chunk_items: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score an lm-eval ``LM`` on tasks of the local suite.

    Args:
        lm: Any ``lm_eval.api.model.LM`` (e.g. :class:`~langchain_fslm.evaluation.lm_eval_model.FSLMLM`).
        tasks: Task names.
        limit: Items per task (the first ``limit`` of the seeded sample).
        full: Use every item instead of the 100-item sample.
        seed: Sample seed.
        chunk_items: Items per call to the LM (chunks span tasks; default: twice the LM's
            ``batch_size``, or 16). Larger chunks batch more, smaller ones update the progress more often.
        progress: Show the progress bar (tqdm, on stderr): items done of all tasks, the task(s)
            being scored, elapsed time and tqdm's estimate of the time left.

    Returns:
        ``{"tasks": {name: summary}, "items": {name: records}}``. A task's ``seconds`` is its share
        (by items) of the chunks it was scored in.
    """
    for name in tasks:
        task_spec(name)  # fail on a bad name before any model work
    chosen = {name: load_task(name, full=full, limit=limit, seed=seed) for name in tasks}
    work = [(name, item) for name in tasks for item in chosen[name]]
    size = chunk_items or 2 * int(getattr(lm, "batch_size", 8) or 8)
    records: dict[tuple[str, int], dict[str, Any]] = {}
    seconds = dict.fromkeys(tasks, 0.0)
    bar = tqdm(total=len(work), unit="item", desc="fslm eval", disable=not progress, dynamic_ncols=True)
    try:
        for chunk in _chunks(work, max(1, size)):
            names = list(dict.fromkeys(name for name, _ in chunk))
            bar.set_description("fslm eval " + "+".join(names))
            start = time.perf_counter()
            scored = score_items(lm, [item for _, item in chunk])
            share = (time.perf_counter() - start) / len(chunk)
            for (name, item), record in zip(chunk, scored, strict=True):
                records[name, item.index] = record
                seconds[name] += share
            bar.update(len(chunk))
    finally:
        bar.close()
    items = {name: [records[name, item.index] for item in chosen[name]] for name in tasks}
    summaries = {name: summarise(name, items[name], seconds[name]) for name in tasks}
    return {"tasks": summaries, "items": items}


__all__ = ["evaluate", "score_items", "summarise", "wilson_interval"]
