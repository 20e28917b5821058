"""Local generation with transformers + peft: one base model in memory, many LoRA adapters.

Rows of one batch may use different adapters (peft ``adapter_names=``), so every stage of a stack and
every concurrent caller share one model object. A lock serialises access to the model, and a
:class:`~langchain_fslm.engine.batcher.MicroBatcher` merges greedy requests that arrive together (from
threads, ``ainvoke`` or different stages) into one ``generate`` call instead of queueing them.

Prompts that do not fit the context window are refused with :class:`PromptTooLongError` (default) or,
with ``GenerationConfig(on_too_long="truncate_left")``, cut from the left with a
:class:`PromptTruncatedWarning`.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Sequence
from typing import Any

from langchain_fslm.engine.base import Engine, EngineCapabilities, Generation, GenerationRequest
from langchain_fslm.engine.batcher import MicroBatcher
from langchain_fslm.engine.compiled import CompiledDecode
from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.engine.local_adapters import BASE_ADAPTER, LocalAdapters
from langchain_fslm.engine.local_constraints import GrammarCompiler
from langchain_fslm.engine.local_generate import LocalGeneration
from langchain_fslm.engine.prompt_fit import PromptFit
from langchain_fslm.engine.token_texts import longest_of
from langchain_fslm.models import BaseModelRef, load_base_model

logger = logging.getLogger(__name__)

__all__ = ["BASE_ADAPTER", "LocalAdapters", "LocalEngine", "LocalGeneration", "PromptFit", "get_engine"]

_ENGINES: dict[str, LocalEngine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(ref: BaseModelRef) -> LocalEngine:
    """Return the process-wide engine for a base model, loading it on first use.

    Stacks (and stages) on the same base share one model object this way.
    """
    key = ref.key()
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = LocalEngine.from_ref(ref)
            _ENGINES[key] = engine
        return engine


class LocalEngine(LocalGeneration, Engine):
    """A transformers causal LM plus its LoRA adapters, shared by every stage on that base.

    The jobs live in mixins, one module each: the adapter registry
    (:class:`~langchain_fslm.engine.local_adapters.LocalAdapters`), prompt fitting
    (:class:`~langchain_fslm.engine.prompt_fit.PromptFit`) and generation
    (:class:`~langchain_fslm.engine.local_generate.LocalGeneration`); this class holds the state they
    share, the micro-batcher in front of generation, and scoring.

    Args:
        model: A causal LM (plain or already a ``PeftModel``).
        tokenizer: Its tokenizer.
        base_ref: Where the model came from (kept for saving stacks).
        use_chat_template: Wrap prompts in the tokenizer's chat template. Default: when it has one.
        batch_window_ms: How long a caller waits for concurrent greedy requests to join its
            ``generate`` call, and again while more keep arriving (at most 10 windows in all; 0: only
            requests already waiting join). ``None`` turns micro-batching off.
        max_batch_size: Most rows per ``generate`` call: requests merged from concurrent callers, and
            a single caller's larger batch, which runs in chunks of this size.
        num_threads: Torch intra-op threads (process-wide; default: torch's choice, one per core).
        compile_decode: Run single-row calls with their adapter merged into the base weights, a
            static KV cache and ``torch.compile``, one-row matmuls compiled as inductor reductions and
            the attention fused into the layer kernels (:mod:`~langchain_fslm.engine.compiled`):
            about 2.4x faster decoding on a CPU once compiled, at the price of a compile on first use.
            Off by default.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        base_ref: BaseModelRef | None = None,
        use_chat_template: bool | None = None,
        batch_window_ms: float | None = 2.0,
        max_batch_size: int = 32,
        num_threads: int | None = None,
        compile_decode: bool = False,
    ) -> None:
        from langchain_fslm.models import prepare_tokenizer

        if num_threads is not None:
            import torch

            torch.set_num_threads(num_threads)

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model
        self.max_batch_size = max_batch_size
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.base_ref = base_ref
        if use_chat_template is None:
            use_chat_template = getattr(tokenizer, "chat_template", None) is not None
        self.use_chat_template = use_chat_template
        self.adapter_paths = {}
        self.adapter_users = {}  # adapter -> loads not yet released
        self.lock = threading.RLock()
        self.tokenizer_lock = threading.RLock()
        self.compiled = CompiledDecode() if compile_decode else None
        self.grammars = None
        self._token_texts: list[str] | None = None
        if GrammarCompiler.supports(self.tokenizer):
            vocab = int(getattr(model.config, "vocab_size", 0) or len(self.tokenizer))
            self.grammars = GrammarCompiler(self.tokenizer, vocab, sorted(self._eos_ids()))
        self.batcher: MicroBatcher[tuple[GenerationRequest, str], Generation] | None = None
        if batch_window_ms is not None:
            self.batcher = MicroBatcher(
                self._generate_prepared,
                lock=self.lock,
                window_s=batch_window_ms / 1000,
                max_items=max_batch_size,
            )

    @classmethod
    def from_ref(cls, ref: BaseModelRef | str | None = None, **kwargs: Any) -> LocalEngine:
        """Load the base model of a reference (see :func:`langchain_fslm.models.load_base_model`).

        Args:
            ref: The base model (default: the embedded SmolLM2 default).
            **kwargs: Engine settings (``batch_window_ms``, ``compile_decode``, ...), see the class.
        """
        ref = BaseModelRef(source=ref) if isinstance(ref, str) else (ref or BaseModelRef())
        model, tokenizer = load_base_model(ref)
        return cls(model, tokenizer, base_ref=ref, **kwargs)

    def capabilities(self) -> EngineCapabilities:
        """All extras: scoring, adapters, exact tokens, compiled and (fast tokenizer) constrained decoding."""
        return EngineCapabilities(
            loglikelihood=True,
            local_adapters=True,
            token_counts_exact=True,
            compile_decode=True,
            constrained=self.grammars is not None,
        )

    def check_constraint(self, constraint: OutputConstraint, stage: str | None = None) -> None:
        """Compile ``constraint`` against this model's tokenizer now (cached for generation).

        Raises:
            ConstraintError: Naming the stage and the constraint, with llguidance's reason.
        """
        if self.grammars is not None:
            self.grammars.grammar(constraint, stage)

    def longest_token_chars(self, alphabet: frozenset[str] | None = None) -> int:
        """Characters of the longest vocabulary token made only of ``alphabet`` (None: any characters)."""
        if self._token_texts is None:
            with self.tokenizer_lock:
                ids = [[i] for i in range(len(self.tokenizer))]
                self._token_texts = self.tokenizer.batch_decode(ids, clean_up_tokenization_spaces=False)
        return longest_of(self._token_texts, alphabet)

    def enable_compile_decode(self) -> None:
        """Turn compiled decoding on (see ``compile_decode``), for every stack that shares this engine.

        Nothing compiles until the next single-row call. Calling it again changes nothing.
        """
        with self.lock:
            if self.compiled is None:
                self.compiled = CompiledDecode()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Complete requests, one ``generate`` call per group of identical settings.

        Rows with different adapters share a call (peft ``adapter_names=``). Greedy requests from
        concurrent callers are merged into the same calls by the micro-batcher; sampled requests run
        on their own, so a seed gives the same text whoever else is calling.

        Args:
            requests: Prompts with their adapter and settings.

        Returns:
            One :class:`Generation` per request, in order.

        Raises:
            PromptTooLongError: If a prompt does not fit (see :meth:`fit`).
            AdapterError: If a request names an adapter that is not loaded.
            ConstraintError: If a request's constraint cannot be compiled.
        """
        prepared = [(r, self.fit(r)) for r in requests]
        self._adapter_kwargs([r.adapter for r in requests])  # fail fast, in the caller's thread
        for r in requests:  # also in the caller's thread: a bad grammar must not fail a merged batch
            if r.constraint is not None:
                self.check_constraint(r.constraint, r.stage)
        if self.batcher is None or any(r.config.temperature > 0 for r in requests):
            with self.lock:
                return self._generate_prepared(prepared)
        return self.batcher.submit(prepared)

    # ----------------------------------------------------------------------------- scoring
    @property
    def _takes_position_ids(self) -> bool:
        """Whether the model's forward takes ``position_ids`` (transformers' generate asks the same)."""
        return "position_ids" in inspect.signature(self.plain_model.forward).parameters

    def pair_tokens(self, context: str, continuation: str) -> tuple[list[int], int]:
        """The tokens a ``(context, continuation)`` pair is scored on, and how many are the continuation's.

        The pair is tokenised jointly and split where the context's own tokens stop matching; it keeps the
        last ``context_length`` tokens, at least one of the context and one of the continuation.
        """
        ctx = self.token_ids(context)
        whole = self.token_ids(context + continuation)
        split = len(ctx)
        while split > 0 and whole[:split] != ctx[:split]:
            split -= 1
        split = max(1, split)
        ids = whole[-self.context_length :]
        return ids, max(1, min(len(whole) - split, len(ids) - 1))

    def loglikelihood(
        self, pairs: Sequence[tuple[str, str]], adapter: str | None = None, batch_size: int = 8
    ) -> list[tuple[float, bool, int]]:
        """Log-probability of each continuation given its context.

        Contexts are used as given (call :meth:`render` first to score through the chat template).

        Args:
            pairs: ``(context, continuation)`` texts.
            adapter: Adapter to score with, or None for the base model.
            batch_size: Rows per forward pass.

        Returns:
            Per pair: summed log-probability, whether the continuation is the greedy one, and its
            number of tokens.
        """
        import torch

        results: list[tuple[float, bool, int]] = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            rows: list[list[int]] = []
            cont_lens: list[int] = []
            for context, continuation in chunk:
                ids, n_cont = self.pair_tokens(context, continuation)
                rows.append(ids)
                cont_lens.append(n_cont)
            width = max(len(r) for r in rows)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            kwargs = self._adapter_kwargs([adapter] * len(rows))
            if self._takes_position_ids:  # a left-padded row starts at position 0, as in generate
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
            with self.lock, torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=mask, **kwargs).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for i, n in enumerate(cont_lens):
                target = input_ids[i, width - n :]
                pred = logprobs[i, width - n - 1 : width - 1]
                token_lp = pred.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                greedy = bool((pred.argmax(-1) == target).all())
                results.append((float(token_lp.sum()), greedy, n))
        return results
