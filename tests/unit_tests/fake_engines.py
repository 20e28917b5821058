"""Shared test doubles of the engine contract (plumbing tests only: they write scripted text)."""

from __future__ import annotations

from collections.abc import Callable

from langchain_fslm.engine.base import EngineCapabilities, Generation, GenerationRequest
from langchain_fslm.engine.constraint import OutputConstraint


class ConstrainedFake:
    """An engine that says it constrains decoding, records what it is asked, and replies from a script.

    Args:
        texts: Replies in turn (the last one repeats), or a function of the request.
        constrained: What ``capabilities().constrained`` says.

    Attributes:
        requests: Every request received, in order (``constraint``, ``prompt``, ``system``, ``stage``).
        checked: Every ``(constraint, stage)`` given to :meth:`check_constraint`.
    """

    def __init__(
        self, texts: list[str] | Callable[[GenerationRequest], str], *, constrained: bool = True
    ) -> None:
        self.texts = texts
        self.constrained = constrained
        self.requests: list[GenerationRequest] = []
        self.checked: list[tuple[OutputConstraint, str | None]] = []

    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(constrained=self.constrained)

    def check_constraint(self, constraint: OutputConstraint, stage: str | None = None) -> None:
        self.checked.append((constraint, stage))

    def _text(self, request: GenerationRequest) -> str:
        if callable(self.texts):
            return self.texts(request)
        return self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        out = []
        for request in requests:
            self.requests.append(request)
            text = self._text(request)
            out.append(
                Generation(
                    text=text, prompt_tokens=3, completion_tokens=len(text.split()), finish_reason="stop"
                )
            )
        return out

    def stream(self, request: GenerationRequest):
        yield from self.generate([request])[0].text

    def render(self, prompt: str, system: str | None = None) -> str:
        return f"{system or ''}\n{prompt}"

    def token_ids(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def has_adapter(self, name: str) -> bool:
        return False

    @property
    def last(self) -> GenerationRequest:
        """The last request."""
        return self.requests[-1]
