"""Check a LoRA adapter folder before peft touches the model: readable files, sane config, fitting shapes.

Errors name the file and the field (or tensor). Only ``adapter_model.safetensors`` is read: pickled
weights (``adapter_model.bin``) are never loaded. A failed check leaves the model untouched, which a
failure half-way through peft's loading would not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from langchain_fslm.errors import AdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def read_adapter_config(path: Path) -> dict[str, Any]:
    """Read and check ``adapter_config.json``.

    Raises:
        AdapterError: Naming the file and the field that is missing or wrong.
    """
    file = path / CONFIG_FILE
    if not file.is_file():
        raise AdapterError(f"{file} is missing.")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{file}: expected a JSON object, got {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        kind = config.get("peft_type")
        raise AdapterError(f"{file}: field 'peft_type' is {kind!r}; only 'LORA' is supported")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise AdapterError(f"{file}: field 'r' must be a positive integer, got {r!r}")
    targets = config.get("target_modules")
    if not targets or not isinstance(targets, list | str):
        raise AdapterError(f"{file}: field 'target_modules' must name the modules the adapter changes")
    return config


def read_tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Shapes of every tensor in ``adapter_model.safetensors`` (header only, no data loaded).

    Raises:
        AdapterError: If the file is missing, truncated or not safetensors.
    """
    from safetensors import safe_open

    file = path / WEIGHTS_FILE
    if not file.is_file():
        pickled = ""
        if (path / "adapter_model.bin").exists():
            pickled = " (adapter_model.bin is never loaded: unpickling can run code)"
        raise AdapterError(f"{file} is missing{pickled}.")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises SafetensorError / OSError for broken files
        raise AdapterError(f"{file}: not a readable safetensors file ({err})") from None


def check_adapter(path: Path, base_model: Any) -> None:
    """Check an adapter folder against the base model it is about to be loaded onto.

    Args:
        path: The adapter folder.
        base_model: The plain (unwrapped) base model.

    Raises:
        AdapterError: Naming the file and field or tensor that is wrong.
    """
    config = read_adapter_config(path)
    shapes = read_tensor_shapes(path)
    rank = None if config.get("rank_pattern") else config["r"]  # per-module ranks: peft checks them
    file = path / WEIGHTS_FILE
    if not shapes:
        raise AdapterError(f"{file}: holds no tensors")
    pairs: dict[str, set[str]] = {}
    for key, shape in shapes.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker not in key:
                continue
            if not key.startswith(_PREFIX):  # peft would skip it and keep a freshly initialised layer
                raise AdapterError(
                    f"{file}: tensor {key!r} does not start with {_PREFIX!r}, so peft would not load it "
                    "(was the adapter saved with peft's save_pretrained?)"
                )
            module_name = key.split(marker)[0].removeprefix(_PREFIX)
            pairs.setdefault(module_name, set()).add(part)
            if len(shape) != 2:
                raise AdapterError(
                    f"{file}: tensor {key!r} has shape {shape}; a LoRA matrix has 2 dimensions"
                )
            try:
                module = base_model.get_submodule(module_name)
            except AttributeError:
                raise AdapterError(
                    f"{file}: tensor {key!r} is for module {module_name!r}, which this base model lacks "
                    "(an adapter trained on another base?)"
                ) from None
            got_rank = shape[0] if part == "lora_A" else shape[1]
            if rank is not None and got_rank != rank:
                raise AdapterError(
                    f"{file}: tensor {key!r} has rank {got_rank} (shape {shape}), but "
                    f"{path / CONFIG_FILE} says r={rank}"
                )
            layer = getattr(module, "base_layer", module)
            expected = getattr(layer, "in_features" if part == "lora_A" else "out_features", None)
            got = shape[1] if part == "lora_A" else shape[0]
            if expected is not None and got != expected:
                raise AdapterError(
                    f"{file}: tensor {key!r} has shape {shape}, but module {module_name!r} of this base "
                    f"model has {'in' if part == 'lora_A' else 'out'}_features={expected} (an adapter "
                    "trained on another base?)"
                )
    if not pairs:
        raise AdapterError(
            f"{file}: holds no LoRA weights (no '.lora_A.' / '.lora_B.' tensors); loading it would leave "
            "freshly initialised adapter layers"
        )
    for module_name, parts in sorted(pairs.items()):
        if parts != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - parts).pop()
            raise AdapterError(f"{file}: module {module_name!r} has no {missing} tensor")
