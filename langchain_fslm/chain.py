"""``FSLMChain``: a stack of small-model stages, composed in LCEL, usable wherever an LLM goes.

The stack *is* an LCEL sequence, built once when the stack is made (see
:mod:`langchain_fslm.stack_steps` for its data path)::

    fslm_input | <stage 1> | ... | <stage N>

``FSLMChain`` binds that sequence the way LangChain's own ``RunnableBinding`` does, so ``invoke``,
``batch``, ``stream`` and their async forms are LangChain's, not ours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from langchain_core.language_models import LanguageModelInput
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableSequence
from langchain_core.runnables.base import RunnableBindingBase
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_fslm.engine.base import Engine
from langchain_fslm.engine.registry import AdapterLoads as _AdapterLoads
from langchain_fslm.engine.registry import adapter_name as _adapter_name  # noqa: F401 - kept importable
from langchain_fslm.engine.registry import assemble_stages, kind_of
from langchain_fslm.engine.remote import RemoteEngine, RemoteSettings
from langchain_fslm.errors import ManifestError
from langchain_fslm.handoff import FINAL_TARGET
from langchain_fslm.manifest import StackManifest, StageSpec
from langchain_fslm.models import BaseModelRef
from langchain_fslm.persistence import load_stack_manifest, save_stack
from langchain_fslm.stack_steps import (
    RESULTS_KEY,
    StackOutput,
    StageStep,
    State,
    initial_state,
    run_upstream,
    stack_output,
)
from langchain_fslm.stage import SLMRunnable
from langchain_fslm.stage_parser import StageResult

__all__ = ["RESULTS_KEY", "FSLMChain", "StackOutput", "StageStep", "State"]

_FIELDS = ("stages", "base_model", "include_handoffs", "adapter_sources", "description", "name")


class FSLMChain(RunnableBindingBase[LanguageModelInput, Any]):
    """A fine-tuned stack of small language models, usable wherever LangChain expects an LLM.

    It reads a str, a PromptValue or a list of messages and returns the last stage's answer as a
    str (or a :class:`StackOutput` with every stage's parsed output when ``include_handoffs=True``).
    Per call it takes ``stop=[...]`` (extra stop sequences for the last stage).

    Args:
        stages: The stages, in order.
        base_model: Reference of the shared base model (written to the manifest on save).
        include_handoffs: Return a :class:`StackOutput` instead of a str.
        adapter_sources: Stage name -> adapter folder it was loaded from (used on save).
        description: Free text saved in the manifest.
        name: The stack's name (its run in traces, the ``stack`` of its handoff events).

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

    def __init__(
        self, *, stages: Sequence[SLMRunnable], include_handoffs: bool = False, **fields: Any
    ) -> None:
        super().__init__(
            bound=RunnableLambda(_unbuilt),  # replaced below: the sequence reads the validated fields
            stages=list(stages),
            include_handoffs=include_handoffs,
            custom_output_type=StackOutput if include_handoffs else str,
            **fields,
        )
        self.bound = self._sequence()

    def _sequence(self) -> Runnable[Any, Any]:
        """The stack as one LCEL sequence (built once per stack)."""
        *upstream, last = self.steps
        tail: list[Runnable[Any, Any]] = (
            [last.runnable(), RunnableLambda(stack_output, name="fslm_output")]
            if self.include_handoffs
            else [last.answer()]
        )
        return RunnableSequence(
            RunnableLambda(initial_state, name="fslm_input"),
            *(step.runnable() for step in upstream),
            *tail,
            name=self.name or "FSLMChain",
        )

    @property
    def steps(self) -> list[StageStep]:
        """One step per stage, each knowing which stage reads its output next."""
        names = [s.spec.name for s in self.stages]
        stack = self.name or "FSLMChain"
        return [
            StageStep(s, names[i + 1] if i + 1 < len(names) else FINAL_TARGET, stack)
            for i, s in enumerate(self.stages)
        ]

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        """What the stack accepts."""
        return LanguageModelInput

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> FSLMChain:
        """A copy with ``update`` applied, built anew so its sequence follows the new settings.

        The copy shares this stack's loaded adapters (:meth:`release` on either releases them).
        """
        fields = {k: getattr(self, k) for k in _FIELDS}
        copy = FSLMChain(**{**fields, **(update or {})})
        copy._adapters = self._adapters
        return copy

    def with_handoffs(self, include: bool = True) -> FSLMChain:
        """A copy that returns a :class:`StackOutput` (every stage's result) instead of a str."""
        return self.model_copy(update={"include_handoffs": include})

    def with_generation(self, stage: str | None = None, **updates: Any) -> FSLMChain:
        """A copy whose stage (default: the last) uses updated generation settings.

        Example: ``stack.with_generation(temperature=0.7, max_new_tokens=64)``.
        """
        names = [s.spec.name for s in self.stages]
        index = len(names) - 1 if stage is None else names.index(stage)
        stages = list(self.stages)
        stages[index] = stages[index].with_generation(**updates)
        return self.model_copy(update={"stages": stages})

    def upstream_states(
        self,
        inputs: Sequence[Any],
        on_error: Callable[[StageStep, Any, Exception], StageResult],
        config: RunnableConfig | None = None,
    ) -> list[State]:
        """Run every stage but the last on many inputs (a batch per stage), for evaluation.

        Args:
            inputs: Stack inputs.
            on_error: Called with the step, the input and the exception of a row whose stage failed; returns
                the result handed on instead (or raises to stop).
            config: Runnable config for the runs.

        Returns:
            Each input's state before the last stage.
        """
        return run_upstream(self.steps[:-1], inputs, on_error, config)

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
        manifest = load_stack_manifest(folder)
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
            s.spec.model_copy(
                update={
                    "output_type": s.output_type.type_name,
                    "adapter": f"{adapter_dir}/{s.spec.name}" if s.adapter else None,
                    "backend": "remote" if kind_of(s.engine) == "remote" else "local",
                }
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
        by_name = {stage.spec.name: stage for stage in self.stages}

        def write_adapter(spec: StageSpec, target: Path) -> None:
            stage = by_name[spec.name]
            if stage.adapter:  # to_manifest names an adapter folder only for these stages
                stage.engine.save_adapter(stage.adapter, target)

        return save_stack(folder, self.to_manifest(), write_adapter)

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


def _unbuilt(_: Any) -> Any:
    raise RuntimeError("FSLMChain is still being built")
