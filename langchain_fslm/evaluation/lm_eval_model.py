"""lm-eval model type ``fslm``: an FSLM stack behind lm-eval's ``LM`` API.

Importing this module registers it, so after ``import langchain_fslm.evaluation``::

    lm_eval.simple_evaluate(model="fslm", model_args="stack=runs/fslm-stack,scoring=stack", tasks=[...])

and on the command line ``python -m langchain_fslm.evaluation --model fslm --model_args stack=DIR ...``
(the stock ``lm_eval`` command cannot import third-party models, so this wrapper imports us first).

How a multi-stage stack answers a log-likelihood question (``scoring``):

* ``stack`` (default): the upstream stages run on the question (the request's context) exactly as in
  normal use, greedy, each distinct context once; then the last stage's prompt is filled with the question
  and their handoffs, rendered through the chat template, and the last stage (its adapter) scores each
  continuation as its reply. The choice with the highest log-likelihood wins. An upstream stage whose
  output does not parse hands its raw text on, one whose prompt is too long an empty text (the item is
  scored, and listed in ``failures``).
* ``last_stage``: the last stage's adapter alone scores ``context + continuation`` as raw text, the
  standard lm-eval way, with no upstream stage and no template. The difference between the two measures
  what the upstream stages (and the stage prompt) add.

Requests are batched: the upstream stages run on up to ``upstream_batch_size`` distinct contexts at a time
(one batched generation per stage), and the continuations of one scored context share it: the context
runs once and its KV cache serves every choice (``shared_contexts``, see
:mod:`langchain_fslm.evaluation.scoring`; the scores equal the plain path's within float rounding).

``generate_until`` always runs the whole stack (upstream stages, then the last stage with the request's
stop sequences and token budget). ``loglikelihood_rolling`` scores the text with the last stage's adapter
(truncated to the context window).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from langchain_fslm.engine.registry import capabilities_of
from langchain_fslm.errors import FSLMError
from langchain_fslm.evaluation.scoring import shared_context_loglikelihood

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

    from langchain_fslm.chain import FSLMChain
    from langchain_fslm.engine.local import LocalEngine

logger = logging.getLogger(__name__)

Scoring = Literal["stack", "last_stage"]
SCORINGS: tuple[str, ...] = ("stack", "last_stage")


def load_stack(stack: str | None = None, base: str | None = None) -> FSLMChain:
    """A stack from a folder (on ``base`` if given), else ``FSLMChain.default(base)`` (the shipped stack)."""
    from langchain_fslm.chain import FSLMChain

    # scoring needs the torch engine (log-likelihoods), whatever the default engine is
    if stack:
        return FSLMChain.from_pretrained(stack, base_model=base, engine="torch")
    return FSLMChain.default(base, engine="torch")


def length_buckets(texts: Sequence[str], size: int, spread: float = 1.5) -> list[list[str]]:
    """Batches of at most ``size`` texts of similar length (shortest first).

    A batch is padded to its longest prompt, so a short question batched with a long one (TruthfulQA's
    preamble beside an ARC question) computes mostly padding; a new batch starts when a text is more
    than ``spread`` times (plus 200 characters) the length of the batch's first.
    """
    batches: list[list[str]] = []
    for text in sorted(texts, key=len):
        if not batches or len(batches[-1]) >= size or len(text) > spread * len(batches[-1][0]) + 200:
            batches.append([])
        batches[-1].append(text)
    return batches


@register_model("fslm")
class FSLMLM(LM):  # type: ignore[misc]
    """An FSLM stack as an lm-eval language model.

    Args:
        stack: A stack folder, or an :class:`~langchain_fslm.chain.FSLMChain` object. Default: the
            default stack (:meth:`FSLMChain.default`: the shipped trained one, zero-shot on another ``base``).
        base: Base model of the default stack (default: the embedded SmolLM2-135M-Instruct); with a
            stack folder, where its base model is on this machine (default: its manifest's).
        scoring: ``stack`` or ``last_stage`` (see the module docs).
        batch_size: Contexts per forward pass when scoring (their continuations run in one more).
        upstream_batch_size: Distinct contexts per batched run of the upstream stages (``scoring="stack"``).
        shared_contexts: Run each distinct scored context once and reuse its KV cache for every
            continuation (default); False scores each ``context + continuation`` row from scratch.
        max_gen_toks: Upper bound on the token budget of ``generate_until`` (requests may ask for less).
        upstream_max_new_tokens: Cap the upstream stages' generation budgets (faster, CPU-friendly runs).

    Attributes:
        failures: Per request context, the error of an item that failed but was scored anyway (a
            prompt too long, a stage output that does not parse); the runner reports these items.
    """

    def __init__(
        self,
        stack: str | FSLMChain | None = None,
        base: str | None = None,
        scoring: str = "stack",
        batch_size: int | str = 8,
        max_gen_toks: int = 256,
        upstream_max_new_tokens: int | str | None = None,
        upstream_batch_size: int | str = 32,
        shared_contexts: bool | str = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if scoring not in SCORINGS:
            raise FSLMError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        if isinstance(stack, str) or stack is None:
            stack = load_stack(stack, base)
        if upstream_max_new_tokens:
            for upstream in stack.stages[:-1]:
                stack = stack.with_generation(upstream.name, max_new_tokens=int(upstream_max_new_tokens))
        self.chain: FSLMChain = stack
        self.scoring = scoring
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.upstream_batch_size = int(upstream_batch_size) if str(upstream_batch_size).isdigit() else 32
        self.shared_contexts = str(shared_contexts).lower() not in ("false", "0", "no")
        self.max_gen_toks = int(max_gen_toks)
        last = self.chain.stages[-1]
        self.engine: LocalEngine = last.engine
        if not capabilities_of(self.engine).loglikelihood:
            raise FSLMError(
                "Log-likelihood scoring needs a local engine (transformers); this stack has none."
            )
        self._handoff_cache: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, str] = {}  # request context -> why a stage failed on it (scored anyway)

    # ----------------------------------------------------------------------------- helpers
    @property
    def tokenizer_name(self) -> str:
        """Name lm-eval uses to key its request cache."""
        return str(getattr(self.engine.tokenizer, "name_or_path", "fslm")).replace("/", "__")

    def upstream_states(self, contexts: Sequence[str]) -> list[dict[str, Any]]:
        """Run every stage but the last on each distinct context, return the states.

        Contexts run up to ``upstream_batch_size`` at a time, in batches of similar length
        (:func:`length_buckets`; one batched generation per stage); each state is cached, so the
        choices of one question, and later calls, reuse it.

        A stage whose output does not parse hands its raw text on, as ``on_parse_error="pass_raw"``
        would, and a stage whose prompt is too long hands on an empty text: the item is scored, and the
        failure is logged and kept in :attr:`failures`. Other errors stop the run.
        """
        from langchain_fslm.errors import PromptTooLongError, StageOutputError
        from langchain_fslm.stack_steps import StageStep
        from langchain_fslm.stage import StageResult

        def hand_on(step: StageStep, context: str, row: Exception) -> StageResult:
            if isinstance(row, StageOutputError):
                handed_on = StageResult.from_error(row)
            elif isinstance(row, PromptTooLongError):
                handed_on = StageResult(stage=step.stage.spec.name, raw="", parse_error=str(row))
            else:
                raise row
            logger.warning("%s; the item is scored with %r handed on", row, handed_on.raw)
            self.failures.setdefault(context, f"{type(row).__name__}: {row}")
            return handed_on

        todo = [c for c in dict.fromkeys(contexts) if c not in self._handoff_cache]
        for chunk in length_buckets(todo, self.upstream_batch_size):
            states = self.chain.upstream_states(chunk, hand_on)
            for context, state in zip(chunk, states, strict=True):
                self._handoff_cache[context] = state
        return [self._handoff_cache[c] for c in contexts]

    def last_stage_context(self, context: str) -> str:
        """The text the last stage conditions on under ``scoring="stack"`` (chat template applied)."""
        last = self.chain.stages[-1]
        state = self.upstream_states([context])[0]
        fields = {k: v for k, v in state.items() if not k.startswith("_")}
        return self.engine.render(last.render(fields), last.system)

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """Log-likelihood and greediness of each ``(context, continuation)`` under :attr:`scoring`."""
        adapter = self.chain.stages[-1].adapter
        if self.scoring == "stack":
            self.upstream_states([c for c, _ in pairs])
            pairs = [(self.last_stage_context(c), cont.lstrip()) for c, cont in pairs]
        if self.shared_contexts:
            scored = shared_context_loglikelihood(
                self.engine, pairs, adapter=adapter, batch_size=self.batch_size
            )
        else:
            scored = self.engine.loglikelihood(pairs, adapter=adapter, batch_size=self.batch_size)
        return [(lp, greedy) for lp, greedy, _ in scored]

    # ----------------------------------------------------------------------------- the LM API
    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Log-probability of each request's continuation given its context (see ``scoring``)."""
        pairs = [(str(r.args[0]), str(r.args[1])) for r in requests]
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        # a step holds whole questions (every choice of a context) of up to upstream_batch_size contexts
        contexts = list(dict.fromkeys(c for c, _ in pairs))
        step = max(1, self.upstream_batch_size if self.scoring == "stack" else len(contexts))
        bar = tqdm(total=len(pairs), disable=disable_tqdm, desc="fslm loglikelihood", unit="request")
        for start in range(0, len(contexts), step):
            chosen = set(contexts[start : start + step])
            indices = [i for i, (c, _) in enumerate(pairs) if c in chosen]
            for i, scored in zip(indices, self.score([pairs[i] for i in indices]), strict=True):
                out[i] = scored
            bar.update(len(indices))
        bar.close()
        return [r for r in out if r is not None]

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Log-probability of each whole text under the last stage's adapter (context window truncated)."""
        tokenizer = self.engine.tokenizer
        start = tokenizer.bos_token or tokenizer.eos_token or "\n"
        pairs = [(start, str(r.args[0])) for r in requests]
        adapter = self.chain.stages[-1].adapter
        scored = self.engine.loglikelihood(pairs, adapter=adapter, batch_size=self.batch_size)
        return [lp for lp, _, _ in scored]

    def _answer_text(self, answer: Any) -> str:
        """A stack's answer as text; an item that fails on its own input is scored, not fatal.

        lm-eval scores whatever a model wrote: the last stage's raw text when only its parse failed,
        else an empty answer (an upstream stage failed, or the item's prompt is longer than the
        context). Other errors still stop the run.
        """
        from langchain_fslm.errors import PromptTooLongError, StageOutputError

        if not isinstance(answer, BaseException):
            return str(answer)
        if isinstance(answer, PromptTooLongError):
            logger.warning("%s; scored as an empty answer", answer)
            return ""
        if not isinstance(answer, StageOutputError):
            raise answer
        logger.warning("%s; scored as written", answer)
        return answer.raw if answer.stage == self.chain.stages[-1].name else ""

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Run the whole stack on each context; the last stage stops at the request's ``until``.

        Requests with the same generation settings run as one batch (each stage batched).
        """
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted((request.args[1] or {}).items())), []).append(i)
        outputs = [""] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="fslm generate", unit="request")
        for indices in groups.values():
            gen_kwargs = dict(requests[indices[0]].args[1] or {})
            until = gen_kwargs.get("until") or []
            chain = self.chain.with_generation(
                max_new_tokens=min(int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)), self.max_gen_toks),
                stop=[until] if isinstance(until, str) else list(until),
                temperature=float(gen_kwargs.get("temperature", 0.0)),
            )
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                answers = chain.batch([str(requests[i].args[0]) for i in chunk], return_exceptions=True)
                for i, answer in zip(chunk, answers, strict=True):
                    outputs[i] = self._answer_text(answer)
                    if isinstance(answer, Exception):
                        self.failures[str(requests[i].args[0])] = f"{type(answer).__name__}: {answer}"
                bar.update(len(chunk))
        bar.close()
        return outputs


__all__ = ["SCORINGS", "FSLMLM", "load_stack"]
