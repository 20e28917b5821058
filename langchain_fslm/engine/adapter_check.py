"""Check a LoRA adapter folder before peft touches the model: readable files, sane config, fitting tensors.

Errors name the file and the field (or tensor). Only ``adapter_model.safetensors`` is read: pickled
weights (``adapter_model.bin``) are never loaded. A failed check leaves the model untouched, which a
failure half-way through peft's loading would not; the checks cover what peft itself would accept and
get wrong: settings that write to the shared base model (:mod:`~langchain_fslm.engine.adapter_policy`),
tensors that are not LoRA matrices (peft loads them over the base weights), modules the config selects
but the file has no tensors for (peft initialises them afresh and only warns), NaN / infinite values,
integer dtypes, shapes and ranks that do not fit, and files that are links out of the adapter folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from langchain_fslm.engine.adapter_policy import check_config_policy
from langchain_fslm.errors import AdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"^base_model\.model\.(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$"
)
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
"""safetensors dtypes a LoRA matrix may have."""


def _inside(path: Path, name: str) -> Path:
    """``path / name``, refused when it is a link that leaves the (resolved) adapter folder."""
    file = path / name
    folder = path.resolve()
    target = file.resolve()
    if file.is_symlink() and not target.is_relative_to(folder):
        raise AdapterError(
            f"{file} is a link to {target}, outside the adapter folder {folder}; refused (an adapter's "
            "files must live in its folder)"
        )
    return file


def read_adapter_config(path: Path) -> dict[str, Any]:
    """Read and check ``adapter_config.json``.

    Raises:
        AdapterError: Naming the file and the field that is missing or wrong.
    """
    file = _inside(path, CONFIG_FILE)
    if not file.is_file():
        raise AdapterError(f"{file} is missing.")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{file}: not valid JSON ({err})") from None
    except RecursionError:
        raise AdapterError(f"{file}: nested too deeply to be an adapter config") from None
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
    check_config_policy(file, config)
    return config


def read_tensor_header(path: Path) -> dict[str, tuple[list[int], str]]:
    """Shape and dtype of every tensor in ``adapter_model.safetensors`` (header only, no data loaded).

    Raises:
        AdapterError: If the file is missing, truncated, not safetensors, or a link out of the folder.
    """
    from langchain_fslm.engine.safetensors_file import SafetensorsFormatError, read_header

    file = _inside(path, WEIGHTS_FILE)
    if not file.is_file():
        pickled = ""
        if (path / "adapter_model.bin").exists():
            pickled = " (adapter_model.bin is never loaded: unpickling can run code)"
        raise AdapterError(f"{file} is missing{pickled}.")
    try:  # the header alone, without torch: the llama.cpp engine checks adapters with it too
        header, _ = read_header(file)
    except (SafetensorsFormatError, OSError) as err:
        raise AdapterError(f"{file}: not a readable safetensors file ({err})") from None
    return {key: ([int(d) for d in e["shape"]], str(e["dtype"])) for key, e in header.items()}


def _features(module: Any) -> tuple[str, int, int] | None:
    """(kind, in, out) of the layer under a module, or None for a layer type LoRA does not take here."""
    import torch
    from transformers.pytorch_utils import Conv1D

    layer = getattr(module, "base_layer", module)
    if isinstance(layer, torch.nn.Linear):
        return "linear", layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):
        return "linear", layer.nx, layer.nf
    if isinstance(layer, torch.nn.Embedding):
        return "embedding", layer.num_embeddings, layer.embedding_dim
    return None


def targeted_modules(config: dict[str, Any], base_model: Any) -> set[str]:
    """The modules of ``base_model`` that peft gives LoRA layers under this config (peft's own matching)."""
    from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists

    tuners = [n for n, m in base_model.named_modules() if isinstance(m, BaseTunerLayer)]
    names = [n for n, _ in base_model.named_modules() if n and not any(n.startswith(f"{t}.") for t in tuners)]
    targets = config["target_modules"]
    if isinstance(targets, str) and targets.lower() == "all-linear":
        output = base_model.get_output_embeddings()
        skip = {n for n, m in base_model.named_modules() if m is output}
        return {
            n
            for n in names
            if n not in skip and (_features(base_model.get_submodule(n)) or "")[:1] == ("linear",)
        }
    matcher = SimpleNamespace(
        target_modules=targets,
        exclude_modules=config.get("exclude_modules"),
        modules_to_save=None,
        target_parameters=None,
        layers_to_transform=config.get("layers_to_transform"),
        layers_pattern=config.get("layers_pattern"),
    )
    return {n for n in names if check_target_module_exists(matcher, n)}


def _module_rank(config: dict[str, Any], module_name: str) -> int:
    for key, rank in (config.get("rank_pattern") or {}).items():  # peft's get_pattern_key
        if re.match(rf"(.*\.)?({key})$", module_name):
            return int(rank)
    return int(config["r"])


def _check_tensor(
    file: Path, key: str, shape: list[int], dtype: str, config: dict[str, Any], base_model: Any
) -> str:
    """Check one LoRA tensor against its module; returns the module name."""
    match = _LORA_KEY.match(key)
    if match is None:  # the caller passes LoRA keys only
        raise AdapterError(f"{file}: tensor {key!r} is not a LoRA matrix")
    module_name, part = match["module"], match["part"]
    if dtype not in FLOAT_DTYPES:
        raise AdapterError(f"{file}: tensor {key!r} has dtype {dtype}; LoRA matrices are floating point")
    if len(shape) != 2:
        raise AdapterError(f"{file}: tensor {key!r} has shape {shape}; a LoRA matrix has 2 dimensions")
    try:
        module = base_model.get_submodule(module_name)
    except AttributeError:
        raise AdapterError(
            f"{file}: tensor {key!r} is for module {module_name!r}, which this base model lacks "
            "(an adapter trained on another base?)"
        ) from None
    features = _features(module)
    is_a = part.startswith("lora_A") or part == "lora_embedding_A"
    wanted = "embedding" if part.startswith("lora_embedding") else "linear"
    if features is None or features[0] != wanted:
        kind = type(getattr(module, "base_layer", module)).__name__
        raise AdapterError(
            f"{file}: tensor {key!r} is a {part.split('.')[0]} matrix, but module {module_name!r} is a "
            f"{kind} (peft would not load it there)"
        )
    rank = _module_rank(config, module_name)
    got_rank = shape[0] if is_a else shape[1]
    if got_rank != rank:
        raise AdapterError(
            f"{file}: tensor {key!r} has rank {got_rank} (shape {shape}), but {file.parent / CONFIG_FILE} "
            f"says r={rank}" + (" for this module (rank_pattern)" if config.get("rank_pattern") else "")
        )
    expected = features[1] if is_a else features[2]
    got = shape[1] if is_a else shape[0]
    if got != expected:
        side = "in" if is_a else "out"
        raise AdapterError(
            f"{file}: tensor {key!r} has shape {shape}, but module {module_name!r} of this base "
            f"model has {side}_features={expected} (an adapter trained on another base?)"
        )
    return module_name


def _check_values(file: Path, keys: list[str]) -> None:
    """Every LoRA matrix holds finite values (peft would load NaN / inf and every answer would be junk)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        for key in keys:
            tensor = f.get_tensor(key)
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise AdapterError(f"{file}: tensor {key!r} holds {bad} NaN or infinite value(s)")


def check_adapter(path: Path, base_model: Any) -> None:
    """Check an adapter folder against the base model it is about to be loaded onto.

    Args:
        path: The adapter folder.
        base_model: The plain (unwrapped) base model.

    Raises:
        AdapterError: Naming the file and field or tensor that is wrong.
    """
    config = read_adapter_config(path)
    header = read_tensor_header(path)
    file = path / WEIGHTS_FILE
    if not header:
        raise AdapterError(f"{file}: holds no tensors")
    for key in header:
        if ".lora_" in key and not key.startswith(_PREFIX):  # peft would skip it, keeping a fresh layer
            raise AdapterError(
                f"{file}: tensor {key!r} does not start with {_PREFIX!r}, so peft would not load it "
                "(was the adapter saved with peft's save_pretrained?)"
            )
    lora = [key for key in header if _LORA_KEY.match(key)]
    if not lora:
        raise AdapterError(
            f"{file}: holds no LoRA weights (no '.lora_A.' / '.lora_B.' tensors); loading it would leave "
            "freshly initialised adapter layers"
        )
    for key in header:
        if key not in lora:
            raise AdapterError(
                f"{file}: tensor {key!r} is not a LoRA matrix (lora_A / lora_B weights); peft would load it "
                "over the shared base model's own weights or drop it"
            )
    pairs: dict[str, set[str]] = {}
    for key in lora:
        module_name = _check_tensor(file, key, *header[key], config, base_model)
        pairs.setdefault(module_name, set()).add("A" if key.endswith(("A.weight", "A")) else "B")
    for module_name, parts in sorted(pairs.items()):
        if parts != {"A", "B"}:
            missing = "lora_B" if "A" in parts else "lora_A"
            raise AdapterError(f"{file}: module {module_name!r} has no {missing} tensor")
    selected = targeted_modules(config, base_model)
    config_file = path / CONFIG_FILE
    for module_name in sorted(selected - set(pairs)):
        raise AdapterError(
            f"{file}: no LoRA tensors for module {module_name!r}, which target_modules in {config_file} "
            "selects (peft would give it freshly initialised weights and only warn)"
        )
    for module_name in sorted(set(pairs) - selected):
        raise AdapterError(
            f"{file}: tensors for module {module_name!r}, which target_modules in {config_file} does not "
            "select (peft would drop them)"
        )
    _check_values(file, lora)
