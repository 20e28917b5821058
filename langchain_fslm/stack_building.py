"""How stacks are made and saved: from stage specs, the default roles, a saved folder; to a folder.

:class:`StackBuilding` holds these constructors for :class:`~langchain_fslm.FSLMChain` (its running
part lives in ``chain.py``); the engines and adapters come from :mod:`langchain_fslm.engine.registry`,
the folder format from :mod:`langchain_fslm.persistence`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from langchain_fslm.engine.base import Engine
from langchain_fslm.engine.registry import EngineChoice, assemble_stages
from langchain_fslm.engine.remote import RemoteEngine, RemoteSettings
from langchain_fslm.manifest import StackManifest, StageSpec
from langchain_fslm.models import BaseModelRef
from langchain_fslm.persistence import base_model_for, load_stack_manifest, save_stack, stack_manifest
from langchain_fslm.stage import SLMRunnable

if TYPE_CHECKING:
    from langchain_fslm.chain import FSLMChain

__all__ = ["StackBuilding"]


class StackBuilding:
    """The constructors and the saving of :class:`~langchain_fslm.FSLMChain` (a mixin)."""

    @classmethod
    def from_specs(
        cls: Any,  # FSLMChain (a mixin cannot name its subclass as its own type)
        specs: Sequence[StageSpec],
        *,
        base_model: BaseModelRef | str | None = None,
        engine: Engine | EngineChoice | None = None,
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
            engine: An engine to use instead of loading ``base_model`` (shared if already loaded), or
                which shared engine runs the in-process stages: ``"torch"`` (transformers + peft),
                ``"llamacpp"`` (llama.cpp on a GGUF base), ``"auto"`` (llama.cpp where the base is a GGUF
                file). None: ``$FSLM_ENGINE``, else torch; torch whenever ``compile_decode`` is on.
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
        cls: Any,  # FSLMChain (a mixin cannot name its subclass as its own type)
        base_model: BaseModelRef | str | None = None,
        *,
        trained: bool | None = None,
        max_new_tokens: int | None = None,
        compile_decode: bool = False,
        engine: Engine | EngineChoice | None = None,
    ) -> FSLMChain:
        """The default stack (intent → answer; see docs/stack.md).

        Args:
            base_model: Base model (default: the embedded SmolLM2-135M-Instruct).
            trained: True: the trained stack shipped in the package (its adapters were trained on the
                embedded base; see ``langchain_fslm/stacks/default/README.md``); False: the zero-shot
                prompts, no adapters; None (default): the shipped stack where one is shipped and
                ``base_model`` is not given, else zero-shot.
            max_new_tokens: Override every stage's generation budget.
            compile_decode: Turn on compiled decoding in the local engine (see :meth:`from_specs`).
            engine: An engine, or ``"torch"`` / ``"llamacpp"`` / ``"auto"`` (see :meth:`from_specs`).

        Raises:
            ManifestError: If ``trained=True`` and no trained stack is shipped, or its adapter files do
                not match the hashes on its card.
        """
        from langchain_fslm.errors import ManifestError
        from langchain_fslm.roles import default_stage_specs
        from langchain_fslm.shipped import SHIPPED_DIR, shipped_stack_dir

        folder = shipped_stack_dir() if trained or (trained is None and base_model is None) else None
        if trained and folder is None:
            raise ManifestError(f"no trained default stack is shipped in this install ({SHIPPED_DIR})")
        if folder is None:
            specs, base, root = default_stage_specs(max_new_tokens), base_model, None
        else:
            manifest = load_stack_manifest(folder)
            specs = [s.with_budget(max_new_tokens) for s in manifest.stages]
            base, root = base_model_for(manifest, folder, base_model, False), folder
        return cls.from_specs(
            specs, base_model=base, compile_decode=compile_decode, engine=engine, adapter_root=root
        )

    @classmethod
    def from_pretrained(
        cls: Any,  # FSLMChain (a mixin cannot name its subclass as its own type)
        folder: str | Path,
        *,
        engine: Engine | EngineChoice | None = None,
        base_model: BaseModelRef | str | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> FSLMChain:
        """Load a stack saved with :meth:`save_pretrained` (or written by ``fslm train``).

        Each stage runs on its manifest ``backend``; ``backend="remote"`` (with ``remote=``, see
        :meth:`from_specs`) or ``backend="local"`` switches all.

        Args:
            folder: The stack folder.
            engine: An engine to use instead of loading the manifest's base model, or ``"torch"`` /
                ``"llamacpp"`` / ``"auto"`` (see :meth:`from_specs`). Default: the manifest's ``engine``.
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
        base = base_model_for(manifest, folder, base_model, trust_remote_code)
        return cls.from_specs(
            manifest.stages,
            base_model=base,
            engine=engine if engine is not None else manifest.engine,
            adapter_root=folder,
            description=manifest.description,
            name=manifest.name,
            **kwargs,
        )

    def to_manifest(self: Any, adapter_dir: str = "adapters") -> StackManifest:
        """This stack's manifest (adapters at ``adapter_dir/<stage>``)."""
        return stack_manifest(self, adapter_dir)

    def save_pretrained(self: Any, folder: str | Path) -> Path:
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
