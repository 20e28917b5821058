"""Export the local suite as lm-eval YAML tasks over local JSON files, for ``lm_eval``/``simple_evaluate``.

``write_lm_eval_tasks(folder)`` writes ``fslm_<task>.jsonl`` (the seeded sample, or every item) and
``fslm_<task>.yaml`` (``dataset_path: json`` with ``data_files``) per single-context multiple-choice task,
then::

    python -m langchain_fslm.evaluation --model fslm --model_args stack=DIR \
        --include_path FOLDER --tasks fslm_arc_easy,fslm_mmlu

The requests are the same ``(context, continuation)`` pairs as the built-in runner (``fslm eval``), so
both give the same accuracy. Winogrande (one context per option) and GSM8K (generation) are left to
``fslm eval``. Where the hub is reachable, lm-eval's official ``tinyArc``, ``tinyMMLU``, ... tasks run
with ``--model fslm`` unchanged (they need the hub datasets and the tinyBenchmarks package).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from langchain_fslm.evaluation.report import write_text
from langchain_fslm.evaluation.tasks import DEFAULT_SEED, TaskError, load_task, task_spec

EXPORTABLE = ("arc_easy", "arc_challenge", "mmlu", "truthfulqa_mc1", "hellaswag")


def write_lm_eval_tasks(
    folder: str | Path,
    tasks: Sequence[str] = EXPORTABLE,
    *,
    full: bool = False,
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
) -> Path:
    """Write lm-eval task YAMLs (and their JSONL data) for tasks of the local suite.

    Args:
        folder: Output folder (pass it to lm-eval as ``include_path``).
        tasks: Task names among :data:`EXPORTABLE`.
        full: Every item instead of the seeded 100-item sample.
        limit: First ``limit`` items only.
        seed: Sample seed.

    Returns:
        The folder.

    Raises:
        TaskError: For a task that cannot be exported.
    """
    out = Path(folder).resolve()
    for name in tasks:
        task_spec(name)
        if name not in EXPORTABLE:
            raise TaskError(f"Task {name!r} cannot be exported to lm-eval YAML; exportable: {EXPORTABLE}")
        rows = []
        for item in load_task(name, full=full, limit=limit, seed=seed):
            contexts = {c for c, _ in item.requests}
            rows.append(
                {
                    "context": contexts.pop(),
                    # every exportable request is context + " " + choice: lm-eval's own delimiter,
                    # so lm-eval's acc_norm divides by the choice's length as ``fslm eval`` does
                    "choices": [cont.removeprefix(" ") for _, cont in item.requests],
                    "gold": item.gold,
                    "index": item.index,
                }
            )
        data = out / f"fslm_{name}.jsonl"
        write_text(data, "".join(json.dumps(r) + "\n" for r in rows))
        config = {
            "task": f"fslm_{name}",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "output_type": "multiple_choice",
            "test_split": "test",
            "doc_to_text": "{{context}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{gold}}",
            "target_delimiter": " ",
            "metric_list": [
                {"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")
            ],
            "metadata": {"version": 1.0, "note": "seeded sample of local files, not official tinyBenchmarks"},
        }
        write_text(out / f"fslm_{name}.yaml", yaml.safe_dump(config, sort_keys=False))
    return out


__all__ = ["EXPORTABLE", "write_lm_eval_tasks"]
