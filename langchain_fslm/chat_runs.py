"""The callback plumbing of :class:`~langchain_fslm.ChatFSLM`: the stack's runs as children of the chat run.

A chat model's ``_stream`` is called without its run's manager, so ``ChatFSLM.stream`` fixes the run's
callbacks and id first (:class:`StreamRun`) and ``_stream`` makes the stack's runs its children with
:func:`child_config`; :class:`TokenTally` sums the stages' tokens for a streamed reply's usage.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManager,
)
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig, ensure_config

from langchain_fslm.engine.base import check_stops
from langchain_fslm.handoff import HANDOFF_EVENT
from langchain_fslm.stack_steps import StackOutput
from langchain_fslm.tools import ToolReply, ToolSetting

if TYPE_CHECKING:
    from langchain_fslm.chain import FSLMChain

__all__ = [
    "STREAM_RUN",
    "CallSettings",
    "CallStacks",
    "call_settings",
    "start_stream_run",
    "StreamRun",
    "TokenTally",
    "child_config",
    "last_chunk",
    "reply_result",
    "stack_usage",
    "tool_calls_of",
    "tool_reply_chunk",
]


class TokenTally(BaseCallbackHandler):
    """Sums the token counts of a stack's handoff events (the usage of a streamed reply)."""

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Add one handoff's tokens."""
        if name == HANDOFF_EVENT:
            self.input_tokens += int(data["prompt_tokens"])
            self.output_tokens += int(data["completion_tokens"])

    def usage(self) -> UsageMetadata:
        """The totals as LangChain usage metadata."""
        total = self.input_tokens + self.output_tokens
        return UsageMetadata(
            input_tokens=self.input_tokens, output_tokens=self.output_tokens, total_tokens=total
        )


STREAM_RUN = "fslm_stream_run"
"""Keyword that carries a streamed call's :class:`StreamRun` from ``stream``/``astream`` to ``_stream``."""


@dataclass
class StreamRun:
    """The callbacks and run id of a streamed chat-model call, known before LangChain starts the run.

    langchain-core calls ``_stream`` without the run's manager; ``stream``/``astream`` configure the
    callbacks themselves (so both sides share the same handler objects, tracers included) and fix the
    run id, so the stack's runs can still be made children of the chat-model run.
    """

    manager: CallbackManager | AsyncCallbackManager
    run_id: UUID

    @property
    def inheritable_handlers(self) -> list[BaseCallbackHandler]:  # noqa: D102
        return self.manager.inheritable_handlers

    @property
    def inheritable_tags(self) -> list[str]:  # noqa: D102
        return self.manager.inheritable_tags

    @property
    def inheritable_metadata(self) -> dict[str, Any]:  # noqa: D102
        return self.manager.inheritable_metadata


def child_config(run_manager: Any, extra: list[BaseCallbackHandler] | None = None) -> RunnableConfig:
    """Config whose callbacks make the stack's runs children of this chat-model run or :class:`StreamRun`."""
    if run_manager is None:
        return RunnableConfig(callbacks=list(extra or []))
    is_async = isinstance(run_manager, AsyncCallbackManagerForLLMRun) or isinstance(
        getattr(run_manager, "manager", None), AsyncCallbackManager
    )
    manager_cls = AsyncCallbackManager if is_async else CallbackManager
    manager = manager_cls(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    for handler in extra or []:
        manager.add_handler(handler, inherit=True)
    return RunnableConfig(callbacks=manager)


def stack_usage(output: StackOutput) -> UsageMetadata:
    """A stack output's token totals as LangChain usage metadata."""
    usage = output.usage
    return UsageMetadata(
        input_tokens=usage["input_tokens"],
        output_tokens=usage["output_tokens"],
        total_tokens=usage["total_tokens"],
    )


@dataclass(frozen=True)
class CallSettings:
    """A chat call's settings for the stack's last stage (``handoffs``: return the whole StackOutput)."""

    stop: tuple[str, ...]
    temperature: float | None
    max_tokens: int | None
    handoffs: bool
    tools: ToolSetting | None = None


class CallStacks:
    """The stacks a :class:`~langchain_fslm.ChatFSLM` runs, one per call settings, built once each.

    A stack is an LCEL sequence built when it is made; a chat call with its own ``temperature`` or
    ``stop`` runs a variant of it, kept here instead of rebuilt per call. Entries remember the stack and
    structured-output setting they came from (pydantic's ``model_copy`` shares this cache with copies).
    """

    def __init__(self, limit: int = 16) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.entries: dict[CallSettings, tuple[Any, Any, FSLMChain]] = {}

    def get(self, stack: FSLMChain, structured: Any, settings: CallSettings) -> FSLMChain:
        """The variant of ``stack`` for ``settings`` (``structured``: ChatFSLM's structured output)."""
        with self.lock:
            source, kind, built = self.entries.get(settings, (None, None, None))
        if built is None or source is not stack or kind is not structured:
            built = _variant(stack, structured, settings)
            with self.lock:
                if len(self.entries) >= self.limit:
                    self.entries.clear()
                self.entries[settings] = (stack, structured, built)
        return built


def _variant(stack: FSLMChain, structured: Any, settings: CallSettings) -> FSLMChain:
    if structured is not None:  # a structured.Structured setting
        typed = structured.stage(stack.stages[-1])
        stack = stack.model_copy(update={"stages": [*stack.stages[:-1], typed]})
    if settings.tools is not None:
        stack = stack.model_copy(
            update={"stages": [*stack.stages[:-1], settings.tools.stage(stack.stages[-1])]}
        )
    stops = [*stack.stages[-1].generation.stop, *settings.stop]
    return stack.with_generation(
        temperature=settings.temperature, max_new_tokens=settings.max_tokens, stop=list(dict.fromkeys(stops))
    ).with_handoffs(settings.handoffs)


def reply_result(output: StackOutput, model: str) -> ChatResult:
    """A stack's output as a chat model's result (usage: every stage's tokens)."""
    calls = tool_calls_of(output)
    message = AIMessage(
        content="" if calls else output.output,
        tool_calls=calls,
        usage_metadata=stack_usage(output),
        response_metadata={"model_name": model, "model_provider": "fslm", "stages": list(output.stages)},
    )
    info = {"finish_reason": "tool_calls" if calls else "stop", "attempts": output.results[-1].attempts}
    return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])


def tool_calls_of(output: StackOutput) -> list[Any]:
    """The tool calls of a stack's reply (its last stage's :class:`ToolReply`), each with a new id."""
    value = output.results[-1].value if output.results else None
    return value.tool_calls() if isinstance(value, ToolReply) else []


def tool_reply_chunk(output: StackOutput, model: str) -> ChatGenerationChunk:
    """A whole reply of a chat with tools as one streamed chunk (a call, or text), with its usage."""
    message = reply_result(output, model).generations[0].message
    calls = [
        tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
        for i, c in enumerate(getattr(message, "tool_calls", []))
    ]
    chunk = AIMessageChunk(
        content=message.content,
        tool_call_chunks=calls,
        usage_metadata=stack_usage(output),
        response_metadata={"model_name": model, "model_provider": "fslm"},
        chunk_position="last",
    )
    return ChatGenerationChunk(
        message=chunk, generation_info={"finish_reason": "tool_calls" if calls else "stop"}
    )


def last_chunk(tally: TokenTally, model: str) -> ChatGenerationChunk:
    """The closing chunk of a streamed reply, with the usage of every stage."""
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content="",
            usage_metadata=tally.usage(),
            response_metadata={"model_name": model, "model_provider": "fslm"},
            chunk_position="last",
        ),
        generation_info={"finish_reason": "stop"},
    )


CALL_KWARGS = frozenset(
    {"temperature", "max_tokens", "model", "tools", "tool_choice"}
    | {"stream", "ls_structured_output_format", "structured_output_format"}
)
"""Keyword arguments ChatFSLM accepts per call (``bind_tools`` binds ``tools`` and ``tool_choice``;
LangChain itself passes the last three)."""


def call_settings(chat: Any, stop: list[str] | None, handoffs: bool, kwargs: dict[str, Any]) -> CallSettings:
    """A chat call's settings for the last stage, from the chat's own and the call's arguments.

    Raises:
        ValueError: For ``n`` other than 1 (one reply per call).
        TypeError: For arguments a stack cannot take, naming them.
    """
    kwargs = {k: v for k, v in kwargs.items() if k != STREAM_RUN}
    n = kwargs.pop("n", 1)
    if n not in (None, 1):
        raise ValueError(f"ChatFSLM returns one reply per call; n={n!r} is not supported (use batch()).")
    unknown = sorted(set(kwargs) - CALL_KWARGS)
    if unknown:
        raise TypeError(
            f"ChatFSLM got unsupported keyword argument(s) {unknown}; per call it takes "
            "stop, temperature, max_tokens and model (tools: bind_tools())."
        )
    tools = kwargs.get("tools")
    return CallSettings(
        stop=(*(chat.stop or ()), *check_stops(stop)),
        temperature=kwargs.get("temperature", chat.temperature),
        max_tokens=kwargs.get("max_tokens", chat.max_tokens),
        handoffs=handoffs,
        tools=ToolSetting.of(tools, kwargs.get("tool_choice")) if tools else None,
    )


def start_stream_run(
    chat: Any, config: RunnableConfig | None, is_async: bool
) -> tuple[RunnableConfig, StreamRun]:
    """The config to start a streamed chat call with (its callbacks configured, its run id fixed)."""
    config = ensure_config(config)
    configure = AsyncCallbackManager.configure if is_async else CallbackManager.configure
    manager = configure(
        config.get("callbacks"),
        chat.callbacks,
        chat.verbose,
        config.get("tags"),
        chat.tags,
        config.get("metadata"),
        chat.metadata,
    )
    run_id = config.get("run_id") or uuid4()
    return {**config, "callbacks": manager, "run_id": run_id}, StreamRun(manager, run_id)


def ls_params(chat: Any, params: Any, stop: list[str] | None, kwargs: dict[str, Any]) -> Any:
    """LangSmith's parameters of a ``ChatFSLM`` call: provider, model, and the last stage's settings."""
    params["ls_provider"] = "fslm"
    params["ls_model_name"] = kwargs.get("model") or chat._model
    params["ls_model_type"] = "chat"
    temperature = kwargs.get("temperature", chat.temperature)
    if temperature is not None:
        params["ls_temperature"] = temperature
    max_tokens = kwargs.get("max_tokens", chat.max_tokens)
    if max_tokens is not None:
        params["ls_max_tokens"] = max_tokens
    stops = [*(chat.stop or []), *check_stops(stop)]
    if stops:
        params["ls_stop"] = stops
    return params
