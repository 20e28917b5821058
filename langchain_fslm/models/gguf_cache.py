"""The GGUF conversion cache: a GGUF file is de-quantised once into a plain safetensors folder.

The folder is keyed by the file's sha256 (remembered per path, inode, size and times so a second load
does not re-read the file), written atomically (temp folder, then rename), marked complete by its last
file, and converted by one process at a time under an OS file lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_fslm.files import sha256_file, write_text
from langchain_fslm.models.refs import (
    BaseModelRef,
    ModelNotFoundError,
    ResolvedModel,
    cache_dir,
    error_sentence,
    torch_dtype,
)

logger = logging.getLogger(__name__)


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
    digest = sha256_file(path)
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
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch_dtype(ref.dtype), use_safetensors=True)
    return model, tokenizer


def _try_cached(cached: Path, digest: str, ref: BaseModelRef) -> tuple[Any, Any] | None:
    if not _cache_is_complete(cached, digest):
        return None
    try:
        return _load_cached(cached, ref)
    except Exception as err:  # noqa: BLE001 - safetensors, transformers and json raise many types
        logger.warning("Ignoring broken model cache %s (%s); converting again.", cached, err)
        return None


def load_gguf(resolved: ResolvedModel, ref: BaseModelRef) -> tuple[Any, Any]:
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
                resolved.path, gguf_file=resolved.gguf_file, dtype=torch_dtype(_CACHE_DTYPE)
            )
        except (OSError, ValueError) as err:  # not a GGUF file, or an architecture transformers cannot read
            raise ModelNotFoundError(f"Could not load GGUF file {gguf_path}: {error_sentence(err)}") from err
        try:
            _write_plain_copy(model, tokenizer, cached, digest)
        except OSError as err:  # a read-only home must not stop the load
            logger.warning("Could not cache the converted model in %s: %s", cached, err)
            return model.to(torch_dtype(ref.dtype)), tokenizer
        return _load_cached(cached, ref)


def _remove_leftovers(cached: Path) -> None:
    """Remove a broken cache folder and the temporary folders of killed conversions of this file.

    Called with the file's conversion lock held, so no live process is writing them.
    """
    shutil.rmtree(cached, ignore_errors=True)
    for tmp in cached.parent.glob(f".tmp-{cached.name}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


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
