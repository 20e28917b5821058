"""``FSLMChain``: a stack of small-model stages, composed in LCEL, usable wherever an LLM goes.

The data path::

    input (str | PromptValue | messages) -> fslm_input -> stage 1 -> ... -> stage N -> fslm_output -> str

Each stage step adds its typed output to a growing state (so later prompts can read any earlier field) and
dispatches an ``fslm_handoff`` event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import adispatch_custom_event, dispatch_custom_event
from langchain_core.language_models import LanguageModelInput
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableLambda,
    RunnableSequence,
    RunnableSerializable,
)
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from langchain_fslm.engine.base import Engine, GenerationConfig
from langchain_fslm.engine.registry import AdapterLoads as _AdapterLoads
from langchain_fslm.engine.registry import adapter_name as _adapter_name  # noqa: F401 - kept importable
from langchain_fslm.engine.registry import assemble_stages, kind_of
from langchain_fslm.engine.remote import RemoteEngine, RemoteSettings
from langchain_fslm.errors import ManifestError, StageOutputError
from langchain_fslm.handoff import FINAL_TARGET, HANDOFF_EVENT, Handoff, trace_handoff
from langchain_fslm.inputs import input_to_text
from langchain_fslm.manifest import (
    StackManifest,
    StageSpec,
    dump_manifest,
    load_manifest,
    write_stack_atomically,
)
from langchain_fslm.models import BaseModelRef
from langchain_fslm.outputs import Answer, Draft, StageOutput, Text, TextStream
from langchain_fslm.stage import SLMRunnable, StageResult, aiter_sync

State = dict[str, Any]
"""The stack state: ``input`` (str), one entry per finished stage, and ``_results`` (StageResults)."""

RESULTS_KEY = "_results"


class StackOutput(BaseModel):
    """Everything a stack produced, returned when ``include_handoffs=True``.

    Attributes:
        output: The final answer text.
        input: The input text the stack read.
        stages: Each stage's parsed value (or raw text, if it did not parse under ``pass_raw``).
        results: Each stage's :class:`StageResult` (raw text, token counts, latency), in order.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    output: str
    input: str
    stages: dict[str, StageOutput | str]
    results: list[StageResult]

    @property
    def usage(self) -> dict[str, int]:
        """Token totals over all stages."""
        prompt = sum(r.prompt_tokens for r in self.results)
        completion = sum(r.completion_tokens for r in self.results)
        return {
            "input_tokens": prompt,
            "output_tokens": completion,
            "total_tokens": prompt + completion,
        }


def _initial_state(value: Any) -> State:
    return {"input": input_to_text(value), RESULTS_KEY: []}


class StageStep(RunnableSerializable[State, State]):
    """A stage inside a stack: runs the stage on the state, stores its output, emits the handoff.

    Its run carries the stage's name, so traces show one step per stage.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stage: SLMRunnable
    to_stage: str = FINAL_TARGET
    stack_name: str = "FSLMChain"

    def get_name(self, suffix: str | None = None, *, name: str | None = None) -> str:
        """The stage's name."""
        return super().get_name(suffix, name=name or self.stage.name)

    def _advance(self, state: State, result: StageResult) -> tuple[State, dict[str, Any]]:
        value: StageOutput | str = result.value if result.value is not None else result.raw.strip()
        new = {**state, self.stage.name: value, RESULTS_KEY: [*state[RESULTS_KEY], result]}
        handoff = Handoff(
            stack=self.stack_name,
            from_stage=self.stage.name,
            to_stage=self.to_stage,
            text=result.text,
            raw=result.raw,
            parsed=result.value.model_dump() if result.value is not None else None,
            output_type=self.stage.output_type.type_name,
            parse_error=result.parse_error,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_s=round(result.latency_s, 6),
            attempts=result.attempts,
        )
        return new, handoff.model_dump()

    def _fields(self, state: State) -> Mapping[str, Any]:
        return {k: v for k, v in state.items() if k != RESULTS_KEY}

    def invoke(self, input: State, config: RunnableConfig | None = None, **kwargs: Any) -> State:
        """Run the stage on one state."""
        return self._call_with_config(self._invoke, input, config)  # type: ignore[arg-type,misc]

    def _invoke(self, state: State, config: RunnableConfig) -> State:
        new, event = self._advance(state, self.stage.run_one(self._fields(state)))
        dispatch_custom_event(HANDOFF_EVENT, event, config=config)
        trace_handoff(config, event)
        return new

    async def ainvoke(self, input: State, config: RunnableConfig | None = None, **kwargs: Any) -> State:
        """Async :meth:`invoke`."""
        return await self._acall_with_config(self._ainvoke, input, config)  # type: ignore[arg-type,misc]

    async def _ainvoke(self, state: State, config: RunnableConfig) -> State:
        result = await run_in_executor(config, self.stage.run_one, self._fields(state))
        new, event = self._advance(state, result)
        await adispatch_custom_event(HANDOFF_EVENT, event, config=config)
        trace_handoff(config, event)
        return new

    def batch(
        self,
        inputs: list[State],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[State]:
        """Run the stage on many states with one batched generate."""
        if not inputs:
            return []
        return self._batch_with_config(self._batch, inputs, config, return_exceptions=return_exceptions)  # type: ignore[arg-type,misc]

    def _batch(self, states: list[State], config: list[RunnableConfig]) -> list[State | Exception]:
        results = self.stage.run_batch([self._fields(s) for s in states])
        rows = self._advance_rows(states, results)
        for (_, event), cfg in zip(rows, config, strict=True):
            if event is not None:
                dispatch_custom_event(HANDOFF_EVENT, event, config=cfg)
                trace_handoff(cfg, event)
        return [new for new, _ in rows]

    def _advance_rows(
        self, states: list[State], results: list[StageResult | Exception]
    ) -> list[tuple[State | Exception, dict[str, Any] | None]]:
        """Per row: the new state and its handoff event, or the row's exception and no event."""
        return [
            (result, None) if isinstance(result, Exception) else self._advance(state, result)
            for state, result in zip(states, results, strict=True)
        ]

    async def abatch(
        self,
        inputs: list[State],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[State]:
        """Async :meth:`batch`."""
        if not inputs:
            return []
        return await self._abatch_with_config(
            self._abatch,  # type: ignore[arg-type]
            inputs,
            config,
            return_exceptions=return_exceptions,
        )

    async def _abatch(self, states: list[State], config: list[RunnableConfig]) -> list[State | Exception]:
        results = await run_in_executor(config[0], self.stage.run_batch, [self._fields(s) for s in states])
        rows = self._advance_rows(states, results)
        for (_, event), cfg in zip(rows, config, strict=True):
            if event is not None:
                await adispatch_custom_event(HANDOFF_EVENT, event, config=cfg)
                trace_handoff(cfg, event)
        return [new for new, _ in rows]

    # ----------------------------------------------------------------------------- streaming
    def _finish_stream(self, state: State, raw: str, elapsed: float) -> tuple[State, dict[str, Any]]:
        try:
            value: StageOutput | None = self.stage.parse(raw)
            error = None
        except Exception as err:  # OutputParserException; retries are impossible once streamed
            if self.stage.on_parse_error == "raise":
                raise StageOutputError(self.stage.name, raw, str(err)) from err
            value, error = None, str(err)
        prompt_tokens, completion_tokens = self._stream_tokens(state, raw)
        result = StageResult(
            stage=self.stage.name,
            raw=raw,
            value=value,
            parse_error=error,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=elapsed,
        )
        return self._advance(state, result)

    def _stream_tokens(self, state: State, raw: str) -> tuple[int, int]:
        """Token counts of a streamed stage (the engine's streamer does not report them)."""
        engine = self.stage.engine
        if not (hasattr(engine, "count_tokens") and hasattr(engine, "render")):
            return 0, 0
        prompt = engine.render(self.stage.render(self._fields(state)), self.stage.system)
        return engine.count_tokens(prompt), engine.count_tokens(raw) if raw else 0

    def stream_answer(self, state: State, config: RunnableConfig | None = None) -> Iterator[str]:
        """Stream this stage's text, then emit its handoff (used for the stack's last stage)."""
        yield from self._transform_stream_with_config(iter([state]), self._stream_answer, config)  # type: ignore[arg-type,misc]

    def _stream_answer(self, states: Iterator[State], config: RunnableConfig) -> Iterator[str]:
        import time

        state = next(states)
        start = time.perf_counter()
        pieces = []
        cleaner = _stream_cleaner(self.stage.output_type)
        for piece in self.stage.stream_text(self._fields(state)):
            pieces.append(piece)
            if text := cleaner.feed(piece):
                yield text
        if tail := cleaner.finish():
            yield tail
        _, event = self._finish_stream(state, "".join(pieces), time.perf_counter() - start)
        dispatch_custom_event(HANDOFF_EVENT, event, config=config)
        trace_handoff(config, event)

    async def astream_answer(self, state: State, config: RunnableConfig | None = None) -> AsyncIterator[str]:
        """Async :meth:`stream_answer`."""

        async def one() -> AsyncIterator[State]:
            yield state

        stream = self._atransform_stream_with_config(one(), self._astream_answer, config)  # type: ignore[arg-type]
        async for piece in stream:
            yield piece  # type: ignore[misc]

    async def _astream_answer(
        self, states: AsyncIterator[State], config: RunnableConfig
    ) -> AsyncIterator[str]:
        import time

        state = [s async for s in states][0]
        start = time.perf_counter()
        pieces = []
        cleaner = _stream_cleaner(self.stage.output_type)
        async for piece in aiter_sync(self.stage.stream_text(self._fields(state))):
            pieces.append(piece)
            if text := cleaner.feed(piece):
                yield text
        if tail := cleaner.finish():
            yield tail
        _, event = self._finish_stream(state, "".join(pieces), time.perf_counter() - start)
        await adispatch_custom_event(HANDOFF_EVENT, event, config=config)
        trace_handoff(config, event)


class _RawStream:
    """Passes streamed pieces through unchanged (output types other than free text)."""

    def feed(self, piece: str) -> str:
        return piece

    def finish(self) -> str:
        return ""


def _stream_cleaner(output_type: type[StageOutput]) -> TextStream | _RawStream:
    """A :class:`TextStream` for the free-text types (``text``, ``draft``, ``answer``), else raw pieces.

    Free text streams exactly what ``invoke`` returns. Other types (one-line intents, re-bulleted key
    points, JSON) stream the model's raw text, which their parser reads at the end.
    """
    return TextStream() if output_type in (Text, Draft, Answer) else _RawStream()


class FSLMChain(RunnableSerializable[LanguageModelInput, Any]):
    """A fine-tuned stack of small language models, usable wherever LangChain expects an LLM.

    It reads a str, a PromptValue or a list of messages and returns the last stage's answer as a
    str (or a :class:`StackOutput` with every stage's parsed output when ``include_handoffs=True``).

    Args:
        stages: The stages, in order.
        base_model: Reference of the shared base model (written to the manifest on save).
        include_handoffs: Return a :class:`StackOutput` instead of a str.
        adapter_sources: Stage name -> adapter folder it was loaded from (used on save).

    Example:
        .. code-block:: python

            from langchain_core.output_parsers import StrOutputParser
            from langchain_core.prompts import ChatPromptTemplate
            from langchain_fslm import FSLMChain

            stack = FSLMChain.default()
            chain = ChatPromptTemplate.from_template("Answer briefly: {q}") | stack | StrOutputParser()
            chain.invoke({"q": "Why is the sky blue?"})
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stages: list[SLMRunnable] = Field(min_length=1)
    base_model: BaseModelRef | None = None
    include_handoffs: bool = False
    adapter_sources: dict[str, str] = Field(default_factory=dict)
    description: str = ""

    _adapters: _AdapterLoads = PrivateAttr(default_factory=_AdapterLoads)

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_specs(
        cls,
        specs: Sequence[StageSpec],
        *,
        base_model: BaseModelRef | str | None = None,
        engine: Engine | None = None,
        adapter_root: str | Path | None = None,
        backend: Literal["local", "remote"] | None = None,
        remote: RemoteEngine | RemoteSettings | Mapping[str, Any] | str | None = None,
        compile_decode: bool = False,
        **kwargs: Any,
    ) -> FSLMChain:
        """Build a stack from stage specs on one shared base model.

        Args:
            specs: Stage specs in order.
            base_model: Base model reference (default: the embedded SmolLM2-135M-Instruct).
            engine: An engine to use instead of loading ``base_model`` (shared if already loaded).
            adapter_root: Folder that the specs' adapter paths are relative to.
            backend: ``local`` or ``remote`` for every stage; None: each spec's own ``backend``. The
                engine of each kind comes from :func:`langchain_fslm.engine.registry.create_engine`.
            remote: The OpenAI-compatible server remote stages call: a :class:`RemoteEngine`,
                :class:`RemoteSettings`, a settings mapping (``{"base_url": ..., "api_key": ...}``) or a
                base URL; None: ``FSLM_REMOTE_BASE_URL``. Remote stages ask for the model named after
                the stage when they have an adapter, else for the base model.
            compile_decode: Turn on compiled decoding in the local engine
                (:meth:`LocalEngine.enable_compile_decode`, shared with every stack on that engine):
                about 2.4x faster decoding on a CPU after a compile on first use; for long-running
                processes. Needs local stages.
            **kwargs: Other :class:`FSLMChain` fields.

        Returns:
            The stack.

        Raises:
            ValueError: If ``compile_decode`` is asked of a stack without a local engine.
        """
        assembly = assemble_stages(
            specs,
            base_model=base_model,
            engine=engine,
            adapter_root=adapter_root,
            backend=backend,
            remote=remote,
            compile_decode=compile_decode,
        )
        with assembly.loads.released_on_error():  # a stack that fails to build keeps no adapter
            stages = [SLMRunnable.from_spec(s.spec, s.engine, s.adapter) for s in assembly.stages]
            chain = cls(
                stages=stages, base_model=assembly.base_model, adapter_sources=assembly.sources, **kwargs
            )
        chain._adapters = assembly.loads
        return chain

    @classmethod
    def default(
        cls,
        base_model: BaseModelRef | str | None = None,
        *,
        max_new_tokens: int | None = None,
        compile_decode: bool = False,
    ) -> FSLMChain:
        """The default four-stage stack (intent → key points → draft → answer), zero-shot.

        Args:
            base_model: Base model (default: the embedded SmolLM2-135M-Instruct).
            max_new_tokens: Override every stage's generation budget.
            compile_decode: Turn on compiled decoding in the local engine (see :meth:`from_specs`).
        """
        from langchain_fslm.roles import default_stage_specs

        return cls.from_specs(
            default_stage_specs(max_new_tokens), base_model=base_model, compile_decode=compile_decode
        )

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        engine: Engine | None = None,
        base_model: BaseModelRef | str | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> FSLMChain:
        """Load a stack saved with :meth:`save_pretrained` (or written by ``fslm train``).

        Each stage runs on its manifest ``backend``; ``backend="remote"`` (with ``remote=``, see
        :meth:`from_specs`) or ``backend="local"`` switches all.

        Args:
            folder: The stack folder.
            engine: An engine to use instead of loading the manifest's base model.
            base_model: Where the manifest's base model is on this machine: a source (folder,
                ``.gguf``, hub id) replacing the manifest's, whose other settings (dtype, revision)
                stay; or a whole :class:`BaseModelRef`. Default: the manifest's. The manifest stores
                a local base folder as an absolute path, so a stack copied to another machine needs
                this when the base model sits elsewhere there.
            trust_remote_code: Allow a manifest that asks for ``base_model.trust_remote_code``
                (model code from the hub runs). Refused unless you pass True here.
            **kwargs: ``backend``/``remote``/``compile_decode`` (see :meth:`from_specs`) and other fields.

        Raises:
            ManifestError: If the manifest is missing or wrong (the message names file and field).
            AdapterError: If an adapter cannot be loaded onto the base model.
        """
        folder = Path(folder).expanduser()
        manifest = load_manifest(folder)
        base = manifest.base_model
        if isinstance(base_model, str):
            base = BaseModelRef.model_validate({**base.model_dump(), "source": base_model})
        elif base_model is not None:
            base = base_model
        if base.trust_remote_code and not trust_remote_code:
            raise ManifestError(
                f"{Path(folder) / 'fslm_stack.json'}: base_model.trust_remote_code is true; loading it "
                "would run code from the model repository. Pass trust_remote_code=True (fslm run: "
                "--trust-remote-code) if you trust it."
            )
        return cls.from_specs(
            manifest.stages,
            base_model=base,
            engine=engine,
            adapter_root=folder,
            description=manifest.description,
            name=manifest.name,
            **kwargs,
        )

    def to_manifest(self, adapter_dir: str = "adapters") -> StackManifest:
        """This stack's manifest (adapters at ``adapter_dir/<stage>``)."""
        specs = [
            StageSpec(
                name=s.name,
                prompt=s.prompt,
                output_type=s.output_type.type_name,
                adapter=f"{adapter_dir}/{s.name}" if s.adapter else None,
                generation=s.generation,
                system=s.system,
                backend="remote" if kind_of(s.engine) == "remote" else "local",  # the manifest's kinds
                parse_retries=s.parse_retries,
                on_parse_error=s.on_parse_error,  # type: ignore[arg-type]
            )
            for s in self.stages
        ]
        return StackManifest(
            name=self.name or "fslm-stack",
            base_model=(self.base_model or BaseModelRef()).absolute(),
            stages=specs,
            description=self.description,
        )

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the manifest and each stage's adapter (peft format), atomically.

        Returns:
            The stack folder.
        """
        manifest = self.to_manifest()

        def fill(tmp: Path) -> None:
            for stage in self.stages:
                if stage.adapter:
                    stage.engine.save_adapter(stage.adapter, tmp / "adapters" / stage.name)
            dump_manifest(manifest, tmp)

        return write_stack_atomically(folder, fill)

    def release(self) -> None:
        """Free the weights of the LoRA adapters this stack loaded, unless another stack uses them.

        For long-running processes that load stacks again and again (a retrained stack, a stack
        per request): without it, each load's adapters stay in memory for the life of the process.
        The base model stays loaded, shared by the other stacks on it.

        Afterwards this stack, and the copies made from it (``with_generation``, a
        :class:`~langchain_fslm.ChatFSLM` around it), can no longer run its adapter stages: they
        raise :class:`~langchain_fslm.errors.AdapterError`. Releasing again does nothing. Remote
        stages are not affected.
        """
        self._adapters.release()

    def with_generation(self, stage: str | None = None, **updates: Any) -> FSLMChain:
        """A copy whose stage (default: the last) uses updated generation settings.

        Example: ``stack.with_generation(temperature=0.7, max_new_tokens=64)``.
        """
        names = [s.name for s in self.stages]
        index = len(names) - 1 if stage is None else names.index(stage)
        target = self.stages[index]
        config = GenerationConfig.model_validate(
            {
                **target.generation.model_dump(),
                **{k: v for k, v in updates.items() if v is not None},
            }
        )
        stages = list(self.stages)
        stages[index] = target.model_copy(update={"generation": config})
        return self.model_copy(update={"stages": stages})

    # ----------------------------------------------------------------------------- the LCEL sequence
    @property
    def steps(self) -> list[StageStep]:
        """One step per stage, each knowing which stage reads its output next."""
        names = [s.name for s in self.stages]
        return [
            StageStep(
                stage=s,
                to_stage=(names[i + 1] if i + 1 < len(names) else FINAL_TARGET),
                stack_name=self.get_name(),
            )
            for i, s in enumerate(self.stages)
        ]

    @property
    def sequence(self) -> Runnable[Any, Any]:
        """The stack as a plain LCEL sequence: ``fslm_input | stage 1 | ... | stage N | fslm_output``."""
        return RunnableSequence(
            RunnableLambda(_initial_state, name="fslm_input"),
            *self.steps,
            RunnableLambda(self._final_output, name="fslm_output"),
            name=self.get_name(),
        )

    def _final_output(self, state: State) -> Any:
        results: list[StageResult] = state[RESULTS_KEY]
        output = results[-1].text
        if not self.include_handoffs:
            return output
        stages = {s.name: state[s.name] for s in self.stages}
        return StackOutput(output=output, input=state["input"], stages=stages, results=results)

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        """What the stack accepts."""
        return LanguageModelInput

    @property
    def OutputType(self) -> Any:  # noqa: N802 - LangChain's name
        """What the stack returns."""
        return StackOutput if self.include_handoffs else str

    # ----------------------------------------------------------------------------- Runnable API
    def _for_call(self, kwargs: dict[str, Any]) -> FSLMChain:
        """This stack with per-call LLM arguments applied (``stop``: extra stops for the last stage).

        Raises:
            TypeError: For any other keyword argument, naming it.
        """
        stop = kwargs.pop("stop", None)
        if kwargs:
            raise TypeError(
                f"{self.get_name()} got unsupported keyword argument(s) {sorted(kwargs)}; a stack "
                "takes only stop=[...] per call (generation settings: with_generation())."
            )
        if not stop:
            return self
        if isinstance(stop, str):
            stop = [stop]
        last = self.stages[-1].generation
        return self.with_generation(stop=list(dict.fromkeys([*last.stop, *stop])))

    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Run every stage on one input; return the final answer (``stop=`` adds stop sequences)."""
        return self._for_call(kwargs).sequence.invoke(input, config)

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any:
        """Async :meth:`invoke`."""
        return await self._for_call(kwargs).sequence.ainvoke(input, config)

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Run many inputs, each stage batched over all of them (one generate per stage)."""
        return self._for_call(kwargs).sequence.batch(inputs, config, return_exceptions=return_exceptions)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async :meth:`batch`."""
        stack = self._for_call(kwargs)
        return await stack.sequence.abatch(inputs, config, return_exceptions=return_exceptions)

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[str]:
        """Run the upstream stages, then stream the last stage's text as it is generated."""
        stack = self._for_call(kwargs)
        yield from stack._transform_stream_with_config(iter([input]), stack._stream, config)  # type: ignore[arg-type,misc]

    def _stream(self, inputs: Iterator[Any], config: RunnableConfig) -> Iterator[str]:
        state = _initial_state(next(inputs))
        *upstream, last = self.steps
        for step in upstream:
            state = step.invoke(state, config)
        yield from last.stream_answer(state, config)

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[str]:
        """Async :meth:`stream`."""

        async def one() -> AsyncIterator[Any]:
            yield input

        stack = self._for_call(kwargs)
        async for piece in stack._atransform_stream_with_config(one(), stack._astream, config):  # type: ignore[arg-type,misc]
            yield piece

    async def _astream(self, inputs: AsyncIterator[Any], config: RunnableConfig) -> AsyncIterator[str]:
        state = _initial_state([i async for i in inputs][0])
        *upstream, last = self.steps
        for step in upstream:
            state = await step.ainvoke(state, config)
        async for piece in last.astream_answer(state, config):
            yield piece
