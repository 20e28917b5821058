"""Which ``adapter_config.json`` settings an in-process adapter may use: one base model is shared.

Every adapter of a :class:`~langchain_fslm.engine.local.LocalEngine` sits on the same base weights, and
calls batch rows of different adapters with peft's ``adapter_names=``. A setting that makes peft write
to the base model (PiSSA / OLoRA / CorDA / LoRA-GA / LoftQ initialisations rerun on load, saved base
biases, full module copies, replicated layers, token-embedding deltas), or that the batching and the
compiled decoding cannot serve (DoRA and the other LoRA variants), is refused here, before peft reads
the folder. The list is an allowlist: a field this module does not know passes only while it is off
(``null``, ``false``, empty), so a newer peft's setting is refused rather than guessed at.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from langchain_fslm.errors import AdapterError

MAX_SCALING = 1024.0
"""Largest LoRA scaling (``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA) accepted: beyond it the
adapter's update swamps the base layer (usual values are 0.5-4)."""

IGNORED = frozenset(
    {
        "task_type",
        "peft_type",  # checked by the caller
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",  # adapters are always loaded for inference
        "megatron_core",
        "qalora_group_size",  # used only with use_qalora
        "runtime_config",
        "ensure_weight_tying",  # used only with modules_to_save / trainable tokens
        "eva_config",  # the settings of initialisations that are run only when asked for by
        "corda_config",  # init_lora_weights (checked below), never when saved weights are loaded
        "lora_ga_config",
        "loftq_config",
    }
)
"""Fields that change nothing when saved weights are loaded for inference."""

SAFE_INITS = (True, False, "gaussian", "eva", "orthogonal")
"""``init_lora_weights`` values that only initialise the LoRA matrices (the saved ones replace them)."""

_REWRITES_BASE = (
    "rewrites the base model's weights when loaded (peft runs that initialisation again) and the "
    "adapter only fits that rewritten base; convert it to a plain LoRA first (peft's "
    "save_pretrained(..., path_initial_model_for_weight_conversion=...))"
)
_VARIANT = "is a LoRA variant that the engine's mixed-adapter batching and compiled decoding cannot serve"

MUST_BE_OFF: dict[str, str] = {
    "bias": (
        "the adapter trained the base model's own biases, which the shared base model cannot take "
        "(peft drops them or writes them over the base)"
    ),
    "modules_to_save": (
        "keeps full copies of base modules, which peft swaps in for the shared base model's own "
        "(and neither the vLLM nor the llama.cpp export can serve)"
    ),
    "trainable_token_indices": "changes the base model's token embeddings",
    "layer_replication": "duplicates the base model's layers in place",
    "use_dora": (
        "DoRA: peft's mixed-adapter batching (adapter_names=) cannot serve it, and its magnitudes are "
        "tied to the base weights"
    ),
    "lora_bias": "adds a bias that merging (the compiled decoding) would write into the base model's bias",
    "megatron_config": "targets Megatron parallel layers, which this engine does not run",
    "target_parameters": "puts LoRA on raw parameters (MoE experts), " + _VARIANT,
    "use_qalora": "QA-LoRA " + _VARIANT,
    "velora_config": "VeLoRA " + _VARIANT,
    "alora_invocation_tokens": "activated LoRA (aLoRA) " + _VARIANT,
    "monteclora_config": "MonteCLoRA " + _VARIANT,
    "use_bdlora": "block-diagonal LoRA " + _VARIANT,
    "arrow_config": "Arrow routing " + _VARIANT,
    "kasa_config": "KaSA " + _VARIANT,
}
"""Fields that must be off, with the reason a set one is refused."""

_OFF_VALUES: dict[str, Any] = {"bias": "none"}


def _is_off(value: Any) -> bool:
    return value is None or value is False or value in ("", [], {})


def _fail(file: Path, field: str, value: Any, reason: str) -> AdapterError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return AdapterError(f"{file}: field {field!r} is {shown}; refused: {reason}")


def _check_number(file: Path, field: str, value: Any, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(file, field, value, f"it must be a finite number ({what})")
    if not low < value <= high:
        raise _fail(file, field, value, what)
    return float(value)


def _check_scaling(file: Path, field: str, alpha: Any, r: int, rslora: bool) -> None:
    _check_number(file, field, alpha, 0.0, math.inf, "lora_alpha must be above 0")
    scaling = alpha / math.sqrt(r) if rslora else alpha / r
    if scaling > MAX_SCALING:
        raise _fail(
            file,
            field,
            alpha,
            f"it scales the LoRA update by {scaling:g} (lora_alpha / {'sqrt(r)' if rslora else 'r'} with "
            f"r={r}), above {MAX_SCALING:g}: the update would swamp the base layer",
        )


def check_config_policy(file: Path, config: dict[str, Any]) -> None:
    """Refuse the settings of an ``adapter_config.json`` that would touch or outgrow the shared base.

    ``r``, ``peft_type`` and ``target_modules`` are checked by the caller first.

    Args:
        file: The config file, for messages.
        config: Its parsed content.

    Raises:
        AdapterError: Naming the file, the field and why it is refused.
    """
    for field, reason in MUST_BE_OFF.items():
        value = config.get(field)
        if not _is_off(value) and value != _OFF_VALUES.get(field, None):
            raise _fail(file, field, value, reason)
    init = config.get("init_lora_weights", True)
    if not any(init is safe or (isinstance(init, str) and init == safe) for safe in SAFE_INITS):
        if isinstance(init, str) and init.lower().startswith(("pissa", "olora", "corda", "lora_ga")):
            raise _fail(file, "init_lora_weights", init, _REWRITES_BASE)
        if init == "loftq":
            raise _fail(file, "init_lora_weights", init, "LoftQ replaces the base weights by quantised ones")
        raise _fail(file, "init_lora_weights", init, f"only {list(SAFE_INITS)} leave the base model alone")
    for field in ("fan_in_fan_out", "use_rslora", "inference_mode"):
        if not isinstance(config.get(field, False), bool):
            raise _fail(file, field, config[field], "it must be true or false")
    dropout = config.get("lora_dropout", 0.0)
    _check_number(file, "lora_dropout", dropout, -math.inf, math.inf, "a dropout must be in [0, 1)")
    if not 0.0 <= dropout < 1.0:
        raise _fail(file, "lora_dropout", dropout, "a dropout must be in [0, 1)")
    rslora = bool(config.get("use_rslora", False))
    _check_scaling(file, "lora_alpha", config.get("lora_alpha", 8), config["r"], rslora)
    ranks = config.get("rank_pattern") or {}
    alphas = config.get("alpha_pattern") or {}
    for field, pattern in (("rank_pattern", ranks), ("alpha_pattern", alphas)):
        if not isinstance(pattern, dict) or not all(isinstance(k, str) and k for k in pattern):
            raise _fail(file, field, pattern, "it must map module names to numbers")
    for key, rank in ranks.items():
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise _fail(file, f"rank_pattern.{key}", rank, "a rank must be a positive integer")
    for key, alpha in alphas.items():
        _check_scaling(file, f"alpha_pattern.{key}", alpha, ranks.get(key, config["r"]), rslora)
    layers = config.get("layers_to_transform")
    if layers is not None and not (
        (isinstance(layers, int) and not isinstance(layers, bool))
        or (isinstance(layers, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in layers))
    ):
        raise _fail(file, "layers_to_transform", layers, "it must be a layer index or a list of them")
    for field, value in config.items():
        if field in IGNORED or field in MUST_BE_OFF or _is_off(value):
            continue
        if field not in _CHECKED:
            raise _fail(
                file,
                field,
                value,
                "a setting this version does not know, so it cannot tell it leaves the "
                "shared base model alone",
            )


_CHECKED = frozenset(
    {
        "r",
        "target_modules",
        "exclude_modules",
        "lora_alpha",
        "lora_dropout",
        "fan_in_fan_out",
        "use_rslora",
        "init_lora_weights",
        "layers_to_transform",
        "layers_pattern",
        "rank_pattern",
        "alpha_pattern",
    }
)
