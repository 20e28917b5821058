"""The one small interface every generation engine satisfies (local transformers, remote servers).

Engines know nothing about LangChain: they take plain prompts and return plain text with token counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class GenerationConfig(BaseModel):
    """How a stage generates.

    Attributes:
        max_new_tokens: Upper bound on generated tokens.
        temperature: 0 means greedy decoding (deterministic); above 0 samples.
        top_p: Nucleus sampling mass when sampling.
        repetition_penalty: Penalty for repeated tokens (1.0 = none). Small models loop without it.
        stop: Stop sequences; generation ends at the first one and the text is cut before it.
        seed: Seed for sampling, for reproducible sampled outputs.
        on_too_long: What to do with a prompt longer than the context window leaves room for:
            ``raise`` a :class:`~langchain_fslm.errors.PromptTooLongError` (default), or
            ``truncate_left``: drop its oldest tokens and warn (``PromptTruncatedWarning``).
    """

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, ge=1.0, le=5.0)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    on_too_long: Literal["raise", "truncate_left"] = "raise"


class GenerationRequest(BaseModel):
    """One prompt to complete.

    Attributes:
        prompt: The stage's rendered instruction (the engine applies the chat template, if any).
        adapter: Name of a loaded LoRA adapter, or None for the bare base model.
        config: Generation settings.
        system: Optional system message (used where the model has a chat template).
        stage: Name of the stage that sends the request, for error messages (None outside a stage).
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str
    adapter: str | None = None
    config: GenerationConfig = Field(default_factory=GenerationConfig)
    system: str | None = None
    stage: str | None = None


class Generation(BaseModel):
    """What an engine returns for one request."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"


@runtime_checkable
class Engine(Protocol):
    """Where text is generated. Implementations must be safe to call from several threads."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Complete every request (batched where the engine can), in order."""
        ...

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Yield the completion of one request as text pieces."""
        ...

    def has_adapter(self, name: str) -> bool:
        """Whether an adapter of that name is loaded."""
        ...


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop sequence.

    Args:
        text: Generated text.
        stops: Stop sequences.

    Returns:
        The text before the first stop, and whether a stop was found.
    """
    cut = len(text)
    for stop in stops:
        if stop:
            i = text.find(stop)
            if i != -1:
                cut = min(cut, i)
    return text[:cut], cut < len(text)


def stream_until_stop(pieces: Iterable[str], stops: Sequence[str]) -> Iterator[str]:
    """Yield streamed text without its leading whitespace, up to the first stop sequence.

    Text that could be the start of a stop is held back until it is known not to be, so the pieces
    join to what :func:`cut_at_stop` gives for the whole text. ``pieces`` is not read past a stop.
    """
    hold = max((len(s) for s in stops), default=1) - 1
    emitted = buffer = ""
    for piece in pieces:
        buffer = (buffer + piece).lstrip()
        text, hit = cut_at_stop(buffer, stops)
        safe = text if hit or hold <= 0 else text[: max(len(emitted), len(text) - hold)]
        if safe[len(emitted) :]:
            yield safe[len(emitted) :]
            emitted = safe
        if hit:
            return
    if buffer[len(emitted) :]:
        yield buffer[len(emitted) :]
