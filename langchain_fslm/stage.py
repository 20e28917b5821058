"""``SLMRunnable``: one fine-tuned small model as one stage, a LangChain Runnable.

A stage renders its prompt from the stack state (``{input}`` and earlier stages' outputs), asks its
engine to generate with its adapter, and parses the text into its pydantic output type. It knows nothing
about torch: the engine does the generating.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from langchain_fslm.engine.base import Engine, Generation, GenerationConfig, GenerationRequest
from langchain_fslm.errors import InvalidInputError, PromptTooLongError, StageOutputError
from langchain_fslm.manifest import StageSpec
from langchain_fslm.outputs import StageOutput, StageOutputParser, output_type_by_name
from langchain_fslm.small_lm import aiter_sync

__all__ = ["SLMRunnable", "StageResult", "aiter_sync"]  # aiter_sync: re-exported for chain.py

StageInput = Mapping[str, Any] | str
"""A stage reads the stack state (a mapping of field name to value) or, alone, a plain string."""

RETRY_TEMPERATURE = 0.7
"""Retries after a parse failure sample at this temperature (greedy would repeat the same text)."""


def _generate_rows(
    engine: Engine, requests: list[GenerationRequest]
) -> list[Generation | PromptTooLongError]:
    """``engine.generate(requests)``, where a prompt too long for the model fails only its own row.

    A batch that raises :class:`PromptTooLongError` is split in halves until the offending rows are alone,
    so the other rows are generated in batches still (a remote engine sends them again).

    Returns:
        Per request, its generation or its ``PromptTooLongError``.
    """
    try:
        return list(engine.generate(requests))
    except PromptTooLongError as err:
        if len(requests) == 1:
            return [err]
    half = len(requests) // 2
    return _generate_rows(engine, requests[:half]) + _generate_rows(engine, requests[half:])


class StageResult(BaseModel):
    """What one stage produced: the raw text beside the parsed value.

    Attributes:
        stage: Stage name.
        raw: The generated text, as the model wrote it (stop sequences cut).
        value: The parsed output, or None when parsing failed under ``on_parse_error="pass_raw"``.
        parse_error: Why parsing failed, when it did.
        prompt_tokens: Tokens of the rendered prompt.
        completion_tokens: Tokens generated (all attempts).
        latency_s: Wall time of the stage, seconds.
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


class SLMRunnable(RunnableSerializable[StageInput, StageResult]):
    """One stage of a stack: prompt → generate (base model + this stage's adapter) → typed output.

    Args:
        name: Stage name; the stack stores this stage's output under it.
        prompt: f-string template over fields of the stack state, e.g. ``"Request: {input}"``.
        output_type: The pydantic :class:`StageOutput` subclass to parse into.
        engine: Where to generate (a :class:`LocalEngine` or a remote engine).
        adapter: Name of the LoRA adapter loaded in the engine, or None for the bare base model.
        generation: Generation settings.
        system: Optional system message.
        parse_retries: Regenerations (sampled) when the output does not parse.
        on_parse_error: ``raise`` or ``pass_raw`` once retries are spent.

    Example:
        .. code-block:: python

            stage = SLMRunnable(name="intent", prompt="Request: {input}", engine=engine)
            stage.invoke("Why is the sky blue?").value
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = "stage"  # type: ignore[assignment]
    prompt: str
    output_type: type[StageOutput] = Field(default_factory=lambda: output_type_by_name("text"))
    engine: Any = Field(default=None, exclude=True)
    adapter: str | None = None
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    system: str | None = None
    parse_retries: int = 1
    on_parse_error: str = "raise"

    _template: PromptTemplate = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Compile the prompt template and check the engine."""
        self._template = PromptTemplate.from_template(self.prompt)
        if self.engine is not None and not isinstance(self.engine, Engine):
            raise TypeError(f"Stage {self.name!r}: engine must implement the Engine protocol")
        if self.on_parse_error not in ("raise", "pass_raw"):
            raise ValueError(f"Stage {self.name!r}: on_parse_error must be 'raise' or 'pass_raw'")

    @classmethod
    def from_spec(cls, spec: StageSpec, engine: Engine, adapter: str | None = None) -> SLMRunnable:
        """Build a stage from its manifest entry (the adapter must already be loaded in the engine)."""
        return cls(
            name=spec.name,
            prompt=spec.prompt,
            output_type=output_type_by_name(spec.output_type),
            engine=engine,
            adapter=adapter,
            generation=spec.generation,
            system=spec.system,
            parse_retries=spec.parse_retries,
            on_parse_error=spec.on_parse_error,
        )

    @property
    def input_variables(self) -> list[str]:
        """State fields the prompt reads."""
        return list(self._template.input_variables)

    @property
    def parser(self) -> StageOutputParser:
        """The LangChain output parser that builds this stage's output type."""
        return StageOutputParser(output_type=self.output_type)

    @property
    def OutputType(self) -> Any:  # noqa: N802 - LangChain's name
        """Runnable output type."""
        return StageResult

    # ----------------------------------------------------------------------------- building blocks
    def render(self, state: StageInput) -> str:
        """Fill the prompt template from the state.

        Raises:
            InvalidInputError: If the state lacks a field the prompt needs.
        """
        values = {"input": state} if isinstance(state, str) else state
        if not isinstance(values, Mapping):
            raise InvalidInputError(
                f"Stage {self.name!r} takes a mapping of fields or a str, not {type(state).__name__}"
            )
        missing = [v for v in self._template.input_variables if v not in values]
        if missing:
            raise InvalidInputError(
                f"Stage {self.name!r}: its prompt needs field(s) {missing}; the state has {sorted(values)}"
            )
        return self._template.format(**{k: _as_text(values[k]) for k in self._template.input_variables})

    def request(self, prompt: str, attempt: int = 0) -> GenerationRequest:
        """The engine request for a rendered prompt (retries sample with a per-attempt seed)."""
        config = self.generation
        if attempt > 0:
            seed = (config.seed or 0) + attempt
            temperature = config.temperature or RETRY_TEMPERATURE
            config = config.model_copy(update={"temperature": temperature, "seed": seed})
        return GenerationRequest(
            prompt=prompt, adapter=self.adapter, config=config, system=self.system, stage=self.name
        )

    def parse(self, raw: str) -> StageOutput:
        """Parse raw text into the output type (raises ``OutputParserException``)."""
        return self.parser.parse(raw)

    def _require_engine(self) -> Engine:
        if self.engine is None:
            raise InvalidInputError(f"Stage {self.name!r} has no engine; pass engine=...")
        engine: Engine = self.engine
        return engine

    def run_batch(self, states: Sequence[StageInput]) -> list[StageResult | Exception]:
        """Run the stage on several states with one ``generate`` call (plus one per retry round).

        Returns:
            Per state, its result, or the exception that stopped it (an unparseable output under
            ``on_parse_error="raise"``, a missing field, a prompt too long for the model).
        """
        engine = self._require_engine()
        start = time.perf_counter()
        out: list[StageResult | Exception | None] = [None] * len(states)
        prompts: dict[int, str] = {}
        for i, state in enumerate(states):
            try:
                prompts[i] = self.render(state)
            except InvalidInputError as err:
                out[i] = err
        raws: dict[int, str] = {}
        tokens: dict[int, list[int]] = {i: [0, 0] for i in prompts}
        attempts: dict[int, int] = dict.fromkeys(prompts, 0)
        errors: dict[int, str] = {}
        pending = list(prompts)
        for attempt in range(self.parse_retries + 1):
            if not pending:
                break
            generations = _generate_rows(engine, [self.request(prompts[i], attempt) for i in pending])
            failed = []
            for i, gen in zip(pending, generations, strict=True):
                if isinstance(gen, PromptTooLongError):
                    out[i] = too_long = PromptTooLongError(f"Stage {self.name!r}: {gen}")
                    too_long.__cause__ = gen
                    continue
                raws[i] = gen.text
                tokens[i][0] = gen.prompt_tokens
                tokens[i][1] += gen.completion_tokens
                attempts[i] = attempt + 1
                try:
                    value = self.parse(gen.text)
                except OutputParserException as err:
                    errors[i] = str(err)
                    failed.append(i)
                    continue
                errors.pop(i, None)
                out[i] = self._result(i, raws, tokens, attempts, value=value)
            pending = failed
        elapsed = time.perf_counter() - start
        for i in pending:
            if self.on_parse_error == "raise":
                out[i] = StageOutputError(self.name, raws[i], errors[i])
            else:
                out[i] = self._result(i, raws, tokens, attempts, parse_error=errors[i])
        for r in out:
            if isinstance(r, StageResult):
                r.latency_s = elapsed
        return [r if r is not None else RuntimeError("unreachable") for r in out]

    def _result(
        self,
        i: int,
        raws: dict[int, str],
        tokens: dict[int, list[int]],
        attempts: dict[int, int],
        value: StageOutput | None = None,
        parse_error: str | None = None,
    ) -> StageResult:
        return StageResult(
            stage=self.name,
            raw=raws[i],
            value=value,
            parse_error=parse_error,
            prompt_tokens=tokens[i][0],
            completion_tokens=tokens[i][1],
            attempts=attempts[i],
        )

    def run_one(self, state: StageInput) -> StageResult:
        """Run the stage on one state; raises what :meth:`run_batch` would return."""
        (result,) = self.run_batch([state])
        if isinstance(result, Exception):
            raise result
        return result

    def stream_text(self, state: StageInput) -> Iterator[str]:
        """Yield the stage's raw text as it is generated (no retries: streamed text is final)."""
        engine = self._require_engine()
        try:
            yield from engine.stream(self.request(self.render(state)))
        except PromptTooLongError as err:
            raise PromptTooLongError(f"Stage {self.name!r}: {err}") from err

    # ----------------------------------------------------------------------------- Runnable API
    def invoke(self, input: StageInput, config: RunnableConfig | None = None, **kwargs: Any) -> StageResult:
        """Generate and parse for one state (or one string, read as ``{input}``)."""
        return self._call_with_config(self._invoke, input, config)

    def _invoke(self, input: StageInput) -> StageResult:
        return self.run_one(input)

    async def ainvoke(
        self, input: StageInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> StageResult:
        """Async :meth:`invoke` (generation runs in an executor thread)."""
        return await self._acall_with_config(self._ainvoke, input, config)  # type: ignore[arg-type]

    async def _ainvoke(self, input: StageInput, config: RunnableConfig) -> StageResult:
        return await run_in_executor(config, self.run_one, input)

    def batch(
        self,
        inputs: list[StageInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[StageResult]:
        """Run many states with one batched ``generate`` (not a loop of invokes)."""
        if not inputs:
            return []
        return self._batch_with_config(self._batch, inputs, config, return_exceptions=return_exceptions)

    def _batch(self, inputs: list[StageInput]) -> list[StageResult | Exception]:
        return self.run_batch(inputs)

    async def abatch(
        self,
        inputs: list[StageInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[StageResult]:
        """Async :meth:`batch`."""
        if not inputs:
            return []
        return await self._abatch_with_config(
            self._abatch, inputs, config, return_exceptions=return_exceptions
        )

    async def _abatch(self, inputs: list[StageInput]) -> list[StageResult | Exception]:
        return await asyncio.get_running_loop().run_in_executor(None, self.run_batch, inputs)

    def stream(  # type: ignore[override]
        self, input: StageInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[str]:
        """Stream the raw text of one stage as it is generated (text pieces, not a result)."""
        yield from self._transform_stream_with_config(iter([input]), self._stream, config)  # type: ignore[arg-type,misc]

    def _stream(self, inputs: Iterator[StageInput]) -> Iterator[str]:
        for state in inputs:
            yield from self.stream_text(state)

    async def astream(  # type: ignore[override]
        self, input: StageInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[str]:
        """Async :meth:`stream` (a traced run, as in :meth:`stream`)."""

        async def one() -> AsyncIterator[StageInput]:
            yield input

        async for piece in self._atransform_stream_with_config(one(), self._astream, config):  # type: ignore[arg-type]
            yield piece  # type: ignore[misc]

    async def _astream(self, inputs: AsyncIterator[StageInput]) -> AsyncIterator[str]:
        async for state in inputs:
            async for piece in aiter_sync(self.stream_text(state)):
                yield piece


def _as_text(value: Any) -> str:
    if isinstance(value, StageResult):
        return value.text
    return str(value)
