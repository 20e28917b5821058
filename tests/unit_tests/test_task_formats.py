"""The local tasks' requests match lm-eval 0.4.13's own task definitions (its YAML, utils and prompt code).

Each test rebuilds the staged items in the Hugging Face schema that lm-eval's task expects, builds the
task from lm-eval's YAML (``!function`` utils included) over those docs, and asks it for its zero-shot
requests; our loader must give the same ``(context, continuation)`` pairs and gold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from langchain_fslm.evaluation.tasks import benchmarks_dir, load_task

pytest.importorskip("lm_eval")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def lm_eval_task(yaml: str, docs: list[dict[str, Any]]) -> Any:
    """lm-eval's task ``tasks/<yaml>`` over in-memory ``docs`` (every split it names gets them)."""
    import datasets
    import lm_eval.tasks
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(Path(lm_eval.tasks.__file__).parent / yaml)
    config.pop("tag", None)
    splits = {config.get(k) for k in ("test_split", "validation_split", "training_split", "fewshot_split")}
    data = datasets.DatasetDict({s: datasets.Dataset.from_list(docs) for s in splits if s})
    config["custom_dataset"] = lambda **_: data
    return ConfigurableTask(config=config)


def lm_eval_requests(task: Any, doc: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """lm-eval's zero-shot log-likelihood requests of one doc."""
    return tuple(inst.args for inst in task.construct_requests(doc, task.fewshot_context(doc, 0)))


def staged(relative: str) -> list[dict[str, Any]]:
    """The rows of a staged benchmark file."""
    path = benchmarks_dir() / relative
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["arc_easy", "arc_challenge"])
def test_arc_requests_are_lm_evals(name):
    docs = [
        {
            "question": r["centerpiece"],
            "choices": {"text": r["options"], "label": list(LETTERS[: len(r["options"])])},
            "answerKey": LETTERS[r["correct_options_idx"][0]],
        }
        for r in staged(f"{name}/test.jsonl")
    ]
    task = lm_eval_task("arc/arc_easy.yaml", docs)
    assert task.config.num_fewshot in (None, 0)  # lm-eval's arc is zero-shot; tinyArc is 25-shot
    for item in load_task(name):  # the seeded sample (lm-eval renders a Jinja template per call: slow)
        doc = docs[item.index]
        assert item.requests == lm_eval_requests(task, doc)
        assert item.gold == task.doc_to_target(doc)


def test_mmlu_requests_are_lm_evals_with_the_subject_header():
    subjects = sorted(p.stem for p in (benchmarks_dir() / "mmlu" / "test").glob("*.jsonl"))
    assert len(subjects) == 57
    docs = [
        (
            subject,
            {"question": r["centerpiece"], "choices": r["options"], "answer": r["correct_options_idx"][0]},
        )
        for subject in subjects
        for r in staged(f"mmlu/test/{subject}.jsonl")
    ]
    items = load_task("mmlu", full=True)
    assert len(items) == len(docs)
    firsts = {subject: i for i, (subject, _) in reversed(list(enumerate(docs)))}
    for index in sorted({item.index for item in load_task("mmlu")} | set(firsts.values())):
        subject, doc = docs[index]
        task = lm_eval_task(f"mmlu/default/mmlu_{subject}.yaml", [doc])
        assert items[index].requests == lm_eval_requests(task, doc), subject
        assert items[index].gold == task.doc_to_target(doc)


def test_winogrande_requests_are_lm_evals_partial_evaluation():
    docs = [
        {
            "sentence": r["centerpiece"],
            "option1": r["options"][0],
            "option2": r["options"][1],
            "answer": str(r["correct_options_idx"][0] + 1),
        }
        for r in staged("winogrande/validation.jsonl")
    ]
    task = lm_eval_task("winogrande/default.yaml", docs)
    for item, doc in zip(load_task("winogrande", full=True), docs, strict=True):
        assert item.requests == lm_eval_requests(task, doc)
        assert item.gold == task.doc_to_text(doc)  # lm-eval's gold for its multiple-input tasks


def test_truthfulqa_mc1_requests_are_lm_evals_with_its_qa_preamble():
    rows = staged("truthfulqa/mc1.jsonl")
    docs = [
        {
            "question": r["centerpiece"],
            "mc1_targets": {"choices": r["options"], "labels": [1] + [0] * (len(r["options"]) - 1)},
        }
        for r in rows
    ]
    task = lm_eval_task("truthfulqa/truthfulqa_mc1.yaml", docs)
    for item in load_task("truthfulqa_mc1"):
        doc = docs[item.index]
        expected = dict(zip(doc["mc1_targets"]["choices"], lm_eval_requests(task, doc), strict=True))
        # the same requests; ours are in the item's shuffled order (lm-eval keeps the gold first)
        assert item.requests == tuple(expected[c] for c in item.choices)
        assert item.choices[item.gold] == doc["mc1_targets"]["choices"][task.doc_to_target(doc)]
        assert item.requests[0][0].startswith("Q: What is human life expectancy in the United States?\n")


def test_hellaswag_text_is_cleaned_by_lm_evals_preprocess(tmp_path):
    from lm_eval.tasks.hellaswag.utils import preprocess

    wikihow = {  # a WikiHow-style row: lm-eval drops [header]/[step] markers and halves double spaces
        "centerpiece": "[header] How to wash a car [title] Rinse the car.  [step] Use a hose",
        "options": [" [substeps] Soap it  well.", "Dry it. [title] Wax it.", "Park it.", "Sell it."],
        "correct_options_idx": [0],
    }
    staged_rows = staged("hellaswag/train_first100.jsonl")
    (tmp_path / "hellaswag").mkdir()
    text = "".join(json.dumps(r) + "\n" for r in [wikihow, *staged_rows])
    (tmp_path / "hellaswag" / "train_first100.jsonl").write_text(text)
    items = load_task("hellaswag", full=True, root=tmp_path)
    for item, row in zip(items, [wikihow, *staged_rows], strict=True):
        # lm-eval's query is preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()); the staged
        # rows have only the joined ctx, so the label and the capital are missing (docs/evaluation.md)
        context, choices = preprocess(row["centerpiece"]), [preprocess(o) for o in row["options"]]
        assert item.requests == tuple((context, f" {c}") for c in choices)
        assert item.choices == tuple(choices) and item.gold == row["correct_options_idx"][0]


def gsm8k_task() -> tuple[Any, list[dict[str, Any]]]:
    docs = [{"question": r["question"], "answer": r["answer"]} for r in staged("gsm8k/test.jsonl")]
    return lm_eval_task("gsm8k/gsm8k.yaml", docs), docs


def test_gsm8k_prompt_and_stop_strings_are_lm_evals():
    task, docs = gsm8k_task()
    assert task.config.num_fewshot == 5  # lm-eval's default (and tinyGSM8k's); ours is zero-shot (docs)
    for item in load_task("gsm8k"):
        doc = docs[item.index]
        prompt, generation_kwargs = task.construct_requests(doc, task.fewshot_context(doc, 0)).args
        assert (item.prompt, item.until) == (prompt, tuple(generation_kwargs["until"]))
        assert task.process_results(doc, [item.gold])["exact_match"] == 1  # gold normalised as lm-eval


def test_gsm8k_answer_is_read_as_lm_evals_flexible_extract_and_strict_match_filters():
    from lm_eval.filters.extraction import RegexFilter

    from langchain_fslm.evaluation.tasks import extract_number

    task, docs = gsm8k_task()
    filters = {f["name"]: f["filter"][0] for f in task.config.filter_list}
    assert filters["flexible-extract"] == {
        "function": "regex",
        "group_select": -1,
        "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)",
    }
    outputs = [
        "3. The answer is: unknown",
        "Each costs $2, so {g} in all. The answer is {g}.",
        "The answer is {g}.\nCheck: {g} - 1 = 9",
        "#### {g}\nThat was easy, 5 minutes.",
        "She pays ${g},000.00 in the end",
        "so 3 + 4 = 7. The answer is 1,234.",
        "It is -{g}",
        "{g}.0",
        "I am not sure...",
        "no number",
        "",
    ]
    for item in load_task("gsm8k", full=True)[:3]:
        doc = docs[item.index]
        for template in outputs:
            output = template.format(g=item.gold)
            for name, strict in (("flexible-extract", False), ("strict-match", True)):
                regex = RegexFilter(**{k: v for k, v in filters[name].items() if k != "function"})
                [[filtered]] = regex.apply([[output]], [doc])
                right = bool(task.process_results(doc, [filtered])["exact_match"])
                assert (extract_number(output, strict=strict) == item.gold) == right, (output, name)


def test_runner_scores_gsm8k_with_both_lm_eval_filters():
    from langchain_fslm.evaluation.runner import score_items, summarise

    class Says:
        def generate_until(self, requests):
            return ["#### 5\nSo 18 in all.", "3. The answer is: unknown"]

    every = load_task("gsm8k", full=True)
    items = [next(item for item in every if item.gold == gold) for gold in ("18", "3")]
    records = score_items(Says(), items)
    assert [(r["pred"], r["pred_strict"]) for r in records] == [("18", "5"), ("3", None)]
    summary = summarise("gsm8k", records, 0.0)
    assert (summary["exact_match"], summary["exact_match_strict"]) == (1.0, 0.0)
