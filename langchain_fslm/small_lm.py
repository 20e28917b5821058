"""``SmallLM``: one small model on an engine (base model + optional LoRA adapter) as a LangChain chat model.

It implements only the language-model hooks (``_generate``, ``_stream``, ``_astream``, ``_llm_type``,
``_identifying_params``, ``_get_ls_params``, ``get_token_ids``), as the partner packages do, so every
generation of a stage is an ordinary LLM run: callbacks, ``astream_events``, LangSmith and
``get_usage_metadata_callback()`` see its prompt, completion and token usage. Batching needs no hook of
its own: LangChain's default ``batch`` calls ``invoke`` from several threads and the local engine's
micro-batcher merges concurrent greedy requests into one forward pass.

The engine knows nothing of LangChain; this class is the only place where messages become an engine
:class:`~langchain_fslm.engine.base.GenerationRequest` and a :class:`Generation` becomes an ``AIMessage``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from langchain_fslm.engine.base import Generation, GenerationConfig, GenerationRequest, check_stops
from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.errors import PromptTooLongError
from langchain_fslm.inputs import messages_to_text

_CALL_KWARGS = {"temperature": "temperature", "max_tokens": "max_new_tokens", "seed": "seed"}
"""Per-call keyword arguments (``llm.bind(...)``, ``invoke(..., temperature=)``) -> GenerationConfig field."""


def model_name_of(engine: Any, adapter: str | None) -> str:
    """The name an engine's model reports (base model, plus the adapter when one is used)."""
    name = getattr(engine, "model_name", None)
    if callable(name):
        return str(name(adapter))
    ref = getattr(engine, "base_ref", None)
    base = str(getattr(ref, "source", None) or type(engine).__name__)
    return f"{base}+{adapter}" if adapter else base


def usage(prompt_tokens: int, completion_tokens: int) -> UsageMetadata:
    """Token counts as LangChain's usage metadata."""
    return UsageMetadata(
        input_tokens=prompt_tokens,
        output_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


class SmallLM(BaseChatModel):
    """A small model (an engine's base model with an optional LoRA adapter) as a LangChain chat model.

    System messages become the request's system message; the other messages become its prompt (a
    single human message is its own content, a conversation a ``Role: text`` transcript).

    Args:
        engine: Where tokens are made (a local or remote engine).
        adapter: Name of a LoRA adapter loaded in the engine, or None for the bare base model.
        generation: Generation settings; ``temperature``, ``max_tokens``, ``seed`` and ``stop`` may be
            overridden per call.
        stage: Name of the stage this model serves, for error messages and traces.
        constraint: What the model may write, sent with each request to an engine that can constrain
            (``capabilities().constrained``); None for free text.
        model_name: Name reported in traces and usage (default: the base model, ``+adapter``).

    Example:
        .. code-block:: python

            from langchain_fslm.engine.local import get_engine
            from langchain_fslm.models import BaseModelRef

            llm = SmallLM(engine=get_engine(BaseModelRef()))
            llm.invoke("Name one fruit.").usage_metadata
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    engine: Any = Field(exclude=True)
    adapter: str | None = None
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    stage: str | None = None
    constraint: OutputConstraint | None = None
    model_name: str | None = Field(default=None, alias="model")

    @property
    def _llm_type(self) -> str:
        return "fslm-small-lm"

    @property
    def _model(self) -> str:
        return self.model_name or model_name_of(self.engine, self.adapter)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self._model, "adapter": self.adapter, **self.generation.model_dump()}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        config = self._config(stop, **kwargs)
        params = LangSmithParams(
            ls_provider="fslm",
            ls_model_name=self._model,
            ls_model_type="chat",
            ls_temperature=config.temperature,
            ls_max_tokens=config.max_new_tokens,
        )
        if config.stop:
            params["ls_stop"] = config.stop
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` under the engine's own tokenizer."""
        return list(self.engine.token_ids(text))

    # ----------------------------------------------------------------------------- requests
    def _config(self, stop: list[str] | None = None, **kwargs: Any) -> GenerationConfig:
        """The generation settings of one call: this model's, with the call's overrides."""
        updates = {field: kwargs[k] for k, field in _CALL_KWARGS.items() if kwargs.get(k) is not None}
        if stops := check_stops(stop):
            updates["stop"] = list(dict.fromkeys([*self.generation.stop, *stops]))
        if not updates:
            return self.generation
        return GenerationConfig.model_validate({**self.generation.model_dump(), **updates})

    def request(
        self, messages: list[BaseMessage], stop: list[str] | None = None, **kwargs: Any
    ) -> GenerationRequest:
        """The engine request for a call's messages and settings."""
        system = "\n\n".join(m.text for m in messages if isinstance(m, SystemMessage)) or None
        rest = [m for m in messages if not isinstance(m, SystemMessage)]
        return GenerationRequest(
            prompt=messages_to_text(rest) if rest else "",
            adapter=self.adapter,
            config=self._config(stop, **kwargs),
            system=system,
            stage=self.stage,
            constraint=self.constraint if self._constrains else None,
        )

    @property
    def _constrains(self) -> bool:
        """Whether requests carry the constraint (the engine enforces it; others would ignore it)."""
        from langchain_fslm.engine.registry import capabilities_of

        return self.constraint is not None and capabilities_of(self.engine).constrained

    def _message(self, generation: Generation, latency_s: float) -> AIMessage:
        return AIMessage(
            content=generation.text,
            usage_metadata=usage(generation.prompt_tokens, generation.completion_tokens),
            response_metadata={
                "model_name": self._model,
                "model_provider": "fslm",
                "finish_reason": generation.finish_reason,
                "latency_s": latency_s,
                **(
                    {"constraint": self.constraint.describe()} if self._constrains and self.constraint else {}
                ),
            },
        )

    @contextmanager
    def _named_errors(self) -> Iterator[None]:
        """Name this model's stage in a too-long-prompt error (a stack has several prompts)."""
        try:
            yield
        except PromptTooLongError as err:
            if self.stage is None or str(err).startswith("Stage "):
                raise
            raise PromptTooLongError(f"Stage {self.stage!r}: {err}") from err

    def _last_chunk(self, request: GenerationRequest, text: str, latency_s: float) -> ChatGenerationChunk:
        """The closing chunk of a stream: its usage (engines' streams report no counts, so count here)."""
        prompt_tokens = self.engine.count_tokens(self.engine.render(request.prompt, request.system))
        completion_tokens = self.engine.count_tokens(text) if text else 0
        message = AIMessageChunk(
            content="",
            usage_metadata=usage(prompt_tokens, completion_tokens),
            response_metadata={"model_name": self._model, "model_provider": "fslm", "latency_s": latency_s},
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message)

    # ----------------------------------------------------------------------------- the hooks
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        start = time.perf_counter()
        with self._named_errors():
            (generation,) = self.engine.generate([self.request(messages, stop, **kwargs)])
        message = self._message(generation, time.perf_counter() - start)
        info = {"finish_reason": generation.finish_reason}
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self.request(messages, stop, **kwargs)
        start, pieces = time.perf_counter(), []
        with self._named_errors():
            for piece in self.engine.stream(request):
                pieces.append(piece)
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        yield self._last_chunk(request, "".join(pieces), time.perf_counter() - start)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self.request(messages, stop, **kwargs)
        start, pieces = time.perf_counter(), []
        with self._named_errors():
            # the engine's stream blocks; aiter_sync drives it from one worker thread
            async for piece in aiter_sync(self.engine.stream(request)):
                pieces.append(piece)
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager:
                    await run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        yield self._last_chunk(request, "".join(pieces), time.perf_counter() - start)


async def aiter_sync(iterator: Iterator[str]) -> AsyncIterator[str]:
    """Drive a blocking iterator from async code, one ``next`` per executor call.

    Every ``next``, and the final ``close``, runs on the same worker thread, so a blocking generator
    that keeps thread-bound state across yields is always resumed and closed where it started.
    """
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    done = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fslm-stream") as worker:
        try:
            while True:
                item = await loop.run_in_executor(worker, next, iterator, done)
                if item is done:
                    return
                yield item  # type: ignore[misc]
        finally:
            # A consumer that stops early (break, cancellation, client disconnect) closes the
            # iterator here, on the thread that ran it: its ``finally`` (the engine's stream waits
            # for its generation to end) runs now, not later on whatever thread the garbage
            # collector uses.
            close = getattr(iterator, "close", None)
            if close is not None:
                await asyncio.shield(loop.run_in_executor(worker, close))
