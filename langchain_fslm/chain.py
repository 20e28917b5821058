"""``FSLMChain``: a stack of small-model stages, composed in LCEL, usable wherever an LLM goes.

The stack *is* an LCEL sequence, built once when the stack is made (see
:mod:`langchain_fslm.stack_steps` for its data path)::

    fslm_input | <stage 1> | ... | <stage N>

``FSLMChain`` binds that sequence the way LangChain's own ``RunnableBinding`` does, so ``invoke``,
``batch``, ``stream`` and their async forms are LangChain's, not ours.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from langchain_core.language_models import LanguageModelInput
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableSequence
from langchain_core.runnables.base import RunnableBindingBase
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_fslm.engine.base import Engine
from langchain_fslm.engine.remote import RemoteEngine, RemoteSettings
from langchain_fslm.engine.remote import remote_engine as remote_engine_from
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


def _adapter_name(stage: str, path: str | Path) -> str:
    """A unique engine-wide adapter name, so stacks sharing a base never overwrite each other's.

    The name covers the folder and the identity of its files (inode, size, mtime, ctime), so an
    adapter saved again over the same folder (``save_pretrained`` or ``fslm train`` over an existing
    stack) is loaded anew instead of reusing the weights loaded from the old files.
    """
    folder = Path(path).expanduser().resolve()
    digest = hashlib.sha256(str(folder).encode())
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        try:
            st = (folder / file).stat()
        except OSError:  # missing files are reported by the adapter check
            continue
        digest.update(f"|{file}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}".encode())
    return f"{stage}-{digest.hexdigest()[:10]}"


class _AdapterLoads:
    """The local adapters one :meth:`FSLMChain.from_specs` call loaded; copies of the stack share it."""

    def __init__(self, loads: list[tuple[Any, str]] | None = None) -> None:
        self.loads = loads or []  # (LocalEngine, adapter name)
        self.lock = threading.Lock()

    def release(self) -> None:
        with self.lock:  # once, whichever copy (or thread) asks
            loads, self.loads = self.loads, []
        for engine, name in loads:
            engine.release_adapter(name)


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
            backend: ``local`` or ``remote`` for every stage; None: each spec's own ``backend``.
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
        from langchain_fslm.engine.local import LocalEngine, get_engine

        ref = BaseModelRef(source=base_model) if isinstance(base_model, str) else base_model
        kinds = [backend or spec.backend for spec in specs]
        remote_engine = remote_engine_from(remote) if "remote" in kinds else None
        if "local" not in kinds:
            ref = ref or BaseModelRef()  # kept for the manifest; no local model is loaded
        elif engine is None:
            ref = ref or BaseModelRef()
            engine = get_engine(ref)
        elif ref is None and isinstance(engine, LocalEngine):
            ref = engine.base_ref
        if compile_decode:
            if "local" not in kinds or not isinstance(engine, LocalEngine):
                raise ValueError(
                    "compile_decode=True compiles the decoding of local stages on a LocalEngine; "
                    f"this stack has {'no local stages' if 'local' not in kinds else type(engine).__name__}"
                )
            engine.enable_compile_decode()
        stages, sources, loads = [], {}, _AdapterLoads()
        try:
            for spec, kind in zip(specs, kinds, strict=True):
                stage_engine = remote_engine if kind == "remote" else engine
                adapter = None
                if spec.adapter is not None:
                    folder = Path(adapter_root or ".") / spec.adapter
                    remote_stage = isinstance(stage_engine, RemoteEngine)
                    adapter = spec.name if remote_stage else _adapter_name(spec.name, folder)
                    # an adapter already loaded from that folder only counts one more user;
                    # a remote engine refuses a second, different adapter under one name
                    stage_engine.load_adapter(adapter, folder)  # type: ignore[union-attr]
                    if isinstance(stage_engine, LocalEngine):
                        loads.loads.append((stage_engine, adapter))
                    sources[spec.name] = str(folder)
                stages.append(SLMRunnable.from_spec(spec, stage_engine, adapter))  # type: ignore[arg-type]
            chain = cls(stages=stages, base_model=ref, adapter_sources=sources, **kwargs)
        except BaseException:
            loads.release()  # a failed load keeps none of the adapters it loaded before failing
            raise
        chain._adapters = loads
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
            StageSpec(
                name=s.name,
                prompt=s.prompt,
                output_type=s.output_type.type_name,
                adapter=f"{adapter_dir}/{s.name}" if s.adapter else None,
                generation=s.generation,
                system=s.system,
                backend="remote" if isinstance(s.engine, RemoteEngine) else "local",
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
