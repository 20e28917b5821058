"""peft LoRA adapters as GGUF LoRA adapters for llama.cpp: checked, converted once, cached by hash.

A GGUF LoRA adapter holds, per adapted weight ``blk.N.attn_q.weight`` of the base, the pair
``blk.N.attn_q.weight.lora_a`` / ``.lora_b``: peft's ``A`` (r, in) and ``B`` (out, r) as they are (GGUF
``ne`` = [in, r] and [r, out]), and four metadata keys: ``general.architecture`` (the base's),
``general.type = "adapter"``, ``adapter.type = "lora"`` and ``adapter.lora.alpha``. llama.cpp scales each
pair by ``scale * alpha / rank``, like peft.

Llama's conversion to GGUF permutes the rows of ``W_q`` and ``W_k`` (the rotary embedding pairs
dimensions differently in llama.cpp than in transformers), so ``B`` of ``q_proj`` and ``k_proj`` gets the
same row permutation; ``A`` is untouched (``W + B A`` permuted by rows is ``P W + (P B) A``).

Everything llama.cpp would refuse with a bare "Failed to init server" (missing pairs, a layer the base
lacks, wrong shapes) or silently get wrong (DoRA, biases, embedding adapters, per-module alphas) is refused
here first with an :class:`~langchain_fslm.errors.AdapterError` naming the file and tensor.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_fslm.engine.adapter_check import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    read_adapter_config,
    read_tensor_header,
)
from langchain_fslm.errors import AdapterError
from langchain_fslm.files import write_atomically
from langchain_fslm.models.refs import ModelNotFoundError, cache_dir

CONVERTER_VERSION = 2
"""Part of the cache key: a change to the conversion makes every cached adapter stale."""

ADAPTABLE = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
"""GGUF tensor kinds an adapter may change: the attention and MLP projections of each block."""

PERMUTED_ROWS = {"llama": {"attn_q": "n_head", "attn_k": "n_head_kv"}}
"""Architectures we map, and the tensors whose rows their GGUF conversion permutes (by which head count)."""

_PREFIX = "base_model.model."
_REFUSED_CONFIG = {
    "use_dora": "DoRA adapters (use_dora=true) have a magnitude vector llama.cpp cannot apply",
    "lora_bias": "adapters with a LoRA bias (lora_bias=true) cannot be applied by llama.cpp",
    "fan_in_fan_out": "fan_in_fan_out adapters (GPT-2 Conv1D layers) are not mapped",
    "modules_to_save": "modules_to_save holds whole replaced modules, which a LoRA adapter cannot carry",
    "alpha_pattern": "per-module alphas (alpha_pattern) cannot be expressed: llama.cpp takes one alpha",
    "target_parameters": "adapters on raw parameters (target_parameters) are not mapped",
    "trainable_token_indices": "trained token embeddings (trainable_token_indices) are not mapped",
}


@dataclass(frozen=True)
class BaseGGUF:
    """What the conversion needs to know of a base GGUF file (its metadata; no weights are read).

    Attributes:
        path: The file.
        arch: ``general.architecture``.
        n_head: Attention heads.
        n_head_kv: Key/value heads.
        n_layers: Blocks.
        context_length: Training context (``{arch}.context_length``).
        chat_template: ``tokenizer.chat_template``, None if the file has none.
        shapes: Tensor name -> GGUF ``ne`` (innermost dimension first).
        tokens: ``tokenizer.ggml.tokens`` (empty if the file lists none), in the tokenizer's notation.
        tokenizer_model: ``tokenizer.ggml.model`` (``gpt2``, ``llama``, ...).
    """

    path: Path
    arch: str
    n_head: int
    n_head_kv: int
    n_layers: int
    context_length: int
    chat_template: str | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    tokens: tuple[str, ...] = field(default=(), repr=False)
    tokenizer_model: str | None = None


def read_base_gguf(path: str | Path) -> BaseGGUF:
    """Read a GGUF base model's metadata and tensor shapes.

    Raises:
        ModelNotFoundError: If the file is missing, not GGUF, or lacks the fields a model has.
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - ValueError, struct.error, OSError for a broken file
        raise ModelNotFoundError(
            f"{path} is not a readable GGUF file ({type(err).__name__}: {err})"
        ) from None

    def value(key: str, default: Any = None) -> Any:
        found = reader.fields.get(key)
        return default if found is None else found.contents()

    arch = value("general.architecture")
    if not isinstance(arch, str) or value("general.type", "model") != "model":
        raise ModelNotFoundError(f"{path} is not a GGUF model (general.architecture / general.type)")
    try:
        n_head = int(value(f"{arch}.attention.head_count"))
        n_layers = int(value(f"{arch}.block_count"))
        context = int(value(f"{arch}.context_length"))
    except (TypeError, ValueError):
        raise ModelNotFoundError(
            f"{path}: GGUF metadata lacks {arch}.attention.head_count/block_count"
        ) from None
    template = value("tokenizer.chat_template")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    # each string's bytes are one part; decoding them all is cheaper than contents() of the whole list
    strings: tuple[str, ...] = ()
    if tokens is not None:
        strings = tuple(bytes(tokens.parts[i]).decode("utf-8", "replace") for i in tokens.data)
    return BaseGGUF(
        path=path,
        arch=arch,
        n_head=n_head,
        n_head_kv=int(value(f"{arch}.attention.head_count_kv", n_head)),
        n_layers=n_layers,
        context_length=context,
        chat_template=template if isinstance(template, str) and template else None,
        shapes={t.name: tuple(int(d) for d in t.shape) for t in reader.tensors},
        tokens=strings,
        tokenizer_model=value("tokenizer.ggml.model"),
    )


@dataclass(frozen=True)
class LoraPlan:
    """A checked adapter: what to write. ``tensors`` maps each peft key to its GGUF name and permutation."""

    folder: Path
    alpha: float
    tensors: dict[str, tuple[str, str | None]]  # peft key -> (GGUF name, head-count field to permute by)


def _check_config(config: dict[str, Any], file: Path) -> float:
    """The alpha llama.cpp should get, or an AdapterError for a config it cannot apply."""
    for key, reason in _REFUSED_CONFIG.items():
        if config.get(key):
            raise AdapterError(f"{file}: {reason} (field {key!r}); run this stage with engine='torch'")
    if config.get("bias", "none") != "none":
        raise AdapterError(
            f"{file}: field 'bias' is {config['bias']!r}; llama.cpp LoRA adapters carry no biases "
            "(train with bias='none', or run this stage with engine='torch')"
        )
    alpha = config.get("lora_alpha", config["r"])
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise AdapterError(f"{file}: field 'lora_alpha' must be a number, got {alpha!r}")
    if config.get("use_rslora"):  # peft scales by alpha / sqrt(r); llama.cpp by alpha / r
        if config.get("rank_pattern"):
            raise AdapterError(f"{file}: rsLoRA with per-module ranks (rank_pattern) is not mapped")
        return float(alpha) * math.sqrt(config["r"])
    return float(alpha)


def plan_conversion(folder: str | Path, base: BaseGGUF) -> LoraPlan:
    """Check that an adapter folder can run on llama.cpp over ``base``, and say how to convert it.

    Raises:
        AdapterError: Naming the file and tensor or field llama.cpp cannot use.
    """
    import gguf

    folder = Path(folder)
    config = read_adapter_config(folder)
    alpha = _check_config(config, folder / CONFIG_FILE)
    permuted = PERMUTED_ROWS.get(base.arch)
    if permuted is None:
        raise AdapterError(
            f"{folder}: the base model {base.path.name} has architecture {base.arch!r}, whose LoRA layout "
            f"on llama.cpp is not mapped (mapped: {sorted(PERMUTED_ROWS)}); run this stack with "
            "engine='torch'"
        )
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == base.arch)
    names = gguf.get_tensor_name_map(arch, base.n_layers)
    file = folder / WEIGHTS_FILE
    shapes = {key: shape for key, (shape, _) in read_tensor_header(folder).items()}
    tensors: dict[str, tuple[str, str | None]] = {}
    pairs: dict[str, dict[str, list[int]]] = {}
    for key, shape in shapes.items():
        module, part = _split_key(key, file)
        mapped = names.get_name(module)
        kind = mapped.rsplit(".", 1)[-1] if mapped else None
        if mapped is None or kind not in ADAPTABLE:
            raise AdapterError(
                f"{file}: tensor {key!r} adapts module {module!r}, which llama.cpp cannot adapt here "
                f"(mapped: the {', '.join(ADAPTABLE)} projections); run this stage with engine='torch'"
            )
        if f"{mapped}.weight" not in base.shapes:
            raise AdapterError(
                f"{file}: tensor {key!r} is for {mapped}.weight, which {base.path.name} lacks "
                "(an adapter trained on another base?)"
            )
        if len(shape) != 2:
            raise AdapterError(f"{file}: tensor {key!r} has shape {shape}; a LoRA matrix has 2 dimensions")
        pairs.setdefault(mapped, {})[part] = shape
        suffix = "lora_a" if part == "lora_A" else "lora_b"
        tensors[key] = (f"{mapped}.weight.{suffix}", permuted.get(kind) if part == "lora_B" else None)
    if not tensors:
        raise AdapterError(f"{file}: holds no LoRA weights")
    for mapped, parts in sorted(pairs.items()):
        _check_pair(mapped, parts, base.shapes[f"{mapped}.weight"], file)
    return LoraPlan(folder=folder, alpha=alpha, tensors=tensors)


def _split_key(key: str, file: Path) -> tuple[str, str]:
    """``base_model.model.<module>.lora_A.weight`` -> (module, "lora_A"); anything else is refused."""
    for part in ("lora_A", "lora_B"):
        marker = f".{part}."
        if marker in key and key.startswith(_PREFIX) and key.endswith(".weight"):
            return key.split(marker)[0].removeprefix(_PREFIX), part
    what = "a DoRA magnitude vector" if "lora_magnitude_vector" in key else "not a LoRA A/B matrix"
    raise AdapterError(f"{file}: tensor {key!r} is {what}; llama.cpp cannot apply it")


def _check_pair(mapped: str, parts: dict[str, list[int]], base_ne: tuple[int, ...], file: Path) -> None:
    if set(parts) != {"lora_A", "lora_B"}:
        missing = ({"lora_A", "lora_B"} - set(parts)).pop()
        raise AdapterError(f"{file}: the adapter of {mapped} has no {missing} tensor")
    (rank_a, n_in), (n_out, rank_b) = parts["lora_A"], parts["lora_B"]
    if rank_a != rank_b or (n_in, n_out) != tuple(base_ne[:2]):
        raise AdapterError(
            f"{file}: the adapter of {mapped} has A {parts['lora_A']} and B {parts['lora_B']}, but the base "
            f"weight takes {base_ne[0]} inputs and gives {base_ne[1]} outputs (an adapter for another base?)"
        )


def _permute_rows(rows: Any, n_head: int) -> Any:
    """Reorder the rows of a q/k projection (out, r) the way llama.cpp's Llama conversion reorders W_q/W_k.

    Each head's rows ``[0..d/2) [d/2..d)`` are interleaved into pairs ``(0, d/2), (1, d/2 + 1), ...``.
    """
    out = rows.shape[0]
    return rows.reshape(n_head, 2, out // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def write_gguf_lora(plan: LoraPlan, base: BaseGGUF, target: Path, *, permute_qk: bool = True) -> Path:
    """Write the planned adapter as a GGUF LoRA file at ``target`` (atomically), in float16.

    float16 rather than float32: llama.cpp multiplies float32 LoRA matrices with other kernels when two
    requests of one adapter are decoded together than when one is, which flipped near-tied greedy tokens
    (3 of 24 texts changed under 8 threads); float16 gave every text its sequential result and agrees with
    torch as closely (top-5 |Δlogprob| 0.0018 vs 0.0014).

    Args:
        plan: What :func:`plan_conversion` made of the folder.
        base: The base model it was checked against.
        target: The file to write.
        permute_qk: Apply the q/k row permutation (off only to show that a test catches its absence).
    """
    import gguf
    import numpy as np

    from langchain_fslm.engine.safetensors_file import SafetensorsFormatError, read_float32

    file = plan.folder / WEIGHTS_FILE
    try:  # numpy only: a llama.cpp process never imports torch
        tensors = read_float32(file, list(plan.tensors))
    except SafetensorsFormatError as err:
        raise AdapterError(f"{file}: {err}") from None
    arrays: dict[str, Any] = {}
    for key, (name, heads) in plan.tensors.items():
        array = tensors[key].astype(np.float16)
        if heads is not None and permute_qk:
            array = _permute_rows(array, getattr(base, heads))
        arrays[name] = np.ascontiguousarray(array)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch=base.arch)  # writes general.architecture
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", plan.alpha)
        for name in sorted(arrays):
            writer.add_tensor(name, arrays[name])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return write_atomically(target, write)


def _digest(plan: LoraPlan, base: BaseGGUF, permute_qk: bool) -> str:
    digest = hashlib.sha256(f"v{CONVERTER_VERSION}|{base.arch}|{base.n_head}|{base.n_head_kv}|".encode())
    digest.update(f"{permute_qk}|{plan.alpha}|".encode())
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        with (plan.folder / file).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def gguf_lora(folder: str | Path, base: BaseGGUF, *, permute_qk: bool = True) -> Path:
    """The GGUF LoRA file of a peft adapter folder: converted on first use, then read from the cache.

    The file lives in ``cache_dir()/gguf-lora``, named by the sha256 of the adapter's files (and of what
    the conversion depends on), so an adapter saved again over the same folder is converted anew.

    Raises:
        AdapterError: If the adapter cannot run on llama.cpp (see :func:`plan_conversion`), or the
            converted file cannot be written.
    """
    plan = plan_conversion(folder, base)
    target = cache_dir() / "gguf-lora" / f"{_digest(plan, base, permute_qk)[:32]}.gguf"
    if target.is_file():
        return target
    try:
        return write_gguf_lora(plan, base, target, permute_qk=permute_qk)
    except OSError as err:
        raise AdapterError(f"{folder}: could not write its llama.cpp copy to {target}: {err}") from err


class GGUFAdapters:
    """The adapter registry of :class:`~langchain_fslm.engine.llamacpp.LlamaCppEngine` (a mixin).

    Loading checks and converts an adapter; the server takes it at its next start. Releasing the last
    load forgets it; the server keeps it at scale 0 until it restarts.

    Attributes:
        gguf: The base GGUF the adapters are checked against.
        adapter_paths: Adapter name -> the peft folder it was loaded from.
        adapter_users: Adapter name -> loads not yet released.
        adapter_files: Adapter name -> its GGUF LoRA file.
    """

    gguf: BaseGGUF
    adapter_paths: dict[str, str]
    adapter_users: dict[str, int]
    adapter_files: dict[str, Path]
    _lock: threading.RLock
    _served: list[str | None]  # the server's lora ids -> adapter names (None: gone since its start)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Check and convert a peft LoRA adapter (once, cached) and register it under ``name``.

        The server loads it at its next start, which the first request that uses it triggers.

        Raises:
            AdapterError: If the adapter is missing, broken, or cannot run on llama.cpp (named).
        """
        path = Path(path)
        with self._lock:
            known = self.adapter_paths.get(name)
            if known is not None and Path(known).resolve() == path.resolve():
                self.adapter_users[name] += 1
                return
            try:
                converted = gguf_lora(path, self.gguf)
            except AdapterError as err:
                raise AdapterError(f"Adapter {name!r}: {err}") from None
            if known is not None:  # another folder under a loaded name: its users share the new weights
                self._served = [None if n == name else n for n in self._served]
            self.adapter_paths[name] = str(path)
            self.adapter_files[name] = converted
            self.adapter_users[name] = self.adapter_users.get(name, 0) + 1

    def release_adapter(self, name: str) -> None:
        """Give back one load; the last one forgets the adapter (the server drops it at its next start).

        Raises:
            AdapterError: If no adapter of that name is loaded.
        """
        with self._lock:
            if name not in self.adapter_paths:
                raise AdapterError(f"No adapter named {name!r} is loaded.")
            self.adapter_users[name] -= 1
            if self.adapter_users[name] <= 0:
                for table in (self.adapter_paths, self.adapter_users, self.adapter_files):
                    table.pop(name, None)
                self._served = [None if n == name else n for n in self._served]

    def has_adapter(self, name: str) -> bool:
        """Whether an adapter of that name is loaded."""
        return name in self.adapter_paths

    def save_adapter(self, name: str, folder: str | Path) -> None:
        """Copy a loaded adapter's peft files to ``folder``."""
        if name not in self.adapter_paths:
            raise AdapterError(f"No adapter named {name!r} is loaded.")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(Path(self.adapter_paths[name]) / file, folder / file)
