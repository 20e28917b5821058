"""The local benchmark suite, built offline from ``../shared/data/benchmarks`` (see its README).

Seven tasks, in the lm-eval style of each benchmark (same prompts and log-likelihood requests as the
harness's zero-shot tasks, as close as the staged files allow; ``tests/unit_tests/test_task_formats.py``
checks them against lm-eval's own task code, and ``docs/evaluation.md`` lists what still differs):

* multiple choice, scored by log-likelihood: ``arc_easy``, ``arc_challenge``, ``mmlu``, ``winogrande``,
  ``truthfulqa_mc1``, ``hellaswag``;
* generation, scored by exact match on the final number: ``gsm8k``.

By default each task is a **seeded 100-item sample** of the staged file, in the spirit of tinyBenchmarks.
These are NOT the official tinyBenchmarks subsets and no IRT weights are applied (neither is available
offline); the scores are plain accuracy on the sample. ``full=True`` uses every item. HellaSwag has only
100 items here, from the *train* split (the validation set could not be staged).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from langchain_fslm.errors import FSLMError
from langchain_fslm.models import shared_dir

BENCHMARKS_DIR = "data/benchmarks"
SAMPLE_SIZE = 100
DEFAULT_SEED = 1234
SAMPLE_NOTE = (
    "Seeded {n}-item samples of the staged benchmark files (seed {seed}); NOT the official tinyBenchmarks "
    "subsets, and no IRT weighting (neither is available offline): plain accuracy on the sample."
)


class TaskError(FSLMError):
    """A task name is unknown or its data file is missing or malformed."""


@dataclass(frozen=True)
class Item:
    """One benchmark question.

    Attributes:
        task: Task name.
        index: Position of the item in the task's full item list (stable across runs).
        question: The question as plain text (for QA chains; choices are listed separately).
        choices: Answer options in the order they are scored (TruthfulQA shuffled with the seed).
        gold: Index of the correct choice, or the target answer text for generation tasks.
        requests: ``(context, continuation)`` per choice, for log-likelihood scoring (lm-eval style).
        prompt: The generation prompt (generation tasks only).
        until: Stop sequences for generation tasks.
    """

    task: str
    index: int
    question: str
    choices: tuple[str, ...]
    gold: int | str
    requests: tuple[tuple[str, str], ...] = ()
    prompt: str = ""
    until: tuple[str, ...] = ()

    @property
    def is_generation(self) -> bool:
        """Whether the item is answered by generating text (not by choosing an option)."""
        return not self.choices


@dataclass(frozen=True)
class TaskSpec:
    """A task of the suite.

    Attributes:
        name: Task name.
        kind: ``multiple_choice`` (log-likelihood) or ``generate``.
        metric: The headline metric (``acc``, ``acc_norm`` or ``exact_match``).
        chance: Expected accuracy of random guessing (for plots and sanity checks).
        load: Function returning every item of the task, in file order.
        note: Caveats worth printing beside the numbers.
    """

    name: str
    kind: Literal["multiple_choice", "generate"]
    metric: str
    chance: float
    load: Callable[[Path], list[Item]] = field(repr=False)
    note: str = ""


def benchmarks_dir() -> Path:
    """The staged benchmarks folder (``$FSLM_SHARED_DIR/data/benchmarks`` or ``../shared/...``)."""
    return shared_dir() / BENCHMARKS_DIR


def _read_jsonl(path: Path) -> Iterator[dict]:
    if not path.is_file():
        raise TaskError(f"Benchmark file not found: {path} (set FSLM_SHARED_DIR to the shared folder).")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise TaskError(f"{path}:{n}: not valid JSON ({err})") from err


def _gold_index(row: dict, path: Path) -> int:
    try:
        return int(row["correct_options_idx"][0])
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise TaskError(f"{path}: a row lacks correct_options_idx ({err})") from err


def _arc(folder: str, name: str) -> Callable[[Path], list[Item]]:
    def load(root: Path) -> list[Item]:
        path = root / folder / "test.jsonl"
        items = []
        for i, row in enumerate(_read_jsonl(path)):
            question, options = row["centerpiece"], tuple(row["options"])
            context = f"Question: {question}\nAnswer:"
            requests = tuple((context, f" {o}") for o in options)
            items.append(Item(name, i, question, options, _gold_index(row, path), requests))
        return items

    return load


def _mmlu(root: Path) -> list[Item]:
    folder = root / "mmlu" / "test"
    if not folder.is_dir():
        raise TaskError(f"MMLU folder not found: {folder}")
    items: list[Item] = []
    for path in sorted(folder.glob("*.jsonl")):
        subject = path.stem.replace("_", " ")
        for row in _read_jsonl(path):
            options = tuple(row["options"])
            letters = "ABCD"[: len(options)]
            listed = "\n".join(f"{letter}. {o}" for letter, o in zip(letters, options, strict=True))
            context = (
                f"The following are multiple choice questions (with answers) about {subject}.\n\n"
                f"{row['centerpiece'].strip()}\n{listed}\nAnswer:"
            )
            requests = tuple((context, f" {letter}") for letter in letters)
            items.append(
                Item(
                    "mmlu", len(items), row["centerpiece"].strip(), options, _gold_index(row, path), requests
                )
            )
    return items


TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)
"""The fixed six-example QA prompt that lm-eval's ``truthfulqa_mc1`` puts before every question."""


def _truthfulqa(root: Path) -> list[Item]:
    path = root / "truthfulqa" / "mc1.jsonl"
    items = []
    for i, row in enumerate(_read_jsonl(path)):
        options = list(row["options"])
        gold_text = options[_gold_index(row, path)]  # always index 0 in the file
        random.Random(f"truthfulqa-{i}").shuffle(options)  # so position carries no signal
        question = row["centerpiece"]
        context = f"{TRUTHFULQA_PREAMBLE}\n\nQ: {question}\nA:"
        requests = tuple((context, f" {o}") for o in options)
        items.append(Item("truthfulqa_mc1", i, question, tuple(options), options.index(gold_text), requests))
    return items


def _winogrande(root: Path) -> list[Item]:
    path = root / "winogrande" / "validation.jsonl"
    items = []
    for i, row in enumerate(_read_jsonl(path)):
        sentence = row["centerpiece"]
        blank = sentence.index("_")
        rest = " " + sentence[blank + 1 :].strip()
        options = tuple(row["options"])
        # lm-eval "partial evaluation": each option fills the blank, the rest of the sentence is scored
        requests = tuple((sentence[:blank] + o, rest) for o in options)
        items.append(Item("winogrande", i, sentence, options, _gold_index(row, path), requests))
    return items


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text cleaning (``tasks/hellaswag/utils.py``), quirks included.

    Strips, turns WikiHow's `` [title]`` into ``". "``, drops the other ``[...]`` markers and replaces each
    double space by one (once, so a triple space keeps two).
    """
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(root: Path) -> list[Item]:
    path = root / "hellaswag" / "train_first100.jsonl"
    items = []
    for i, row in enumerate(_read_jsonl(path)):
        # lm-eval cleans activity_label + ": " + ctx_a + " " + ctx_b.capitalize(); the staged file has
        # only the joined ctx (no label, no ctx_a/ctx_b split), so the label and the capital are missing
        context = hellaswag_preprocess(row["centerpiece"])
        options = tuple(hellaswag_preprocess(o) for o in row["options"])
        requests = tuple((context, f" {o}") for o in options)  # lm-eval: always the " " delimiter
        items.append(Item("hellaswag", i, context, options, _gold_index(row, path), requests))
    return items


GSM8K_UNTIL = ("Question:", "</s>", "<|im_end|>")
"""Stop strings of lm-eval's gsm8k task (``generation_kwargs.until`` of ``gsm8k.yaml``)."""
GSM8K_STRICT = r"#### (\-?[0-9\.\,]+)"
"""lm-eval's ``strict-match`` filter: the first ``#### N``."""
GSM8K_FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
"""lm-eval's ``flexible-extract`` filter: the last number-like match."""
GSM8K_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")
"""``regexes_to_ignore`` of lm-eval's gsm8k ``exact_match`` (applied in order, then lower-cased)."""


def _gsm8k_normalise(text: str) -> str:
    for pattern in GSM8K_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def gsm8k_target(answer: str) -> str:
    """A GSM8K rationale as lm-eval's ``exact_match`` compares it: the number after ``####``."""
    return _gsm8k_normalise(answer)


def extract_number(text: str, strict: bool = False) -> str | None:
    """The answer lm-eval's gsm8k reads from generated text, normalised as its ``exact_match`` compares it.

    Args:
        text: The generated text.
        strict: ``False``: the ``flexible-extract`` filter (the last number-like match, our headline);
            ``True``: the ``strict-match`` filter (the first ``#### N``).

    Returns:
        The answer, or ``None`` where the filter matches nothing (lm-eval's ``[invalid]``, never right).
    """
    found = re.findall(GSM8K_STRICT if strict else GSM8K_FLEXIBLE, text)
    if not found:
        return None
    match = found[0] if strict else next(group for group in found[-1] if group)
    return _gsm8k_normalise(match.strip())


def _gsm8k(root: Path) -> list[Item]:
    path = root / "gsm8k" / "test.jsonl"
    items = []
    for i, row in enumerate(_read_jsonl(path)):
        question = row["question"]
        prompt = f"Question: {question}\nAnswer:"
        items.append(
            Item("gsm8k", i, question, (), gsm8k_target(row["answer"]), prompt=prompt, until=GSM8K_UNTIL)
        )
    return items


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("arc_easy", "multiple_choice", "acc", 0.25, _arc("arc_easy", "arc_easy")),
        TaskSpec(
            "arc_challenge", "multiple_choice", "acc_norm", 0.25, _arc("arc_challenge", "arc_challenge")
        ),
        TaskSpec("mmlu", "multiple_choice", "acc", 0.25, _mmlu, "sampled across all 57 subjects"),
        TaskSpec("winogrande", "multiple_choice", "acc", 0.5, _winogrande),
        TaskSpec(
            "truthfulqa_mc1", "multiple_choice", "acc", 0.22, _truthfulqa, "MC1; options shuffled per item"
        ),
        TaskSpec(
            "hellaswag",
            "multiple_choice",
            "acc_norm",
            0.25,
            _hellaswag,
            "only 100 TRAIN-split items are staged (no validation set)",
        ),
        TaskSpec(
            "gsm8k",
            "generate",
            "exact_match",
            0.0,
            _gsm8k,
            "zero-shot (lm-eval: 5-shot), greedy, lm-eval flexible-extract match",
        ),
    )
}
"""Every task of the suite, by name."""


def task_spec(name: str) -> TaskSpec:
    """The spec of a task.

    Raises:
        TaskError: If the name is unknown (the message lists the known ones).
    """
    try:
        return TASKS[name]
    except KeyError:
        raise TaskError(f"Unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def load_task(
    name: str,
    *,
    full: bool = False,
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    root: Path | None = None,
) -> list[Item]:
    """Load a task's items: a seeded 100-item sample (default) or every item.

    Args:
        name: Task name (see :data:`TASKS`).
        full: Use every item instead of the seeded sample.
        limit: Keep only the first ``limit`` items of the sample (or of the full set).
        seed: Seed of the sample; the same seed always gives the same items in the same order.
        root: Benchmarks folder (default: :func:`benchmarks_dir`).

    Returns:
        The items.

    Raises:
        TaskError: For an unknown task, a missing file, or a bad limit.
    """
    if limit is not None and limit < 1:
        raise TaskError(f"limit must be at least 1, got {limit}")
    items = task_spec(name).load(root or benchmarks_dir())
    if not full and len(items) > SAMPLE_SIZE:
        chosen = random.Random(f"{name}-{seed}").sample(range(len(items)), SAMPLE_SIZE)
        items = [items[i] for i in chosen]
    return items[:limit] if limit else items


__all__ = [
    "DEFAULT_SEED",
    "SAMPLE_NOTE",
    "SAMPLE_SIZE",
    "TASKS",
    "TRUTHFULQA_PREAMBLE",
    "Item",
    "TaskError",
    "TaskSpec",
    "benchmarks_dir",
    "extract_number",
    "gsm8k_target",
    "hellaswag_preprocess",
    "load_task",
    "task_spec",
]
