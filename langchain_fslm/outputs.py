"""Typed stage outputs (pydantic) and the LangChain output parser that builds them from plain text.

Stages hand plain natural language to each other; each output type knows how to read that text
(:meth:`StageOutput.from_text`) and how to write it back for the next stage (:meth:`StageOutput.as_text`).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from langchain_core.exceptions import OutputParserException
from langchain_core.output_parsers import BaseOutputParser
from pydantic import BaseModel, ConfigDict, Field

from langchain_fslm.engine.constraint import OutputConstraint

_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|\(\d+\))\s+(.*\S)\s*$")
# labels a model may put before its text ("Answer: ..."); parsing drops them
_LABELS = ("task", "intent", "answer", "final answer", "draft")
_PREFIX = re.compile(rf"^\s*(?:{'|'.join(_LABELS)})\s*:\s*", re.IGNORECASE)


def _clean(text: str) -> str:
    """Strip whitespace and a leading ``Answer:``-style label."""
    return _PREFIX.sub("", text.strip(), count=1).strip()


class StageOutput(BaseModel):
    """Base class of stage output types. Subclasses parse from and render to plain text."""

    model_config = ConfigDict(extra="forbid")

    type_name: ClassVar[str] = "text"

    @classmethod
    def from_text(cls, text: str) -> StageOutput:
        """Parse generated text.

        Raises:
            ValueError: If the text does not hold this type (the message says why).
        """
        raise NotImplementedError

    def as_text(self) -> str:
        """The natural-language form handed to the next stage."""
        raise NotImplementedError

    @classmethod
    def constraint(cls) -> OutputConstraint | None:
        """What the stage may generate, enforced while decoding where the engine can (None: free text).

        :meth:`from_text` stays the validator: it rejects text outside the constraint when an engine
        could not enforce it.
        """
        return None

    def __str__(self) -> str:
        return self.as_text()


class Text(StageOutput):
    """Free text (any non-empty answer)."""

    type_name: ClassVar[str] = "text"
    text: str = Field(min_length=1)

    @classmethod
    def from_text(cls, text: str) -> Text:  # noqa: D102
        cleaned = _clean(text)
        if not cleaned:
            raise ValueError("the text is empty")
        return cls(text=cleaned)

    def as_text(self) -> str:  # noqa: D102
        return self.text


class TextStream:
    r"""Cleans a streamed free-text reply as :meth:`Text.from_text` cleans a whole one.

    The start is held back until it is clear whether it is an ``Answer:``-style label (dropped) or
    text, and trailing whitespace is held back until more text follows it (dropped at the end), so the
    pieces add up to what ``invoke`` returns for the same reply: the pieces ``"Ans"``, ``"wer: Paris"``,
    ``" is"``, ``" the capital.\n"`` come out as ``""``, ``"Paris"``, ``" is"``, ``" the capital."``.
    """

    def __init__(self) -> None:
        self._head = ""  # text before the label question is settled
        self._started = False
        self._space = ""  # trailing whitespace held back

    def feed(self, piece: str) -> str:
        """The cleaned text this piece adds (may be empty)."""
        if not self._started:
            self._head += piece
            head = self._head.lstrip()
            match = _PREFIX.match(head)
            if match and match.end() == len(head):  # a whole label: the text may still follow
                return ""
            if not match and any(label.startswith(head.lower()) for label in _LABELS):
                return ""  # empty, or the start of a label word
            self._started = True
            piece = head[match.end() :] if match else head
        text = self._space + piece
        kept = text.rstrip()
        self._space = text[len(kept) :]
        return kept

    def finish(self) -> str:
        """What is left when the stream ends (only a reply that never got past its label)."""
        return "" if self._started else _clean(self._head)


class Intent(Text):
    """What the request asks for, in one sentence."""

    type_name: ClassVar[str] = "intent"

    @classmethod
    def from_text(cls, text: str) -> Intent:  # noqa: D102
        for line in text.splitlines():
            cleaned = _clean(line)
            if cleaned:
                return cls(text=cleaned)
        raise ValueError("no sentence describing the request")


class KeyPoints(StageOutput):
    """The points a good answer must cover."""

    type_name: ClassVar[str] = "key_points"
    points: list[str] = Field(min_length=1)

    @classmethod
    def from_text(cls, text: str) -> KeyPoints:  # noqa: D102
        lines = [line for line in text.splitlines() if line.strip()]
        points = [m.group(1) for line in lines if (m := _BULLET.match(line))]
        if not points:  # a model that forgets the bullets still wrote the points, one per line
            points = [_clean(line) for line in lines if _clean(line)]
        if not points:
            raise ValueError("no key points found (expected one point per line)")
        return cls(points=points)

    def as_text(self) -> str:  # noqa: D102
        return "\n".join(f"- {p}" for p in self.points)


class Draft(Text):
    """A first full answer."""

    type_name: ClassVar[str] = "draft"


class Answer(Text):
    """The final answer."""

    type_name: ClassVar[str] = "answer"


OUTPUT_TYPES: dict[str, type[StageOutput]] = {
    t.type_name: t for t in (Text, Intent, KeyPoints, Draft, Answer)
}


def register_output_type(output_type: type[StageOutput]) -> type[StageOutput]:
    """Register a custom output type so stack manifests can name it (usable as a decorator).

    Only registered types can be named in a manifest: loading a stack never imports code.
    """
    OUTPUT_TYPES[output_type.type_name] = output_type
    return output_type


def output_type_by_name(name: str) -> type[StageOutput]:
    """Look up a registered output type.

    Raises:
        KeyError: With the known names, if ``name`` is not registered.
    """
    try:
        return OUTPUT_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown output type {name!r}; known: {sorted(OUTPUT_TYPES)}") from None


class StageOutputParser(BaseOutputParser[StageOutput]):
    """Parse a stage's plain-text output into its pydantic type.

    Args:
        output_type: The :class:`StageOutput` subclass to build.
    """

    output_type: type[StageOutput] = Text

    def parse(self, text: str) -> StageOutput:
        """Parse text into ``output_type``.

        Raises:
            OutputParserException: If the text does not hold the type; carries the raw text.
        """
        try:
            return self.output_type.from_text(text)
        except (ValueError, TypeError) as err:
            raise OutputParserException(
                f"Could not parse {self.output_type.__name__}: {err}", llm_output=text
            ) from err

    @property
    def _type(self) -> str:
        return f"fslm_{self.output_type.type_name}"

    def get_format_instructions(self) -> str:
        """Plain-text format hint (stages put format wording in their prompts instead)."""
        if issubclass(self.output_type, KeyPoints):
            return "Write one point per line, each starting with '- '."
        return "Write plain text."

    @property
    def OutputType(self) -> Any:  # noqa: N802 - LangChain's name
        """The parsed type."""
        return self.output_type
