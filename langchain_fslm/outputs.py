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
    """Base class of stage output types. Subclasses parse from and render to plain text.

    Attributes:
        type_name: The name manifests use for the type.
        output_constraint: What a stage of this type may generate (see :meth:`constraint`); None for free
            text. :func:`register_output_type` can set it.
        accepts_cut: Whether a constrained text the token budget cut may still be valid (a grammar with a
            free-text branch, whose parser refuses an unfinished call itself); False: a cut text is refused
            before parsing.
    """

    model_config = ConfigDict(extra="forbid")

    type_name: ClassVar[str] = "text"
    output_constraint: ClassVar[OutputConstraint | None] = None
    accepts_cut: ClassVar[bool] = False

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
        could not enforce it. The default is the class's ``output_constraint``.
        """
        return cls.output_constraint

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


INTENT_PATTERN = (
    r"The request asks (?:for|to|about|how|what|why|which|who|whether|if|me to) [^\n.!?]{4,120}\."
)
"""What an intent may be while decoding: one sentence that describes the request ("The request asks for ...",
"... how ...", "... me to ..."), at most about 150 characters, with no other sentence end inside it. The
frame keeps the stage in its role: unframed, the zero-shot 135M model answered the request in most intents;
a model that writes a second sentence has started to answer too."""

_SENTENCE_END = re.compile(r"[.!?]\s+\S")
_BULLET_LINE = r"- [^\n]{3,90}"
KEY_POINTS_PATTERN = rf"(?:{_BULLET_LINE}\n){{1,3}}{_BULLET_LINE}\n?"
"""What key points may be while decoding: two to four lines, each starting with ``- ``."""


class Intent(Text):
    """What the request asks for, in one sentence (not its answer).

    Generated under :data:`INTENT_PATTERN`; :meth:`from_text` accepts one line of one sentence, ending in
    ``.``, ``?`` or ``!`` (after an optional ``Intent:`` label).
    """

    type_name: ClassVar[str] = "intent"
    output_constraint: ClassVar[OutputConstraint | None] = OutputConstraint.from_regex(
        INTENT_PATTERN, name="intent: one sentence"
    )

    @classmethod
    def from_text(cls, text: str) -> Intent:  # noqa: D102
        cleaned = _clean(text)
        if not cleaned:
            raise ValueError("no sentence describing the request")
        if "\n" in cleaned:
            raise ValueError("an intent is one line (the text has several)")
        if not 8 <= len(cleaned) <= 200:
            raise ValueError(f"an intent is one sentence of 8 to 200 characters, not {len(cleaned)}")
        if cleaned[-1] not in ".?!":
            raise ValueError("an intent is one finished sentence (it must end with '.', '?' or '!')")
        if _SENTENCE_END.search(cleaned):
            raise ValueError("an intent is one sentence (the text has several)")
        return cls(text=cleaned)


class KeyPoints(StageOutput):
    """The two to four points a good answer must cover.

    Generated under :data:`KEY_POINTS_PATTERN`; :meth:`from_text` accepts two to four bulleted lines
    (``-``, ``*``, ``•`` or ``1.`` bullets, rewritten as ``- ``) and nothing else.
    """

    type_name: ClassVar[str] = "key_points"
    output_constraint: ClassVar[OutputConstraint | None] = OutputConstraint.from_regex(
        KEY_POINTS_PATTERN, name="key_points: 2-4 lines starting with '- '"
    )
    points: list[str] = Field(min_length=1)

    @classmethod
    def from_text(cls, text: str) -> KeyPoints:  # noqa: D102
        lines = [line for line in text.splitlines() if line.strip()]
        matches = [_BULLET.match(line) for line in lines]
        loose = [line.strip() for line, m in zip(lines, matches, strict=True) if m is None]
        if loose:
            raise ValueError(f"every key point is a line starting with '- '; this one is not: {loose[0]!r}")
        points = [m.group(1) for m in matches if m is not None]
        if not 2 <= len(points) <= 4:
            raise ValueError(f"expected two to four key points, found {len(points)}")
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


def register_output_type(
    output_type: type[StageOutput] | None = None, *, constraint: OutputConstraint | None = None
) -> Any:
    """Register a custom output type so stack manifests can name it (usable as a decorator).

    Only registered types can be named in a manifest: loading a stack never imports code.

    Args:
        output_type: The type (omit it to use ``@register_output_type(constraint=...)`` as a decorator).
        constraint: What stages of the type may generate (sets its ``output_constraint``); the type's
            :meth:`StageOutput.from_text` must accept every text of it and reject the rest.

    Returns:
        The type (or, without one, the decorator).
    """

    def register(cls: type[StageOutput]) -> type[StageOutput]:
        if constraint is not None:
            cls.output_constraint = constraint
        OUTPUT_TYPES[cls.type_name] = cls
        return cls

    return register if output_type is None else register(output_type)


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
            return "Write two to four points, one per line, each starting with '- '."
        if issubclass(self.output_type, Intent):
            return "Write one sentence."
        return "Write plain text."

    @property
    def OutputType(self) -> Any:  # noqa: N802 - LangChain's name
        """The parsed type."""
        return self.output_type
