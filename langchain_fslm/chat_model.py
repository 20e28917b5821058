"""``ChatFSLM``: the chat-model face of a stack, for places that require a ``BaseChatModel``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_fslm.chain import FSLMChain, StackOutput
from langchain_fslm.chat_runs import (
    STREAM_RUN,
    CallStacks,
    TokenTally,
    call_settings,
    child_config,
    last_chunk,
    ls_params,
    reply_result,
    start_stream_run,
    tool_reply_chunk,
)
from langchain_fslm.engine.base import StopSequences


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
        timeout: Accepted for API compatibility (a local stack has no network timeout), as is
            ``max_retries`` (see the stages' ``parse_retries``).
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
    stop: StopSequences | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = None
    max_retries: int | None = None
    streaming: bool = False
    model_name: str | None = Field(default=None, alias="model")
    structured: Any = Field(default=None, exclude=True)
    """Set by :meth:`with_structured_output`: a :class:`langchain_fslm.structured.Structured` setting."""

    _stacks: CallStacks = PrivateAttr(default_factory=CallStacks)

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
        return ls_params(self, super()._get_ls_params(stop=stop, **kwargs), stop, kwargs)

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        kwargs.pop(STREAM_RUN, None)  # an internal handle, not a model parameter (kept out of traces)
        return super()._get_invocation_params(stop=stop, **kwargs)

    def _should_stream(self, *, async_api: bool, run_manager: Any = None, **kwargs: Any) -> bool:
        # an invoke that LangChain would stream (streaming=True, astream_events) streams in
        # _generate/_agenerate instead, where the run's manager is at hand for the stack's runs
        if run_manager is not None:
            return False
        return super()._should_stream(async_api=async_api, run_manager=run_manager, **kwargs)

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """Stream the reply; the stack's stage runs and handoff events reach the call's callbacks."""
        config, run = start_stream_run(self, config, is_async=False)
        yield from super().stream(input, config, stop=stop, **{**kwargs, STREAM_RUN: run})

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Async :meth:`stream`."""
        config, run = start_stream_run(self, config, is_async=True)
        async for chunk in super().astream(input, config, stop=stop, **{**kwargs, STREAM_RUN: run}):
            yield chunk

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` under the stack's own tokenizer (its last stage's engine).

        LangChain's ``get_num_tokens`` and ``get_num_tokens_from_messages`` (so ``trim_messages(...,
        token_counter=chat)``) count with it.
        """
        return self.stack.stages[-1].lm.get_token_ids(text)

    def _configured(self, stop: list[str] | None, include_handoffs: bool = True, **kwargs: Any) -> FSLMChain:
        """The stack this call runs: the last stage with the call's settings (built once per settings)."""
        settings = call_settings(self, stop, include_handoffs, kwargs)
        return self._stacks.get(self.stack, self.structured, settings)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if super()._should_stream(async_api=False, run_manager=run_manager, **kwargs):
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        config = child_config(run_manager)
        output: StackOutput = self._configured(stop, **kwargs).invoke(messages, config)
        return reply_result(output, self._model)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if super()._should_stream(async_api=True, run_manager=run_manager, **kwargs):
            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        config = child_config(run_manager)
        output: StackOutput = await self._configured(stop, **kwargs).ainvoke(messages, config)
        return reply_result(output, self._model)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        tally = TokenTally()
        config = child_config(run_manager or kwargs.get(STREAM_RUN), [tally])
        if _calls_tools(kwargs):  # a call is parsed whole: it comes as one chunk
            output = self._configured(stop, **kwargs).invoke(messages, config)
            yield tool_reply_chunk(output, self._model)
            return
        for piece in self._configured(stop, include_handoffs=False, **kwargs).stream(messages, config):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield last_chunk(tally, self._model)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        tally = TokenTally()
        config = child_config(run_manager or kwargs.get(STREAM_RUN), [tally])
        if _calls_tools(kwargs):
            output = await self._configured(stop, **kwargs).ainvoke(messages, config)
            yield tool_reply_chunk(output, self._model)
            return
        stack = self._configured(stop, include_handoffs=False, **kwargs)
        async for piece in stack.astream(messages, config):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield last_chunk(tally, self._model)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """The chat with tools: the last stage sees them and replies with a tool call or text.

        The reply is constrained (where the engine constrains decoding) to one call whose arguments fit its
        tool's schema, and comes back as an ``AIMessage`` with ``tool_calls``; see docs/chat-model.md.

        Args:
            tools: What ``convert_to_openai_tool`` takes, each with an argument schema.
            tool_choice: ``"auto"`` (default: a call or text), ``"any"``/``"required"``/``True`` (a call),
                a tool's name (a call of it) or ``"none"`` (text, tools not shown).
            **kwargs: Bound with the tools (per-call settings such as ``temperature``).

        Raises:
            ConstraintError: For a tool without a usable argument schema, naming it.
            ValueError: For duplicate tool names or an unknown ``tool_choice``, naming it.
        """
        from langchain_core.utils.function_calling import convert_to_openai_tool

        from langchain_fslm.tools import ToolSetting

        setting = ToolSetting.of(tools, tool_choice)  # checks every tool and the choice now
        setting.check(self.stack.stages[-1].engine, self.stack.stages[-1].name)
        formatted = [convert_to_openai_tool(t) for t in tools]
        return super().bind(tools=formatted, tool_choice=setting.choice, **kwargs)

    def with_structured_output(
        self,
        schema: Any = None,
        *,
        include_raw: bool = False,
        method: str | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """A runnable whose reply is generated under ``schema`` and parsed into it.

        The last stage generates under the schema's constraint and parses strictly (unfinished JSON is an
        error, never a truncated object); a failure after the stage's retries raises
        :class:`~langchain_fslm.errors.StageOutputError`, or with ``include_raw`` is returned as
        ``parsing_error``. See docs/chat-model.md.

        Args:
            schema: A pydantic model (returns instances), a TypedDict or JSON-schema dict (returns dicts),
                or a StageOutput subclass; None only with ``method="json_mode"`` (any JSON object).
            include_raw: Return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``.
            method: ``json_schema``, ``function_calling`` or ``json_mode``: all three constrain the last
                stage to the schema.
            strict: Accepted for API compatibility (the constraint and the parsing are always strict).
            **kwargs: Not supported.

        Raises:
            ValueError: For unknown arguments or methods.
            ConstraintError: For a recursive or unsupported schema, naming it, before any generation.
        """
        from langchain_fslm.structured import structured_chat

        if kwargs:
            raise ValueError(f"Unsupported arguments: {sorted(kwargs)}")
        return structured_chat(self, schema, include_raw=include_raw, method=method, strict=strict)


def _calls_tools(kwargs: dict[str, Any]) -> bool:
    """Whether a call has tools bound that the reply may call (not ``tool_choice="none"``)."""
    return bool(kwargs.get("tools")) and kwargs.get("tool_choice") != "none"
