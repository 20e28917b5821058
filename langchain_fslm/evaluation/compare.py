"""``fslm compare``: one LangChain chain, several models swapped in, the same items, side-by-side numbers.

The default chain is ``ChatPromptTemplate (QA prompt) | model | StrOutputParser()``. Each model answers
every item (one ``invoke`` per item, so latency is per question); per model we report accuracy with a
95% Wilson interval, latency p50/p95, tokens in/out (from the model's usage metadata, the stack's handoff
events, or the model's own tokenizer when it reports none) and, for local models, the peak resident
memory of the process that loaded and ran that model. Each model runs in a process of its own (spawned,
one after the other), so its peak memory does not depend on which model loaded first or on weights an
earlier model left in memory.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import re
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from tqdm import tqdm

from langchain_fslm.evaluation.langchain_lm import output_text
from langchain_fslm.evaluation.runner import wilson_interval
from langchain_fslm.evaluation.specs import ModelSpecError, ResolvedSpec, resolve_spec
from langchain_fslm.evaluation.tasks import Item, extract_number
from langchain_fslm.handoff import HANDOFF_EVENT

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGH"
MC_PROMPT = (
    "Answer the multiple-choice question with the letter of the correct option.\n\n"
    "Question: {question}\n{options}\n\nReply with the letter only."
)
MATH_PROMPT = "Solve the problem step by step, then end with 'The answer is N.'\n\nProblem: {question}"


def qa_chain(model: Runnable[Any, Any], generation: bool = False) -> Runnable[dict[str, Any], str]:
    """The default chain: a QA prompt, the model, a string parser. It reads ``question`` and ``options``."""
    prompt = ChatPromptTemplate.from_template(MATH_PROMPT if generation else MC_PROMPT)
    return prompt | model | StrOutputParser()


def chain_inputs(item: Item) -> dict[str, Any]:
    """The fields a chain reads for an item: ``question``, ``options`` (lettered lines), ``choices``."""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
    return {"question": item.question, "options": options, "choices": list(item.choices)}


def parse_choice(text: str, choices: Sequence[str]) -> int | None:
    """The option an answer picks.

    In order: ``answer is X``; a leading ``X.``/``(X)``/``X)``; any ``X.``/``(X)``; the one option it
    quotes; any standalone capital letter of an option.
    """
    letters = LETTERS[: len(choices)]
    text = text.strip()
    patterns = (
        rf"answer is:?\s*\(?([{letters}])\b",
        rf"^\(?([{letters}])(?:[.):]|$)",
        rf"\(([{letters}])\)|\b([{letters}])[.)]",
    )
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return letters.index(next(g for g in match.groups() if g))
    quoted = [i for i, c in enumerate(choices) if c and c.lower() in text.lower()]
    if len(quoted) == 1:
        return quoted[0]
    match = re.search(rf"\b([{letters}])\b", text)
    return letters.index(match.group(1)) if match else None


def is_correct(item: Item, answer: str) -> tuple[bool, Any]:
    """Whether an answer is right, and what it was read as."""
    if item.is_generation:
        number = extract_number(answer)
        return number == item.gold, number
    choice = parse_choice(answer, item.choices)
    return choice == item.gold, choice


class UsageCounter(BaseCallbackHandler):
    """Counts tokens in/out of one chain run from whatever the model reports.

    Sources, in order: an FSLM stack's ``fslm_handoff`` events; the chat message's ``usage_metadata``;
    the LLM's ``llm_output["token_usage"]``; else the given tokenizer over prompts and outputs.
    """

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self.input_tokens = 0
        self.output_tokens = 0
        self.counted = False
        self._prompt_tokens: dict[UUID, int] = {}

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if self.tokenizer else 0

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Add a stack stage's tokens."""
        if name == HANDOFF_EVENT:
            self.input_tokens += int(data.get("prompt_tokens", 0))
            self.output_tokens += int(data.get("completion_tokens", 0))
            self.counted = True

    def on_llm_start(self, serialized: Any, prompts: list[str], *, run_id: UUID, **kwargs: Any) -> None:
        """Count an LLM's prompt tokens with the tokenizer (used if it reports no usage)."""
        self._prompt_tokens[run_id] = sum(self._count(p) for p in prompts)

    def on_chat_model_start(
        self, serialized: Any, messages: list[list[Any]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        """Count a chat model's prompt tokens via the chat template (used if it reports no usage)."""
        total = 0
        if self.tokenizer is not None:
            for conversation in messages:
                rows = [{"role": _role(m), "content": str(m.content)} for m in conversation]
                if getattr(self.tokenizer, "chat_template", None):
                    text = self.tokenizer.apply_chat_template(
                        rows, tokenize=False, add_generation_prompt=True
                    )
                else:
                    text = "\n".join(r["content"] for r in rows)
                total += self._count(str(text))
        self._prompt_tokens[run_id] = total

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Add the model's reported usage, else count with the tokenizer."""
        usage = (response.llm_output or {}).get("token_usage") or {}
        reported_in, reported_out = 0, 0
        texts = []
        for generations in response.generations:
            for generation in generations:
                texts.append(generation.text)
                meta = getattr(getattr(generation, "message", None), "usage_metadata", None) or {}
                reported_in += int(meta.get("input_tokens", 0))
                reported_out += int(meta.get("output_tokens", 0))
        reported_in = reported_in or int(usage.get("prompt_tokens", 0))
        reported_out = reported_out or int(usage.get("completion_tokens", 0))
        counted_in = self._prompt_tokens.pop(run_id, 0)
        self.input_tokens += reported_in or counted_in
        self.output_tokens += reported_out or sum(self._count(t) for t in texts)
        self.counted = self.counted or bool(reported_in or reported_out or self.tokenizer)


def _role(message: Any) -> str:
    return {"human": "user", "ai": "assistant"}.get(message.type, message.type)


class PeakMemory:
    """Peak resident memory (RSS) of this process while the ``with`` block runs, sampled every 20 ms."""

    def __init__(self, interval_s: float = 0.02) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.start_bytes = 0
        self.peak_bytes = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakMemory:
        self.start_bytes = self.peak_bytes = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1])


def load_chain_factory(spec: str) -> Callable[[Runnable[Any, Any]], Runnable[Any, Any]]:
    """Import a user's chain factory ``module:attr``: a callable taking the model and returning the chain.

    The chain reads the item fields of :func:`chain_inputs` and returns the answer text.
    """
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ModelSpecError(f"Chain {spec!r} cannot be imported: {err}") from err
    if not callable(factory):
        raise ModelSpecError(f"Chain {spec!r} is not callable (expected model -> Runnable)")
    return factory  # type: ignore[no-any-return]


def run_model(
    spec: str,
    items: Sequence[Item],
    *,
    chain_factory: Callable[[Runnable[Any, Any]], Runnable[Any, Any]] | None = None,
    max_new_tokens: int = 64,
    resolved: ResolvedSpec | None = None,
) -> dict[str, Any]:
    """Run one model through the chain over the items.

    Args:
        spec: Model spec (see :func:`~langchain_fslm.evaluation.specs.resolve_spec`).
        items: The questions.
        chain_factory: Builds the chain around the model (default: :func:`qa_chain`).
        max_new_tokens: Answer budget of local models.
        resolved: An already resolved model (skips :func:`resolve_spec`).

    Returns:
        The model's summary and per-item records.
    """
    generation = bool(items) and items[0].is_generation
    with PeakMemory() as memory:
        model = resolved or resolve_spec(spec, max_new_tokens=max_new_tokens)
        chain = chain_factory(model.model) if chain_factory else qa_chain(model.model, generation)
        records, latencies = [], []
        tokens_in = tokens_out = 0
        counted = True
        failure: Exception | None = None
        task = items[0].task if items else ""
        for item in tqdm(items, desc=f"fslm compare {task} {model.label}", unit="item", dynamic_ncols=True):
            counter = UsageCounter(model.tokenizer)
            start = time.perf_counter()
            try:
                answer = output_text(chain.invoke(chain_inputs(item), config={"callbacks": [counter]}))
            except Exception as err:  # one failed call (an API error, a reply that does not parse)
                failure = err
                error = f"{type(err).__name__}: {err}"
                logger.warning(
                    "compare %s: item %s failed, scored wrong (%s)", model.label, item.index, error
                )
                records.append(
                    {"index": item.index, "gold": item.gold, "pred": None, "correct": False, "error": error}
                )
                continue
            latencies.append(time.perf_counter() - start)
            right, read_as = is_correct(item, answer)
            tokens_in += counter.input_tokens
            tokens_out += counter.output_tokens
            counted = counted and counter.counted
            records.append(
                {"index": item.index, "gold": item.gold, "pred": read_as, "correct": right, "answer": answer}
            )
        errors = sum("error" in r for r in records)
        if failure is not None and errors == len(records):  # nothing was scored: the setup is wrong
            raise failure
    hits, n = sum(r["correct"] for r in records), len(records)
    low, high = wilson_interval(hits, n)
    mib = 1024 * 1024
    return {
        "spec": spec,
        "label": model.label,
        "local": model.local,
        "n": n,
        "errors": errors,
        "score": hits / n if n else 0.0,
        "ci95": [low, high],
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "tokens_in": tokens_in if counted else None,
        "tokens_out": tokens_out if counted else None,
        "peak_rss_mib": round(memory.peak_bytes / mib, 1) if model.local else None,
        "rss_growth_mib": round((memory.peak_bytes - memory.start_bytes) / mib, 1) if model.local else None,
        "items": records,
    }


def run_model_in_own_process(
    spec: str,
    items: Sequence[Item],
    *,
    chain_factory: Callable[[Runnable[Any, Any]], Runnable[Any, Any]] | None = None,
    max_new_tokens: int = 64,
) -> dict[str, Any]:
    """:func:`run_model` in a fresh spawned process: its ``peak_rss_mib`` is that model's process alone.

    The chain factory must be importable by name (a ``module:attr`` factory is). Errors are raised here
    as they were raised there.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        future = pool.submit(
            run_model, spec, list(items), chain_factory=chain_factory, max_new_tokens=max_new_tokens
        )
        return future.result()


def compare(
    specs: Sequence[str],
    items: Sequence[Item],
    *,
    chain_factory: Callable[[Runnable[Any, Any]], Runnable[Any, Any]] | None = None,
    max_new_tokens: int = 64,
    own_process: bool = True,
) -> list[dict[str, Any]]:
    """Run every model over the same items through the same chain (in the order given).

    Args:
        specs: Model specs.
        items: The questions.
        chain_factory: Builds the chain around each model (default: :func:`qa_chain`).
        max_new_tokens: Answer budget of local models.
        own_process: Run each model in a process of its own (:func:`run_model_in_own_process`), so
            each peak memory is that model's alone. False: all in this process, one after the other
            (then a later model's peak includes what earlier ones left loaded).
    """
    if not specs:
        raise ModelSpecError("compare needs at least one model spec")
    run = run_model_in_own_process if own_process else run_model
    return [run(s, items, chain_factory=chain_factory, max_new_tokens=max_new_tokens) for s in specs]


__all__ = [
    "MC_PROMPT",
    "PeakMemory",
    "UsageCounter",
    "chain_inputs",
    "compare",
    "is_correct",
    "load_chain_factory",
    "parse_choice",
    "percentile",
    "qa_chain",
    "run_model",
    "run_model_in_own_process",
]
