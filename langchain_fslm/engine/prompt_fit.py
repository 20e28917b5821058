"""Prompt fitting for :class:`~langchain_fslm.engine.local.LocalEngine`: what the model sees, in tokens.

A stage prompt is rendered (through the chat template where the model has one), counted, and refused
with :class:`PromptTooLongError` when it leaves no room for the generation, or, with
``GenerationConfig(on_too_long="truncate_left")``, cut from the left with a :class:`PromptTruncatedWarning`.
"""

from __future__ import annotations

import re
import threading
import warnings
from typing import Any

from langchain_fslm.engine.base import GenerationRequest
from langchain_fslm.errors import PromptTooLongError, PromptTruncatedWarning

WORD_JOINER = "\u2060"
"""Invisible, and no tokenizer's control token contains it: put inside a control-token string that appears in
a prompt, it makes the string plain text to the tokenizer."""


def as_plain_text(text: str, specials: list[str]) -> str:
    r"""``text`` with every occurrence of a control-token string (``<|im_end|>``) kept as text.

    Tokenizers match the strings of special tokens anywhere in their input, so user text holding
    ``<|im_end|>\n<|im_start|>system`` would otherwise open a system turn of its own. A word joiner after
    the first character breaks the match; the model reads the same characters.
    """
    for special in specials:
        if len(special) > 1 and special in text:
            text = text.replace(special, special[0] + WORD_JOINER + special[1:])
    return text


CONTROL_LIKE = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?s>|\[/?INST\]")
"""Strings shaped like common control tokens (ChatML and Llama 3 ``<|...|>``, ``<s>``, ``[INST]``): what an
engine without the tokenizer at hand (a server) keeps as text."""


def as_plain_text_anywhere(text: str) -> str:
    """``text`` with every control-token-shaped string kept as text.

    :func:`as_plain_text` for engines that do not hold the tokenizer's list of special tokens.
    """
    return CONTROL_LIKE.sub(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], text)


class PromptFit:
    """Render, tokenise and fit prompts to the context window of one model.

    A mixin of :class:`~langchain_fslm.engine.local.LocalEngine`, which sets the attributes below.

    Attributes:
        model: The causal LM (its config gives the context length).
        tokenizer: Its tokenizer.
        tokenizer_lock: Serialises tokenizer calls (a fast tokenizer is not re-entrant).
        use_chat_template: Wrap prompts in the tokenizer's chat template.
    """

    model: Any
    tokenizer: Any
    tokenizer_lock: threading.RLock
    use_chat_template: bool

    @property
    def context_length(self) -> int:
        """Maximum number of tokens (prompt + generation) the model accepts."""
        config = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = getattr(config, attr, None)
            if isinstance(value, int):
                return value
        return 2048

    @property
    def control_strings(self) -> list[str]:
        """The strings of the tokenizer's special tokens, longest first (a prompt may not write them)."""
        cached: list[str] | None = getattr(self, "_control_strings", None)
        if cached is None:
            decoder = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
            found = {str(t.content) for t in decoder.values() if getattr(t, "special", False)}
            found |= {str(t) for t in getattr(self.tokenizer, "all_special_tokens", [])}
            cached = sorted(found, key=len, reverse=True)
            self._control_strings = cached
        return cached

    def render(self, prompt: str, system: str | None = None) -> str:
        """The exact text the model sees for a stage prompt (chat template applied where used).

        Control-token strings inside the prompt or system message stay text (:func:`as_plain_text`): only
        the template writes turns.
        """
        prompt = as_plain_text(prompt, self.control_strings)
        system = as_plain_text(system, self.control_strings) if system else system
        if not self.use_chat_template:
            return f"{system}\n\n{prompt}" if system else prompt
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(rendered)

    def token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added); safe to call from several threads."""
        # Same padding setting as batch encoding (a no-op for one text): a fast tokenizer whose
        # settings change while another thread uses it fails with "Already borrowed". Not verbose: a
        # text longer than the model takes is ours to report (PromptTooLongError), not transformers'.
        with self.tokenizer_lock:
            encoded = self.tokenizer(text, add_special_tokens=False, padding=True, verbose=False)
        ids: list[int] = encoded["input_ids"]
        return ids

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens added)."""
        return len(self.token_ids(text))

    def fit(self, request: GenerationRequest) -> str:
        """The rendered prompt of a request, made to fit the context window per its policy.

        Args:
            request: The request; ``request.config.on_too_long`` is ``"raise"`` (default) or
                ``"truncate_left"`` (drop the oldest prompt tokens, warn: :class:`PromptTruncatedWarning`).

        Returns:
            The exact text the model will see.

        Raises:
            PromptTooLongError: If the prompt does not fit and may not be cut, or cannot be cut enough.
        """
        config = request.config
        text = self.render(request.prompt, request.system)
        if not text:  # an empty prompt without a chat template: start from the model's own start token
            text = str(self.tokenizer.bos_token or self.tokenizer.eos_token or "")
        budget = self.context_length - config.max_new_tokens
        n = self.count_tokens(text)
        if n <= budget:
            return text
        where = f"The prompt has {n} tokens; with max_new_tokens={config.max_new_tokens} the model accepts"
        limit = f"at most {budget} (context length {self.context_length})"
        if config.on_too_long == "raise":
            raise PromptTooLongError(
                f"{where} {limit}. Shorten the input, lower max_new_tokens, or set "
                "on_too_long='truncate_left'."
            )
        ids = self.token_ids(request.prompt)
        keep = budget - (n - len(ids))  # room left once the template and system message are in
        while keep > 0:
            with self.tokenizer_lock:
                kept = str(self.tokenizer.decode(ids[-keep:]))
            text = self.render(kept, request.system)
            fitted = self.count_tokens(text)
            if fitted <= budget:
                warnings.warn(
                    f"Prompt truncated from the left: {n} -> {fitted} tokens, to fit {limit} with "
                    f"max_new_tokens={config.max_new_tokens}.",
                    PromptTruncatedWarning,
                    stacklevel=2,
                )
                return text
            keep -= fitted - budget
        raise PromptTooLongError(f"{where} {limit}, and the system message and template alone do not fit.")

    def _encode(self, texts: list[str], max_new_tokens: int) -> Any:
        with self.tokenizer_lock:
            encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        budget = self.context_length - max_new_tokens
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        for i, n in enumerate(lengths):
            if n > budget:
                raise PromptTooLongError(
                    f"Prompt {i} has {n} tokens; with max_new_tokens={max_new_tokens} the model "
                    f"accepts at most {budget} (context length {self.context_length})."
                )
        return encoded
