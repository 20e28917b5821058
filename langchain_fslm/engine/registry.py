"""Which engine runs a stage: engine kinds, their factories, and the adapter loads of a stack.

This is the one place that knows the engine classes. The rest of the package asks an engine for its
``kind`` and :meth:`~langchain_fslm.engine.base.Engine.capabilities` (through :func:`kind_of` and
:func:`capabilities_of`, which also accept duck-typed engines), so a new engine (llama.cpp,
grammar-constrained decoding) plugs in with :func:`register_engine` alone::

    register_engine("llamacpp", lambda ref, settings: LlamaCppEngine(ref, **(settings or {})))
    FSLMChain.from_specs(specs, backend="llamacpp")  # a spec's backend names the kind
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from langchain_fslm.engine.base import Engine, EngineCapabilities
from langchain_fslm.engine.remote import RemoteEngine, RemoteSettings
from langchain_fslm.models import BaseModelRef, ModelNotFoundError, resolve

if TYPE_CHECKING:
    from langchain_fslm.manifest import StageSpec

EngineFactory = Callable[[BaseModelRef, Any], Engine]
"""Makes (or finds) the engine of a kind: ``factory(base_model_ref, settings)``; ``settings`` is what the
caller passed for that kind (``remote=`` for ``"remote"``), or None."""

_FACTORIES: dict[str, EngineFactory] = {}
_FACTORIES_LOCK = threading.Lock()


def register_engine(kind: str, factory: EngineFactory, *, replace: bool = False) -> None:
    """Make ``kind`` a backend that stages (a spec's ``backend``, ``from_specs(backend=)``) can name.

    Args:
        kind: The backend name, e.g. ``"llamacpp"``.
        factory: ``factory(base_model_ref, settings) -> Engine``; called once per stack that needs it, so
            it should share engines itself where loading is expensive (as the local one does).
        replace: Allow replacing a registered kind (the built-in ``local`` and ``remote`` included).

    Raises:
        ValueError: If the kind is already registered and ``replace`` is False.
    """
    with _FACTORIES_LOCK:
        if kind in _FACTORIES and not replace:
            raise ValueError(f"An engine kind {kind!r} is registered already (pass replace=True).")
        _FACTORIES[kind] = factory


def engine_kinds() -> list[str]:
    """The registered engine kinds."""
    with _FACTORIES_LOCK:
        return sorted(_FACTORIES)


def create_engine(
    kind: str = "local", base_model: BaseModelRef | str | None = None, settings: Any = None
) -> Engine:
    """The engine of a kind for a base model (the local one is shared per base model in the process).

    Args:
        kind: A registered engine kind (``"local"``, ``"remote"``, or one of :func:`register_engine`).
        base_model: The base model (default: the embedded SmolLM2 default).
        settings: The kind's settings (for ``"remote"``: what :func:`remote_engine_from` takes).

    Raises:
        ValueError: If no engine of that kind is registered.
    """
    with _FACTORIES_LOCK:
        factory = _FACTORIES.get(kind)
    if factory is None:
        raise ValueError(f"No engine kind {kind!r}; registered: {engine_kinds()} (see register_engine).")
    ref = BaseModelRef(source=base_model) if isinstance(base_model, str) else (base_model or BaseModelRef())
    return factory(ref, settings)


def _local_engine(ref: BaseModelRef, settings: Any) -> Engine:
    from langchain_fslm.engine.local import get_engine  # transformers is imported only when needed

    return get_engine(ref)


def remote_engine_from(remote: Engine | RemoteSettings | Mapping[str, Any] | str | None) -> Engine:
    """An engine from what a caller passed as ``remote=`` (None: read the environment).

    Args:
        remote: An engine (returned as is), settings, a settings mapping, or a base URL.

    Raises:
        RemoteEngineError: If no base URL is given, neither here nor in ``FSLM_REMOTE_BASE_URL``.
    """
    if isinstance(remote, Engine):
        return remote
    if isinstance(remote, RemoteSettings):
        return RemoteEngine(remote)
    if isinstance(remote, str):
        return RemoteEngine(RemoteSettings.from_env(base_url=remote))
    return RemoteEngine(RemoteSettings.from_env(**dict(remote or {})))


def _llamacpp_engine(ref: BaseModelRef, settings: Any) -> Engine:
    from langchain_fslm.engine.llamacpp import get_llamacpp_engine  # light: xllamacpp loads at start

    return get_llamacpp_engine(ref, **dict(settings or {}))


register_engine("local", _local_engine)
register_engine("torch", _local_engine)
register_engine("llamacpp", _llamacpp_engine)
register_engine("remote", lambda ref, settings: remote_engine_from(settings))


# ----------------------------------------------------------------------------- which in-process engine
EngineChoice = Literal["auto", "llamacpp", "torch"]
"""What runs a stack's in-process stages: ``torch`` (transformers + peft: :class:`LocalEngine`),
``llamacpp`` (llama.cpp on a GGUF base: :class:`LlamaCppEngine`), or ``auto``: llama.cpp where the base is
a GGUF file, else torch."""
ENGINE_CHOICES: tuple[str, ...] = ("auto", "llamacpp", "torch")
DEFAULT_ENGINE: EngineChoice = "auto"
"""The choice when neither the caller nor the manifest makes one (``$FSLM_ENGINE`` overrides it)."""
ENV_ENGINE = "FSLM_ENGINE"


def default_engine() -> str:
    """The engine choice when none is given: ``$FSLM_ENGINE`` if set, else :data:`DEFAULT_ENGINE`.

    Raises:
        ValueError: If ``$FSLM_ENGINE`` names no choice.
    """
    choice = os.environ.get(ENV_ENGINE, "").strip().lower() or DEFAULT_ENGINE
    if choice not in ENGINE_CHOICES:
        raise ValueError(f"${ENV_ENGINE}={choice!r}; choose one of {list(ENGINE_CHOICES)}")
    return choice


def local_engine_kind(choice: str | None, ref: BaseModelRef, *, needs_torch: bool = False) -> str:
    """The engine kind (``torch`` or ``llamacpp``) that runs a stack's in-process stages.

    Args:
        choice: ``auto``, ``llamacpp``, ``torch``, or None for :func:`default_engine`.
        ref: The stack's base model.
        needs_torch: The caller needs what only torch has (compiled decoding, scoring, training): an
            ``auto`` or default choice becomes ``torch``; an explicit ``llamacpp`` is refused.

    Raises:
        ValueError: For an unknown choice, or ``llamacpp`` where torch is needed.
    """
    explicit = choice is not None
    choice = default_engine() if choice is None else choice
    if choice not in ENGINE_CHOICES:
        raise ValueError(f"engine={choice!r}: choose one of {list(ENGINE_CHOICES)} (or pass an Engine)")
    if needs_torch:
        if choice == "llamacpp" and explicit:
            raise ValueError(
                "engine='llamacpp' cannot do this: compiled decoding, log-likelihood scoring and "
                "training run on the torch engine (engine='torch')"
            )
        return "torch"
    if choice == "auto":
        try:
            return "llamacpp" if resolve(ref).gguf_file else "torch"
        except ModelNotFoundError:
            return "torch"  # the torch engine reports the missing model
    return choice


def engine_choice_of(engines: Iterable[Any]) -> EngineChoice | None:
    """A manifest's ``engine`` for a stack: ``llamacpp`` if a stage runs on llama.cpp, else None."""
    from langchain_fslm.engine.llamacpp import LlamaCppEngine

    return "llamacpp" if any(isinstance(e, LlamaCppEngine) for e in engines) else None


# ----------------------------------------------------------------------------- asking engines
def kind_of(engine: Any) -> str:
    """An engine's kind; ``"local"`` for a duck-typed engine without one (the tests' fakes)."""
    return str(getattr(engine, "kind", "local"))


def capabilities_of(engine: Any) -> EngineCapabilities:
    """An engine's capabilities; none of the extras for a duck-typed engine without the method."""
    capabilities = getattr(engine, "capabilities", None)
    return capabilities() if callable(capabilities) else EngineCapabilities()


def base_ref_of(engine: Any) -> BaseModelRef | None:
    """The base model an engine runs, where it says."""
    ref = getattr(engine, "base_ref", None)
    return ref if isinstance(ref, BaseModelRef) else None


# ----------------------------------------------------------------------------- adapter loads
def adapter_name(stage: str, path: str | Path) -> str:
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


class AdapterLoads:
    """The in-process adapters one stack loaded; copies of the stack share it, and release them once."""

    def __init__(self, loads: list[tuple[Any, str]] | None = None) -> None:
        self.loads = loads or []  # (engine, adapter name)
        self.lock = threading.Lock()
        self.released = False  # once true, the stack refuses to run (another stack may hold the names)

    def release(self) -> None:
        """Give back every load (once, whichever copy or thread asks)."""
        with self.lock:
            loads, self.loads = self.loads, []
            self.released = self.released or bool(loads)
        for engine, name in loads:
            engine.release_adapter(name)

    @contextlib.contextmanager
    def released_on_error(self) -> Iterator[None]:
        """Release the loads if the block fails: a stack that fails to build keeps none of them."""
        try:
            yield
        except BaseException:
            self.release()
            raise


# ----------------------------------------------------------------------------- a stack's engines
@dataclass
class AssembledStage:
    """One stage's engine, ready: the spec, the engine it runs on, and its loaded adapter's name."""

    spec: StageSpec
    engine: Engine
    adapter: str | None = None


@dataclass
class StageAssembly:
    """What :func:`assemble_stages` made of a stack's specs.

    Attributes:
        base_model: The stack's base model reference (for its manifest), None if unknown.
        stages: Each stage's engine and adapter, in order.
        sources: Stage name -> the adapter folder it was loaded from.
        loads: The in-process adapter loads, for :meth:`FSLMChain.release`.
    """

    base_model: BaseModelRef | None
    stages: list[AssembledStage] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    loads: AdapterLoads = field(default_factory=AdapterLoads)


def assemble_stages(
    specs: Sequence[StageSpec],
    *,
    base_model: BaseModelRef | str | None = None,
    engine: Engine | str | None = None,
    adapter_root: str | Path | None = None,
    backend: str | None = None,
    remote: Any = None,
    compile_decode: bool = False,
) -> StageAssembly:
    """Pick each stage's engine and load its adapter (see :meth:`FSLMChain.from_specs` for the arguments).

    ``engine`` runs the ``local`` stages in place of the base model's shared engine, or names which
    shared engine runs them (``"auto"``, ``"llamacpp"``, ``"torch"``; None: :func:`default_engine`, torch
    where ``compile_decode`` asks for it); ``remote`` is the settings of the ``remote`` kind. Adapters
    held in the process get a name unique to their files (:func:`adapter_name`) and are recorded for
    release; a server serves each under the stage's name.

    Raises:
        ValueError: If ``compile_decode`` is asked of a stack without an engine that compiles.
        AdapterError: If an adapter cannot be loaded (none of the stack's loads is kept).
    """
    ref = BaseModelRef(source=base_model) if isinstance(base_model, str) else base_model
    kinds = [backend or spec.backend for spec in specs]
    choice = engine if isinstance(engine, str) else None
    given = engine if isinstance(engine, Engine) else None
    if choice is not None:
        local_engine_kind(choice, ref or BaseModelRef())  # a bad choice fails before anything loads
    if given is not None and ref is None and "local" in kinds:
        ref = base_ref_of(given)
    elif given is None or "local" not in kinds:
        ref = ref or BaseModelRef()  # also kept for the manifest when no local model is loaded
    engines: dict[str, Engine] = {"local": given} if given is not None and "local" in kinds else {}
    for kind in sorted(set(kinds) - set(engines), key=lambda k: k == "local"):  # servers first: cheap
        if kind == "local":
            local_kind = local_engine_kind(choice, ref or BaseModelRef(), needs_torch=compile_decode)
            engines[kind] = create_engine(local_kind, ref)
        else:
            engines[kind] = create_engine(kind, ref, remote if kind == "remote" else None)
    if compile_decode:
        local = engines.get("local")
        if local is None or not capabilities_of(local).compile_decode:
            raise ValueError(
                "compile_decode=True compiles the decoding of local stages on a LocalEngine; this stack "
                f"has {'no local stages' if local is None else type(local).__name__}"
            )
        local.enable_compile_decode()
    assembly = StageAssembly(base_model=ref)
    with assembly.loads.released_on_error():  # a failed load keeps none of the adapters loaded before
        for spec, kind in zip(specs, kinds, strict=True):
            assembly.stages.append(_assemble(spec, engines[kind], adapter_root, assembly))
    return assembly


def _assemble(
    spec: StageSpec, engine: Engine, adapter_root: str | Path | None, assembly: StageAssembly
) -> AssembledStage:
    if spec.adapter is None:
        return AssembledStage(spec, engine)
    folder = Path(adapter_root or ".") / spec.adapter
    # a server serves one adapter per model name; in-process adapters are shared between stacks
    name = spec.name if kind_of(engine) == "remote" else adapter_name(spec.name, folder)
    # an adapter already loaded from that folder only counts one more user; a remote engine refuses
    # a second, different adapter under one name
    engine.load_adapter(name, folder)
    if capabilities_of(engine).local_adapters:
        assembly.loads.loads.append((engine, name))
    assembly.sources[spec.name] = str(folder)
    return AssembledStage(spec, engine, name)
