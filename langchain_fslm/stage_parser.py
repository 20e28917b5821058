"""The last link of a stage (``prompt | small LM | parser``): the model's reply as a :class:`StageResult`.

:class:`StageParser` is a LangChain transform output parser, so one stage serves both ways LCEL calls
it: ``invoke`` parses the whole reply (an ``AIMessage`` with its token usage) into a
:class:`StageResult`, ``stream`` passes the text on piece by piece as the model writes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.output_parsers import BaseTransformOutputParser
from langchain_core.outputs import Generation
from pydantic import BaseModel, ConfigDict

from langchain_fslm.errors import StageOutputError
from langchain_fslm.outputs import Answer, Draft, StageOutput, StageOutputParser, Text, TextStream

__all__ = ["StageParser", "StageResult", "Unparsed"]


class Unparsed(StageOutputError):
    """An attempt's text did not parse: the stage's fallbacks retry (or pass it on, or raise it).

    A subclass of its own, so the last fallback can raise the plain :class:`StageOutputError` of the
    *last* attempt (LCEL's fallbacks, when all fail, re-raise the first error they handled).
    """

    def plain(self) -> StageOutputError:
        """The same error as a plain :class:`StageOutputError`."""
        return StageOutputError(
            self.stage,
            self.raw,
            self.reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_s=self.latency_s,
            attempts=self.attempts,
        )


class StageResult(BaseModel):
    """What one stage produced: the raw text beside the parsed value.

    Attributes:
        stage: Stage name.
        raw: The generated text, as the model wrote it (stop sequences cut).
        value: The parsed output, or None when parsing failed under ``on_parse_error="pass_raw"``.
        parse_error: Why parsing failed, when it did.
        prompt_tokens: Tokens of the rendered prompt.
        completion_tokens: Tokens generated (all attempts).
        latency_s: Generation time of the stage (all attempts), seconds.
        attempts: Number of generations (1 + retries used).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stage: str
    raw: str
    value: StageOutput | None = None
    parse_error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1

    @property
    def text(self) -> str:
        """The text handed to the next stage: the parsed value's text form, else the raw text."""
        return self.value.as_text() if self.value is not None else self.raw.strip()

    @classmethod
    def from_error(cls, error: StageOutputError) -> StageResult:
        """The result of a stage whose output did not parse, handed on raw (``pass_raw``)."""
        return cls(
            stage=error.stage,
            raw=error.raw,
            parse_error=error.reason,
            prompt_tokens=error.prompt_tokens,
            completion_tokens=error.completion_tokens,
            latency_s=error.latency_s,
            attempts=error.attempts,
        )


def reply_counts(message: BaseMessage | None) -> tuple[int, int, float]:
    """``(prompt_tokens, completion_tokens, latency_s)`` of a :class:`~langchain_fslm.SmallLM` reply."""
    usage = getattr(message, "usage_metadata", None) or {}
    latency = float((getattr(message, "response_metadata", None) or {}).get("latency_s", 0.0))
    return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)), latency


def _check_complete(message: BaseMessage | None) -> None:
    """Refuse a constrained reply the token budget cut short (unfinished, even where it parses).

    An integer or two of four bullets may parse, yet the model had more to write.

    Raises:
        OutputParserException: Naming the constraint and the budget.
    """
    metadata = getattr(message, "response_metadata", None) or {}
    if metadata.get("constraint") and metadata.get("finish_reason") == "length":
        raise OutputParserException(
            f"the token budget ran out before the text of {metadata['constraint']} was complete "
            "(raise the stage's max_new_tokens)"
        )


class _RawStream:
    """Passes streamed pieces through unchanged."""

    def feed(self, piece: str) -> str:
        return piece

    def finish(self) -> str:
        return ""


class StageParser(BaseTransformOutputParser[Any]):
    """Parses a stage's reply into a :class:`StageResult` (invoke) or passes its text on (stream).

    Args:
        stage: Stage name (for results and errors).
        output_type: The :class:`StageOutput` type the text must parse into.
        on_parse_error: What a *stream* does when the finished text does not parse: ``raise`` a
            :class:`StageOutputError` or ``pass_raw`` (keep it, flagged). ``invoke`` always raises
            ``StageOutputError`` (an ``OutputParserException``): the stage's fallbacks retry or pass
            it on, since only they can regenerate.
        clean_stream: Stream free-text types (``text``, ``draft``, ``answer``) cleaned as ``invoke``
            cleans them (a stack's answer), instead of the raw text (a stage alone).
        emit_result: End a stream with the :class:`StageResult` after the text pieces (inside a
            stack, whose last step emits the handoff from it).
    """

    stage: str
    output_type: type[StageOutput] = Text
    on_parse_error: str = "raise"
    clean_stream: bool = False
    emit_result: bool = False

    @property
    def _type(self) -> str:
        return "fslm_stage"

    @property
    def OutputType(self) -> Any:  # noqa: N802 - LangChain's name
        """The parsed type."""
        return StageResult

    def parse(self, text: str) -> StageResult:
        """Parse plain text (no token counts) into a :class:`StageResult`."""
        return self.parse_result([Generation(text=text)])

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> StageResult:
        """Parse the model's reply, with the reply's token counts.

        Raises:
            StageOutputError: If the text does not parse into ``output_type`` (carries the counts).
        """
        reply = result[0]
        return self.settle(reply.text, getattr(reply, "message", None))

    def settle(
        self, raw: str, message: BaseMessage | None, prior: StageOutputError | None = None
    ) -> StageResult:
        """The result of one attempt (``prior``: the failed attempts before it, whose counts add up).

        Raises:
            StageOutputError: If ``raw`` does not parse, with the counts of every attempt so far.
        """
        prompt_tokens, completion_tokens, latency = reply_counts(message)
        attempts = 1
        if prior is not None:
            completion_tokens += prior.completion_tokens
            latency += prior.latency_s
            attempts += prior.attempts
        try:
            if not self.output_type.accepts_cut:
                _check_complete(message)
            value = StageOutputParser(output_type=self.output_type).parse(raw)
        except OutputParserException as err:
            reason = str(err).split("\nFor troubleshooting")[0]  # the error adds its own link again
            raise Unparsed(
                self.stage,
                raw,
                reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_s=latency,
                attempts=attempts,
            ) from err
        return StageResult(
            stage=self.stage,
            raw=raw,
            value=value,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=latency,
            attempts=attempts,
        )

    # ----------------------------------------------------------------------------- streaming
    def _cleaner(self) -> TextStream | _RawStream:
        # free text streams exactly what invoke returns; other types (one-line intents, re-bulleted
        # key points, JSON) stream the raw text, which their parser reads at the end
        if self.clean_stream and self.output_type in (Text, Draft, Answer):
            return TextStream()
        return _RawStream()

    def _transform(self, input: Iterator[str | BaseMessage]) -> Iterator[Any]:
        stream = _ReplyStream(self)
        for chunk in input:
            if text := stream.feed(chunk):
                yield text
        yield from stream.end()

    async def _atransform(self, input: AsyncIterator[str | BaseMessage]) -> AsyncIterator[Any]:
        stream = _ReplyStream(self)
        async for chunk in input:
            if text := stream.feed(chunk):
                yield text
        for item in stream.end():
            yield item


class _ReplyStream:
    """A streamed reply going through a :class:`StageParser`: text out as it comes, the result at the end."""

    def __init__(self, parser: StageParser) -> None:
        self.parser = parser
        self.cleaner = parser._cleaner()
        self.pieces: list[str] = []
        self.reply: AIMessageChunk | None = None  # the chunks so far (the last one carries the usage)

    def feed(self, chunk: str | BaseMessage) -> str:
        """The text to pass on for one chunk (may be empty)."""
        piece, self.reply = _piece(chunk, self.reply)
        self.pieces.append(piece)
        return self.cleaner.feed(piece)

    def end(self) -> Iterator[Any]:
        """What follows the last chunk: held-back text, then the result if the parser emits it.

        Raises:
            StageOutputError: If the text does not parse and the policy is ``raise`` (a streamed text
                is final: no retries).
        """
        if tail := self.cleaner.finish():
            yield tail
        try:
            result = self.parser.settle("".join(self.pieces), self.reply)
        except Unparsed as err:
            if self.parser.on_parse_error == "raise":
                raise err.plain() from err.__cause__
            result = StageResult.from_error(err)
        if self.parser.emit_result:
            yield result


def _piece(chunk: str | BaseMessage, reply: AIMessageChunk | None) -> tuple[str, AIMessageChunk | None]:
    """A streamed chunk's text, and the reply so far (its last chunk carries the usage)."""
    if isinstance(chunk, AIMessageChunk):
        return chunk.text, chunk if reply is None else reply + chunk
    if isinstance(chunk, BaseMessage):
        return chunk.text, reply
    return chunk, reply
