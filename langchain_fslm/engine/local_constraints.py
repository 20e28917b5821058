"""Grammar-constrained decoding on the local engine, with llguidance.

llguidance (MIT, no Python dependencies; the constraint engine llama.cpp and vLLM use too) compiles a JSON
schema, regular expression or lark grammar against the model's tokenizer and, at every step, says which
tokens keep the text inside it. :class:`ConstrainedRows` is the small ``LogitsProcessor`` that applies those
masks in ``model.generate``: one matcher per row, so one batch mixes constrained and free rows, different
grammars and different adapters.

Why llguidance rather than xgrammar or outlines (measured, see docs/constrained-decoding.md): per-row
grammars in one batch (outlines takes one output type per batch), an 8 MB install with no dependencies
(xgrammar pulls in triton, about 1 GB, on Linux), the same speed within noise, and a matcher that reports
when a text is finished.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.errors import ConstraintError

if TYPE_CHECKING:
    import torch

# ", " and ": " rather than llguidance's compact "," and ":": a small model writes the values of compact JSON
# much worse (measured on SmolLM2: ages right in 2/8 compact, 6/8 spaced); no free whitespace, so the
# model cannot spend its budget on blanks.
JSON_OPTIONS: dict[str, Any] = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


def grammar_of(constraint: OutputConstraint) -> str:
    """Llguidance's grammar text for a constraint (not yet checked)."""
    from llguidance import LLMatcher

    if constraint.kind == "json_schema":
        try:
            return str(LLMatcher.grammar_from_json_schema(constraint.value, overrides=JSON_OPTIONS))  # type: ignore[arg-type]
        except ValueError as err:
            raise ConstraintError(f"{constraint.describe()} is not a JSON schema: {err}") from None
    if constraint.kind == "regex":
        return str(LLMatcher.grammar_from_regex(constraint.value))
    return str(LLMatcher.grammar_from_lark(constraint.value))


class GrammarCompiler:
    """The llguidance tokenizer of one model and its checked grammars, cached by constraint.

    Args:
        tokenizer: The model's (fast) Hugging Face tokenizer.
        vocab_size: Width of the model's logits (may exceed the tokenizer's vocabulary).
        eos_ids: Tokens that end a generation; the matcher allows them once the text is complete.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]) -> None:
        self.hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = sorted(eos_ids)
        self._ll_tokenizer: Any = None
        self._grammars: dict[OutputConstraint, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def supports(tokenizer: Any) -> bool:
        """Whether llguidance can read this tokenizer (a fast, Rust-backed one)."""
        return bool(getattr(tokenizer, "is_fast", False))

    def ll_tokenizer(self) -> Any:
        """The llguidance view of the tokenizer, built once (about half a second)."""
        with self._lock:
            if self._ll_tokenizer is None:
                import llguidance.hf

                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    self.hf_tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_ids
                )
            return self._ll_tokenizer

    def grammar(self, constraint: OutputConstraint, stage: str | None = None) -> str:
        """The checked grammar of ``constraint``, compiled on first use.

        Raises:
            ConstraintError: Naming the stage and the constraint, with llguidance's reason.
        """
        with self._lock:
            cached = self._grammars.get(constraint)
        if cached is not None:
            return cached
        from llguidance import LLMatcher

        where = f"stage {stage!r}: " if stage else ""
        try:
            grammar = grammar_of(constraint)
        except ConstraintError as err:
            raise ConstraintError(f"{where}{err}") from None
        error = LLMatcher.validate_grammar(grammar, self.ll_tokenizer())
        if error:
            raise ConstraintError(f"{where}{constraint.describe()} cannot be decoded: {error}")
        with self._lock:
            self._grammars[constraint] = grammar
        return grammar

    def matcher(self, constraint: OutputConstraint, stage: str | None = None) -> Any:
        """A fresh ``LLMatcher`` at the start of ``constraint``."""
        from llguidance import LLMatcher

        return LLMatcher(self.ll_tokenizer(), self.grammar(constraint, stage), log_level=0)

    def finished(self, constraint: OutputConstraint, tokens: Sequence[int], ended: bool) -> bool:
        """Whether generated ``tokens`` are a complete text of ``constraint``.

        Complete means the model ended (``ended``: it sampled an end token, which the mask allows only on a
        complete text) or the grammar can take nothing more; a text that merely *could* end here (an
        integer, two of four bullets) was cut by the budget and is not complete.
        """
        matcher = self.matcher(constraint)
        if not matcher.consume_tokens(list(tokens)):
            return False
        return bool(ended and matcher.is_accepting()) or bool(matcher.is_stopped() and not matcher.is_error())


class ConstrainedRows:
    """A ``LogitsProcessor`` keeping each row of a batch inside its own constraint (None: a free row).

    Each call first feeds the token the row sampled last to its matcher, then masks every token the
    matcher refuses. A row whose matcher is done (ended or stopped) is left alone: ``generate`` pads it.

    Args:
        matchers: One ``LLMatcher`` or None per row.
        prompt_len: Length of the (padded) prompts, so the first call feeds nothing.
        eos_ids: End tokens (never fed to a matcher: they end the row).
    """

    def __init__(self, matchers: Sequence[Any], prompt_len: int, eos_ids: Sequence[int]) -> None:
        self.matchers = list(matchers)
        self.prompt_len = prompt_len
        self.eos_ids = set(eos_ids)
        self.done = [m is None for m in self.matchers]
        self._rows = [i for i, m in enumerate(self.matchers) if m is not None]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Feed each row's last token to its matcher, then mask what the matcher refuses."""
        import numpy as np
        import torch
        from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

        if input_ids.shape[1] > self.prompt_len:
            last = input_ids[:, -1].tolist()
            for i in self._rows:
                if not self.done[i] and (
                    last[i] in self.eos_ids or not self.matchers[i].consume_token(last[i])
                ):
                    self.done[i] = True
        rows = [i for i in self._rows if not self.done[i]]
        if not rows:
            return scores
        vocab = scores.shape[1]
        mask = allocate_token_bitmask(len(rows), vocab)
        for j, i in enumerate(rows):
            fill_next_token_bitmask(self.matchers[i], mask, j)
        # unpack the 32-bit words to one flag per token with plain torch (llguidance.torch's kernel costs a
        # C++ compile on first use)
        words = torch.from_numpy(mask.view(np.uint32).astype(np.int64))
        bits = (words.unsqueeze(-1) >> torch.arange(32)) & 1
        allowed = bits.reshape(len(rows), -1)[:, :vocab].bool()
        index = torch.tensor(rows)
        scores[index] = scores[index].masked_fill(~allowed.to(scores.device), float("-inf"))
        return scores
