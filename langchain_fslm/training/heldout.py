"""Held-out evaluation of a stack (or the bare base model) on Alpaca records.

Two numbers per system: ROUGE-L F1 of the final answer against the reference answer, and the mean
per-token log-likelihood the final model (last stage, with its adapter and its rendered prompt built
from the system's own earlier stages) gives the reference answer.

The answers can come from any engine (llama.cpp is several times faster on a GGUF base); the
likelihoods need a torch engine, so a ``scorer`` (the same stack loaded on torch) scores them when the
answering stack's engine cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from langchain_fslm.training.data import request_text


class HeldoutResult(BaseModel):
    """Scores of one system on held-out records.

    Attributes:
        system: A label (stack folder or ``base``).
        n: Number of records scored.
        rouge_l: Mean ROUGE-L F1 of the answers against the references.
        loglik_per_token: Mean over records of the reference answer's per-token log-likelihood.
        failed: Records where a stage raised (unparseable output): scored ROUGE-L 0, no log-likelihood.
        wall_s: Evaluation wall time.
        samples: The first few (request, answer, reference) triples, for reading.
        rouge_l_per_record: ROUGE-L of every record, in order (for paired comparisons).
        loglik_per_record: Per-token log-likelihood of every record, in order (None where it failed).
    """

    system: str
    n: int
    rouge_l: float
    loglik_per_token: float
    failed: int = 0
    wall_s: float
    samples: list[dict[str, str]] = Field(default_factory=list)
    rouge_l_per_record: list[float] = Field(default_factory=list)
    loglik_per_record: list[float | None] = Field(default_factory=list)


def _text(value: Any) -> str:
    return value.as_text() if hasattr(value, "as_text") else str(value)


def evaluate_chain(
    chain: Any,
    rows: Sequence[dict[str, Any]],
    system: str,
    batch_size: int = 8,
    progress: bool = True,
    scorer: Any = None,
) -> HeldoutResult:
    """Answer every held-out row with ``chain`` and score answers and reference likelihoods.

    Args:
        chain: An :class:`FSLMChain` (any engine).
        rows: Alpaca rows (``instruction``, ``input``, ``output``).
        system: Label for the report.
        batch_size: Rows per batched stack call.
        progress: Show a progress bar.
        scorer: The same stack on a torch engine; its last stage scores the reference answers in the
            prompt built from ``chain``'s handoffs. Default: ``chain`` itself (then on torch).

    Raises:
        FSLMError: If the scoring stack's engine cannot score log-likelihoods.
    """
    import time

    from rouge_score import rouge_scorer
    from tqdm.auto import tqdm

    from langchain_fslm.engine.registry import capabilities_of
    from langchain_fslm.errors import FSLMError

    rouge_l = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    chain = chain.with_handoffs()
    last = (scorer or chain).stages[-1]
    engine = last.engine
    if not capabilities_of(engine).loglikelihood:
        raise FSLMError(
            f"held-out scoring needs a torch engine for the reference likelihoods; {type(engine).__name__} "
            "has none (pass scorer=, the stack loaded with engine='torch')"
        )
    rouge: list[float] = []
    loglik: list[float | None] = []
    samples: list[dict[str, str]] = []
    failed = 0
    start = time.perf_counter()
    for i in tqdm(range(0, len(rows), batch_size), desc=f"heldout ({system})", disable=not progress):
        chunk = rows[i : i + batch_size]
        requests = [request_text(r) for r in chunk]
        outputs = chain.batch(requests, return_exceptions=True)
        pairs = []
        for row, req, out in zip(chunk, requests, outputs, strict=True):
            if isinstance(out, Exception):
                failed += 1
                rouge.append(0.0)
                continue
            state = {"input": req, **{k: _text(v) for k, v in out.stages.items()}}
            context = engine.render(last.render(state), last.system)
            pairs.append((context, str(row["output"])))
            rouge.append(rouge_l.score(str(row["output"]), out.output)["rougeL"].fmeasure)
            if len(samples) < 3:
                samples.append({"request": req, "answer": out.output, "reference": str(row["output"])})
        scores = iter(engine.loglikelihood(pairs, adapter=last.adapter, batch_size=batch_size))
        for out in outputs:  # in record order: None where the stack failed
            if isinstance(out, Exception):
                loglik.append(None)
            else:
                logprob, _, n = next(scores)
                loglik.append(logprob / n)
    scored = [x for x in loglik if x is not None]
    return HeldoutResult(
        system=system,
        n=len(rouge),
        rouge_l=sum(rouge) / max(1, len(rouge)),
        loglik_per_token=sum(scored) / max(1, len(scored)),
        failed=failed,
        wall_s=time.perf_counter() - start,
        samples=samples,
        rouge_l_per_record=rouge,
        loglik_per_record=loglik,
    )


def base_chain(base: str | None = None, engine: Any = None) -> Any:
    """The stack-free zero-shot baseline: the bare base model answering the request directly."""
    from langchain_fslm.chain import FSLMChain
    from langchain_fslm.training.finetune import SINGLE_STAGE

    return FSLMChain.from_specs([SINGLE_STAGE], base_model=base, engine=engine)
