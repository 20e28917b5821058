"""``ChatFSLM``: the chat-model face of a stack, for places that require a ``BaseChatModel``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field

from langchain_fslm.chain import FSLMChain, StackOutput


def _child_config(run_manager: Any) -> RunnableConfig | None:
    """Config whose callbacks make the stack's runs children of this chat-model run."""
    if run_manager is None:
        return None
    manager_cls = (
        AsyncCallbackManager if isinstance(run_manager, AsyncCallbackManagerForLLMRun) else CallbackManager
    )
    manager = manager_cls(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    return RunnableConfig(callbacks=manager)


def _usage(output: StackOutput) -> UsageMetadata:
    usage = output.usage
    return UsageMetadata(
        input_tokens=usage["input_tokens"],
        output_tokens=usage["output_tokens"],
        total_tokens=usage["total_tokens"],
    )


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

    Example:
        .. code-block:: python

            from langchain_fslm import ChatFSLM, FSLMChain

            chat = ChatFSLM(stack=FSLMChain.default())
            chat.invoke("Why is the sky blue?").content
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stack: FSLMChain
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = None
    max_retries: int | None = None
    model_name: str = "fslm"

    @property
    def _llm_type(self) -> str:
        return "fslm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "stages": [s.name for s in self.stack.stages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "fslm"
        params["ls_model_name"] = self.model_name
        params["ls_model_type"] = "chat"
        if self.temperature is not None:
            params["ls_temperature"] = self.temperature
        if self.max_tokens is not None:
            params["ls_max_tokens"] = self.max_tokens
        return params

    def _configured(self, stop: list[str] | None, **kwargs: Any) -> FSLMChain:
        last = self.stack.stages[-1].generation
        stops = [*last.stop, *(self.stop or []), *(stop or [])]
        return self.stack.with_generation(
            temperature=kwargs.get("temperature", self.temperature),
            max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
            stop=stops,
        ).model_copy(update={"include_handoffs": True})

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
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
        config = _child_config(run_manager)
        output: StackOutput = await self._configured(stop, **kwargs).ainvoke(messages, config)
        return self._result(output)

    def _result(self, output: StackOutput) -> ChatResult:
        last = output.results[-1]
        message = AIMessage(
            content=output.output,
            usage_metadata=_usage(output),
            response_metadata={"model_name": self.model_name, "stages": list(output.stages)},
        )
        info = {"finish_reason": "stop", "attempts": last.attempts}
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        config = _child_config(run_manager)
        for piece in self._configured(stop, **kwargs).stream(messages, config):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", response_metadata={"model_name": self.model_name}),
            generation_info={"finish_reason": "stop"},
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        config = _child_config(run_manager)
        async for piece in self._configured(stop, **kwargs).astream(messages, config):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", response_metadata={"model_name": self.model_name}),
            generation_info={"finish_reason": "stop"},
        )
