"""The contract every generation engine implements (local transformers, remote servers).

Engines know nothing about LangChain: they take plain prompts and return plain text with token counts.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.errors import FSLMError, InvalidInputError

if TYPE_CHECKING:
    from langchain_fslm.models import BaseModelRef


MAX_STOPS = 16
"""Most stop sequences one generation takes (each is searched for after every token)."""


def check_stops(value: Any) -> list[str]:
    """Stop sequences as a list: one str or a list of non-empty strings.

    An empty stop would match everywhere (every generation would end after a token or two), so it is
    refused rather than ignored.

    Raises:
        InvalidInputError: Naming what is wrong with ``value``.
    """
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list | tuple):
        raise InvalidInputError(f"stop must be a string or a list of strings, not {type(value).__name__}")
    bad = [s for s in stops if not isinstance(s, str) or not s]
    if bad:
        raise InvalidInputError(
            f"stop sequences must be non-empty strings; got {bad[0]!r} in {list(stops)!r} "
            "(an empty stop would end every generation at once)"
        )
    if len(stops) > MAX_STOPS:
        raise InvalidInputError(f"at most {MAX_STOPS} stop sequences are supported; got {len(stops)}")
    return list(stops)


def _validated_stops(value: Any) -> list[str]:
    try:
        return check_stops(value)
    except InvalidInputError as err:  # pydantic reports ValueErrors with the field's path
        raise ValueError(str(err)) from None


StopSequences = Annotated[list[str], BeforeValidator(_validated_stops)]
"""A pydantic field of stop sequences, checked by :func:`check_stops` (a str is a list of one)."""


class GenerationConfig(BaseModel):
    """How a stage generates.

    Attributes:
        max_new_tokens: Upper bound on generated tokens.
        temperature: 0 means greedy decoding (deterministic); above 0 samples.
        top_p: Nucleus sampling mass when sampling.
        repetition_penalty: Penalty for repeated tokens (1.0 = none). Small models loop without it.
        stop: Stop sequences; generation ends at the first one and the text is cut before it.
        seed: Seed for sampling (0 to 2**32 - 1), for reproducible sampled outputs.
        on_too_long: What to do with a prompt longer than the context window leaves room for:
            ``raise`` a :class:`~langchain_fslm.errors.PromptTooLongError` (default), or
            ``truncate_left``: drop its oldest tokens and warn (``PromptTruncatedWarning``).
    """

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, ge=1.0, le=5.0)
    stop: StopSequences = Field(default_factory=list)
    # engines take 32-bit seeds (llama.cpp) or 64-bit (torch); a larger one would fail in every call
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    on_too_long: Literal["raise", "truncate_left"] = "raise"


class GenerationRequest(BaseModel):
    """One prompt to complete.

    Attributes:
        prompt: The stage's rendered instruction (the engine applies the chat template, if any).
        adapter: Name of a loaded LoRA adapter, or None for the bare base model.
        config: Generation settings.
        system: Optional system message (used where the model has a chat template).
        stage: Name of the stage that sends the request, for error messages (None outside a stage).
        constraint: What the completion may be (a JSON schema, regex or grammar), enforced while decoding
            by an engine whose ``capabilities().constrained`` is true; None for free text. An engine that
            cannot constrain ignores it (the stage's validator still checks the text).
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str
    adapter: str | None = None
    config: GenerationConfig = Field(default_factory=GenerationConfig)
    system: str | None = None
    stage: str | None = None
    constraint: OutputConstraint | None = None


class Generation(BaseModel):
    """What an engine returns for one request.

    ``finish_reason`` is ``"stop"`` when the model ended (end of sequence, a stop sequence, or a constrained
    text complete) and ``"length"`` when the token budget ran out first (under a constraint: the text is
    unfinished and must not be taken as valid).
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine can do beyond generating text, so callers ask instead of testing its class.

    Attributes:
        loglikelihood: :meth:`Engine.loglikelihood` scores continuations (lm-eval, held-out scoring).
        local_adapters: Adapters are weights held in this process, shared by every stack on the engine
            and freed by :meth:`Engine.release_adapter` (a server loads its own copies instead).
        token_counts_exact: :meth:`Engine.count_tokens` and :meth:`Engine.token_ids` use the model's
            own tokenizer (else they are an estimate).
        compile_decode: :meth:`Engine.enable_compile_decode` is available.
        constrained: Generation honours :attr:`GenerationRequest.constraint` (grammar-constrained decoding).
    """

    loglikelihood: bool = False
    local_adapters: bool = False
    token_counts_exact: bool = False
    compile_decode: bool = False
    constrained: bool = False


_DUCK_METHODS = ("generate", "stream", "has_adapter")
"""The methods an object needs to pass ``isinstance(obj, Engine)`` without subclassing it."""


class _EngineMeta(ABCMeta):
    """ABCMeta that also accepts instances answering the duck methods (through ``__getattr__`` too).

    The former ``runtime_checkable`` Protocol looked the methods up on the instance, so wrappers that
    forward attributes to an inner engine passed; ``__subclasshook__`` alone sees only the class.
    """

    def __instancecheck__(cls, instance: Any) -> bool:
        if super().__instancecheck__(instance):
            return True
        return cls is Engine and all(callable(getattr(instance, m, None)) for m in _DUCK_METHODS)


class Engine(metaclass=_EngineMeta):
    """Where text is generated. Implementations must be safe to call from several threads.

    Subclasses implement generation, prompt rendering and token counting, and the adapter registry;
    the scoring and compilation extras default to "unsupported" and are announced by
    :meth:`capabilities`. An object with ``generate``, ``stream`` and ``has_adapter`` also counts as an
    engine for ``isinstance`` (test doubles, wrappers); code that needs more than those three asks
    :func:`langchain_fslm.engine.registry.capabilities_of` rather than the object itself.

    Attributes:
        kind: ``"local"`` (runs in this process) or ``"remote"`` (calls a server); what a stack's
            manifest records as the stage ``backend``.
        base_ref: The base model the engine runs, where it knows it (None otherwise).
    """

    kind: ClassVar[str] = "local"
    base_ref: BaseModelRef | None = None

    @classmethod
    def __subclasshook__(cls, other: type) -> bool:
        # Duck typing keeps the small fakes of the test-suite (and user wrappers) working as before,
        # when Engine was a runtime-checkable Protocol of these three methods.
        if cls is Engine and all(any(m in vars(k) for k in other.__mro__) for m in _DUCK_METHODS):
            return True
        return NotImplemented

    # ----------------------------------------------------------------------------- generation
    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Complete every request (batched where the engine can), in order."""

    @abstractmethod
    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Yield the completion of one request as text pieces (they join to what generate returns)."""

    # ----------------------------------------------------------------------------- prompts and tokens
    @abstractmethod
    def render(self, prompt: str, system: str | None = None) -> str:
        """The text the model sees for a stage prompt and optional system message."""

    @abstractmethod
    def token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text``; equals ``len(self.token_ids(text))``."""

    # ----------------------------------------------------------------------------- adapters
    @abstractmethod
    def load_adapter(self, name: str, path: str | Path) -> None:
        """Make the LoRA adapter saved at ``path`` usable under ``name``; each load is one user.

        Raises:
            AdapterError: If the adapter is missing, broken or does not fit.
        """

    @abstractmethod
    def release_adapter(self, name: str) -> None:
        """Give back one :meth:`load_adapter` of ``name``; the last one forgets it.

        Raises:
            AdapterError: If no adapter of that name is loaded.
        """

    @abstractmethod
    def save_adapter(self, name: str, folder: str | Path) -> None:
        """Write a loaded adapter to ``folder`` in peft format.

        Raises:
            AdapterError: If no adapter of that name is loaded.
        """

    @abstractmethod
    def has_adapter(self, name: str) -> bool:
        """Whether an adapter of that name is loaded."""

    # ----------------------------------------------------------------------------- extras
    def capabilities(self) -> EngineCapabilities:
        """What this engine supports beyond generation (default: none of the extras)."""
        return EngineCapabilities()

    def model_name(self, adapter: str | None) -> str:
        """The model's name for traces and usage: the base model's source, plus the adapter."""
        base = self.base_ref.source if self.base_ref is not None else type(self).__name__
        return f"{base}+{adapter}" if adapter else str(base)

    def loglikelihood(
        self, pairs: Sequence[tuple[str, str]], adapter: str | None = None, batch_size: int = 8
    ) -> list[tuple[float, bool, int]]:
        """Log-probability of each continuation given its context.

        Args:
            pairs: ``(context, continuation)`` texts.
            adapter: Adapter to score with, or None for the base model.
            batch_size: Rows per forward pass.

        Returns:
            Per pair: summed log-probability, whether the continuation is the greedy one, and its
            number of tokens.

        Raises:
            FSLMError: If the engine cannot score (see ``capabilities().loglikelihood``).
        """
        raise FSLMError(
            f"{type(self).__name__} cannot score log-likelihoods; use a local engine (transformers)."
        )

    def check_constraint(self, constraint: OutputConstraint, stage: str | None = None) -> None:
        """Compile (and cache) ``constraint`` now, so a bad one fails before any generation.

        The default accepts everything: an engine that cannot constrain leaves checking to the stage's
        validator.

        Raises:
            ConstraintError: Naming the stage and the constraint, if this engine cannot use it.
        """

    def longest_token_chars(self, alphabet: frozenset[str] | None = None) -> int | None:
        """Characters of the longest vocabulary token made only of ``alphabet`` (None: any characters).

        It bounds what a token budget can write (see ``constraint.check_budget``); None: unknown.
        """
        return None

    def enable_compile_decode(self) -> None:
        """Turn compiled decoding on, where the engine has it (see ``capabilities().compile_decode``).

        Raises:
            ValueError: If the engine has no compiled decoding.
        """
        raise ValueError(
            f"compile_decode=True compiles the decoding of local stages on a LocalEngine; "
            f"{type(self).__name__} has no compiled decoding."
        )


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
