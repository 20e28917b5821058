"""Turning what an LLM accepts (str, PromptValue, messages) into the stack's input text, with checks.

Policy (see docs/reliability.md): empty or whitespace-only input, unsupported types, unsupported
message roles and invalid surrogates are refused with :class:`InvalidInputError`; control characters
other than tab, newline and carriage return are removed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
    get_buffer_string,
)
from langchain_core.prompt_values import PromptValue

from langchain_fslm.errors import InvalidInputError

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
SUPPORTED_MESSAGES = (HumanMessage, SystemMessage, AIMessage, ToolMessage)
_CALL_BLOCKS = ("tool_use", "tool_call", "function_call")
"""Content blocks of an AI message that repeat its ``tool_calls`` (Anthropic-style list content)."""


def clean_text(text: str, *, where: str = "input") -> str:
    """Check and clean one input text.

    Args:
        text: The text.
        where: What the text is, for error messages.

    Returns:
        The text without control characters.

    Raises:
        InvalidInputError: If it is empty, whitespace only, or holds invalid surrogates.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInputError(
            f"The {where} holds an invalid character at position {err.start} (a lone surrogate); "
            "decode your text properly before passing it."
        ) from None
    text = _CONTROL.sub("", text)
    if not _visible(text):
        raise InvalidInputError(
            f"The {where} is empty (or only whitespace and invisible characters such as zero-width "
            "spaces or a byte-order mark); give the stack a request."
        )
    return text


def _visible(text: str) -> bool:
    """Whether ``text`` has a character that shows: not whitespace, not a format character (Cf).

    Zero-width spaces, joiners and BOMs are kept in the text (emoji need joiners) but do not make a
    request on their own.
    """
    return any(not c.isspace() and unicodedata.category(c) != "Cf" for c in text)


def messages_to_text(messages: Sequence[BaseMessage]) -> str:
    """Render chat messages as the stack's input text.

    A single human message becomes its own content; a conversation becomes a ``Role: text`` transcript.
    An AI message's tool calls are written as the model writes a call (``{"name": ..., "arguments":
    ...}``, one per line), and a tool message as ``Tool result (name): ...`` (``Tool error`` when its
    ``status`` is ``error``).

    Raises:
        InvalidInputError: For message roles a stack cannot read (function, custom roles).
    """
    if not messages:
        raise InvalidInputError("The input is an empty list of messages.")
    for i, message in enumerate(messages):
        if not isinstance(message, SUPPORTED_MESSAGES):
            raise InvalidInputError(
                f"Message {i} has role {message.type!r}; a stack reads only system, human, ai and "
                "tool messages."
            )
        if not isinstance(message.content, str):
            calls = isinstance(message, AIMessage) and bool(message.tool_calls)
            if any(
                not (isinstance(b, str) or (isinstance(b, dict) and b.get("type") == "text"))
                and not (calls and isinstance(b, dict) and b.get("type") in _CALL_BLOCKS)
                for b in message.content
            ):
                raise InvalidInputError(f"Message {i} holds non-text content; a stack reads text only.")
            texts = [b for b in message.content if isinstance(b, dict) and b.get("type") == "text"]
            if any(not isinstance(b.get("text"), str) for b in texts):
                raise InvalidInputError(
                    f"Message {i} has a text block without a 'text' string: {message.content!r:.120}"
                )
    if len(messages) == 1 and isinstance(messages[0], HumanMessage):
        return messages[0].text
    return get_buffer_string([_plain(m) for m in messages])


def _plain(message: BaseMessage) -> BaseMessage:
    """A message whose tool calls or tool result are written out as text, for the transcript."""
    if isinstance(message, ToolMessage):
        kind = "error" if message.status == "error" else "result"
        role = f"Tool {kind} ({message.name})" if message.name else f"Tool {kind}"
        return ChatMessage(role=role, content=message.text)
    if isinstance(message, AIMessage) and message.tool_calls:
        from langchain_fslm.tools import call_json

        calls = [call_json(c["name"], c["args"]) for c in message.tool_calls]
        return AIMessage(content="\n".join([t for t in (message.text.strip(),) if t] + calls))
    return message


def input_to_text(value: Any) -> str:
    """Normalise LLM-style input to the stack's input text (see :func:`_input_to_text`).

    Raises:
        InvalidInputError: For unsupported types or contents, naming the problem.
    """
    try:
        return _input_to_text(value)
    except RecursionError:  # {"input": {"input": ...}} thousands deep, or messages nested as deep
        raise InvalidInputError("The input is nested too deeply to be a request.") from None


def _input_to_text(value: Any) -> str:
    """Normalise LLM-style input to the stack's input text.

    Args:
        value: A str, a PromptValue, a list of messages (or message-like tuples/dicts), or a mapping
            with an ``input`` key.

    Returns:
        The cleaned input text.

    Raises:
        InvalidInputError: For unsupported types or contents, naming the problem.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, PromptValue):
        text = messages_to_text(value.to_messages())
    elif isinstance(value, Mapping):
        if "input" not in value:
            raise InvalidInputError(
                f"A mapping input needs an 'input' key; got keys {sorted(map(str, value))}. "
                "Put a prompt template before the stack to build the text."
            )
        return _input_to_text(value["input"])
    elif isinstance(value, Sequence) and not isinstance(value, bytes):
        try:
            messages = convert_to_messages(value)
        except (ValueError, TypeError, KeyError, NotImplementedError) as err:
            raise InvalidInputError(f"The input list is not a list of messages: {err}") from None
        text = messages_to_text(messages)
    else:
        raise InvalidInputError(
            f"A stack takes a str, a PromptValue or a list of messages, not {type(value).__name__}."
        )
    return clean_text(text)
