"""``ChatFSLM``: the chat-model face of a stack, for places that require a ``BaseChatModel``."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any
from uuid import UUID, uuid4

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough, ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_fslm.chain import FSLMChain, StackOutput
from langchain_fslm.handoff import HANDOFF_EVENT


class _TokenTally(BaseCallbackHandler):
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


_STREAM_RUN = "fslm_stream_run"
"""Keyword that carries a streamed call's :class:`_StreamRun` from ``stream``/``astream`` to ``_stream``."""


@dataclass
class _StreamRun:
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


def _child_config(run_manager: Any, extra: list[BaseCallbackHandler] | None = None) -> RunnableConfig:
    """Config whose callbacks make the stack's runs children of this chat-model run or :class:`_StreamRun`."""
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


def _usage(output: StackOutput) -> UsageMetadata:
    usage = output.usage
    return UsageMetadata(
        input_tokens=usage["input_tokens"],
        output_tokens=usage["output_tokens"],
        total_tokens=usage["total_tokens"],
    )


_CALL_KWARGS = frozenset(
    {"temperature", "max_tokens", "model"}
    | {"stream", "ls_structured_output_format", "structured_output_format"}
)
"""Keyword arguments ChatFSLM accepts per call (LangChain itself passes the last three)."""


class ChatFSLM(BaseChatModel):
    """A stack as a LangChain chat model.

    The messages become the stack's input (a single human message is its content; a conversation is a
    transcript); the reply is the last stage's answer. ``temperature``, ``max_tokens`` and ``stop``
    apply to the last stage. Usage metadata sums the tokens of every stage.

    Args:
        stack: The :class:`FSLMChain` to run.
        temperature: Sampling temperature of the last stage (None keeps the stack's setting).
        max_tokens: Generation budget of the last stage (None keeps the stack's setting).
        stop: Extra stop sequences for the last stage.
        timeout: Accepted for API compatibility; a local stack has no network timeout.
        max_retries: Accepted for API compatibility; see the stages' ``parse_retries``.
        streaming: Whether ``invoke`` streams internally (the reply is the same).
        model_name: Name reported in traces and response metadata (default: the stack's name).

    Example:
        .. code-block:: python

            from langchain_fslm import ChatFSLM, FSLMChain

            chat = ChatFSLM(stack=FSLMChain.default())
            chat.invoke("Why is the sky blue?").content
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    stack: FSLMChain
    # the bounds of GenerationConfig, checked here so a bad value fails when the model is built
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = None
    max_retries: int | None = None
    streaming: bool = False
    model_name: str | None = Field(default=None, alias="model")
    structured: Any = Field(default=None, exclude=True)
    """Set by :meth:`with_structured_output`: ``(schema, parser, on_parse_error)`` for the last stage."""

    _stacks: dict[tuple[Any, ...], tuple[Any, Any, FSLMChain]] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "fslm"

    @property
    def _model(self) -> str:
        """The base model the stack runs on, named as its engine names it (or ``model_name``)."""
        if self.model_name:
            return self.model_name
        from langchain_fslm.small_lm import model_name_of

        return model_name_of(self.stack.stages[-1].engine, None)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self._model,
            "stages": [s.name for s in self.stack.stages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "fslm"
        params["ls_model_name"] = kwargs.get("model") or self._model
        params["ls_model_type"] = "chat"
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stops = [*(self.stop or []), *(stop or [])]
        if stops:
            params["ls_stop"] = stops
        return params

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        kwargs.pop(_STREAM_RUN, None)  # an internal handle, not a model parameter (kept out of traces)
        return super()._get_invocation_params(stop=stop, **kwargs)

    def _should_stream(self, *, async_api: bool, run_manager: Any = None, **kwargs: Any) -> bool:
        # an invoke that LangChain would stream (streaming=True, astream_events) streams in
        # _generate/_agenerate instead, where the run's manager is at hand for the stack's runs
        if run_manager is not None:
            return False
        return super()._should_stream(async_api=async_api, run_manager=run_manager, **kwargs)

    def _stream_run(self, config: RunnableConfig | None, is_async: bool) -> tuple[RunnableConfig, _StreamRun]:
        """The config to start a streamed call with, and its :class:`_StreamRun` (see there)."""
        config = ensure_config(config)
        configure = AsyncCallbackManager.configure if is_async else CallbackManager.configure
        manager = configure(
            config.get("callbacks"),
            self.callbacks,
            self.verbose,
            config.get("tags"),
            self.tags,
            config.get("metadata"),
            self.metadata,
        )
        run_id = config.get("run_id") or uuid4()
        return {**config, "callbacks": manager, "run_id": run_id}, _StreamRun(manager, run_id)

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """Stream the reply; the stack's stage runs and handoff events reach the call's callbacks."""
        config, run = self._stream_run(config, is_async=False)
        yield from super().stream(input, config, stop=stop, **{**kwargs, _STREAM_RUN: run})

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Async :meth:`stream`."""
        config, run = self._stream_run(config, is_async=True)
        async for chunk in super().astream(input, config, stop=stop, **{**kwargs, _STREAM_RUN: run}):
            yield chunk

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` under the stack's own tokenizer (its last stage's engine).

        LangChain's ``get_num_tokens`` and ``get_num_tokens_from_messages`` (so ``trim_messages(...,
        token_counter=chat)``) count with it.
        """
        return self.stack.stages[-1].lm.get_token_ids(text)

    def _configured(self, stop: list[str] | None, include_handoffs: bool = True, **kwargs: Any) -> FSLMChain:
        """The stack this call runs: the last stage with the call's settings (cached per settings)."""
        kwargs.pop(_STREAM_RUN, None)
        n = kwargs.pop("n", 1)
        if n not in (None, 1):
            raise ValueError(f"ChatFSLM returns one reply per call; n={n!r} is not supported (use batch()).")
        unknown = sorted(set(kwargs) - _CALL_KWARGS)
        if unknown:
            raise TypeError(
                f"ChatFSLM got unsupported keyword argument(s) {unknown}; per call it takes "
                "stop, temperature, max_tokens and model."
            )
        key = (
            tuple(stop or ()),
            tuple(self.stop or ()),
            kwargs.get("temperature", self.temperature),
            kwargs.get("max_tokens", self.max_tokens),
            include_handoffs,
        )
        # a stack is an LCEL sequence built once: build each call's variant once, not per call
        # (pydantic's model_copy shares this cache with the copy: entries remember what they came from)
        with self._lock:
            source, structured, stack = self._stacks.get(key, (None, None, None))
        if stack is None or source is not self.stack or structured is not self.structured:
            stack = self._build(key[0], *key[2:])
            with self._lock:
                if len(self._stacks) >= 16:
                    self._stacks.clear()
                self._stacks[key] = (self.stack, self.structured, stack)
        return stack

    def _build(
        self, stop: tuple[str, ...], temperature: float | None, max_tokens: int | None, handoffs: bool
    ) -> FSLMChain:
        from langchain_fslm.structured import structured_stage

        stack = self.stack
        if self.structured is not None:
            schema, parser, on_parse_error = self.structured
            typed = structured_stage(stack.stages[-1], schema, parser, on_parse_error)
            stack = stack.model_copy(update={"stages": [*stack.stages[:-1], typed]})
        last = stack.stages[-1].generation
        stops = [*last.stop, *(self.stop or []), *stop]
        return stack.with_generation(
            temperature=temperature, max_new_tokens=max_tokens, stop=list(dict.fromkeys(stops))
        ).with_handoffs(handoffs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if super()._should_stream(async_api=False, run_manager=run_manager, **kwargs):
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        config = _child_config(run_manager)
        output: StackOutput = self._configured(stop, **kwargs).invoke(messages, config)
        return self._result(output)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if super()._should_stream(async_api=True, run_manager=run_manager, **kwargs):
            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        config = _child_config(run_manager)
        output: StackOutput = await self._configured(stop, **kwargs).ainvoke(messages, config)
        return self._result(output)

    def _result(self, output: StackOutput) -> ChatResult:
        last = output.results[-1]
        message = AIMessage(
            content=output.output,
            usage_metadata=_usage(output),
            response_metadata={
                "model_name": self._model,
                "model_provider": "fslm",
                "stages": list(output.stages),
            },
        )
        info = {"finish_reason": "stop", "attempts": last.attempts}
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])

    def _last_chunk(self, tally: _TokenTally) -> ChatGenerationChunk:
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=tally.usage(),
                response_metadata={"model_name": self._model, "model_provider": "fslm"},
                chunk_position="last",
            ),
            generation_info={"finish_reason": "stop"},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        tally = _TokenTally()
        config = _child_config(run_manager or kwargs.get(_STREAM_RUN), [tally])
        for piece in self._configured(stop, include_handoffs=False, **kwargs).stream(messages, config):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield self._last_chunk(tally)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        tally = _TokenTally()
        config = _child_config(run_manager or kwargs.get(_STREAM_RUN), [tally])
        stack = self._configured(stop, include_handoffs=False, **kwargs)
        async for piece in stack.astream(messages, config):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield self._last_chunk(tally)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Not supported: a stack of small models writes text and has no tool calling.

        Raises:
            NotImplementedError: Always, naming the alternative.
        """
        raise NotImplementedError(
            "ChatFSLM does not support tool calling: its stages are small models that write plain text. "
            "Put the stack in a LangGraph node, or use with_structured_output() for typed replies."
        )

    def with_structured_output(
        self,
        schema: Any = None,
        *,
        include_raw: bool = False,
        method: str | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """A runnable whose reply is parsed into ``schema`` by the last stage's parser.

        The last stage's prompt asks for the format and its output type becomes ``schema``, so a reply that
        does not parse is regenerated (the stage's ``parse_retries``) and then raises
        :class:`~langchain_fslm.errors.StageOutputError`; with ``include_raw=True`` the last reply is
        returned as ``raw`` instead, with ``parsed=None`` and the error as ``parsing_error``. A
        :class:`~langchain_fslm.outputs.StageOutput` subclass is parsed from plain text; a pydantic
        model, TypedDict or JSON schema dict from JSON.

        Args:
            schema: The output schema (None only with ``method="json_mode"``).
            include_raw: Return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``.
            method: ``json_schema``, ``function_calling`` or ``json_mode``; a small local model has no
                tool calling or JSON mode, so all three prompt for the format and parse the text.
            strict: Accepted for API compatibility (parsing is always strict).
            **kwargs: Not supported.

        Raises:
            ValueError: For unknown arguments, methods or schemas.
        """
        from langchain_fslm.structured import schema_parser

        if kwargs:
            raise ValueError(f"Unsupported arguments: {sorted(kwargs)}")
        parser = schema_parser(schema, method)
        on_parse_error = "pass_raw" if include_raw else "raise"
        llm = self.model_copy(update={"structured": (schema, parser, on_parse_error)}).bind(
            ls_structured_output_format={
                "kwargs": {"method": method or "json_schema", "strict": strict},
                "schema": convert_to_json_schema(schema) if schema is not None else None,
            }
        )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        with_fallback = parsed.with_fallbacks([failed], exception_key="parsing_error")
        return RunnableMap(raw=llm) | with_fallback
