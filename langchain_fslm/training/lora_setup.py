"""LoRA and Trainer setup: which modules get adapters, how an example is encoded, how rows are batched.

Everything the Trainer is handed apart from the loop itself (:mod:`langchain_fslm.training.finetune`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from langchain_fslm.errors import InvalidInputError

logger = logging.getLogger(__name__)

LORA_TARGETS: dict[str, list[str]] = {
    "gpt_neox": ["query_key_value"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn"],
    "phi3": ["qkv_proj"],
}
"""LoRA target modules per ``config.model_type`` (override with ``TrainConfig.target_modules``)."""


def use_bf16(setting: bool | None = None) -> bool:
    """Whether to train under bf16 autocast: the setting, or where the hardware runs bf16 fast."""
    if setting is not None:
        return setting
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def lora_targets(model: Any, override: Sequence[str] | None = None) -> list[str]:
    """The LoRA target modules for a model: ``override``, else by architecture.

    Raises:
        InvalidInputError: For an architecture without a default (pass ``target_modules``).
    """
    if override:
        return list(override)
    model_type = getattr(model.config, "model_type", "")
    if model_type not in LORA_TARGETS:
        raise InvalidInputError(
            f"no default LoRA targets for model type {model_type!r}; pass target_modules "
            f"(known: {sorted(LORA_TARGETS)})"
        )
    return LORA_TARGETS[model_type]


def encode_example(
    engine: Any, prompt: str, target: str, max_length: int, system: str | None = None
) -> dict[str, list[int]]:
    """Token ids and labels of one example; labels are -100 on the prompt (loss on the target only)."""
    tok = engine.tokenizer
    prompt_ids = tok(engine.render(prompt, system), add_special_tokens=False)["input_ids"]
    target_ids = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = (prompt_ids + target_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + target_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


class PaddingCollator:
    """Pads rows to the longest of the batch: pad id in the ids, -100 in the labels, 0 in the mask."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        """The batch as tensors (``input_ids``, ``labels``, ``attention_mask``)."""
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids, labels, mask = [], [], []
        for r in rows:
            pad = width - len(r["input_ids"])
            ids.append(r["input_ids"] + [self.pad_id] * pad)
            labels.append(r["labels"] + [-100] * pad)
            mask.append([1] * len(r["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


def honours_packed_rows(model: Any) -> bool:
    """Whether the model's attention keeps records apart when a batch is flattened into one row.

    transformers' mask builder (``masking_utils.create_causal_mask``) turns position ids that restart
    at 0 into a block-diagonal causal mask; architectures whose modelling code builds masks another
    way would let one record attend to the previous one.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(base).__module__)
    return module is not None and hasattr(module, "create_causal_mask")


def make_collator(model: Any, pad_id: int, padding_free: bool) -> Any:
    """The training collator: padding-free (one flattened row per batch) where sound, else padding.

    Padding-free batches give the same loss as padded ones (no record sees another; tested) without
    computing padding tokens. The model must run without a KV cache (``use_cache=False``), which is
    what training does anyway.
    """
    from transformers import DataCollatorWithFlattening

    if padding_free and honours_packed_rows(model):
        model.config.use_cache = False
        return DataCollatorWithFlattening()
    if padding_free:
        logger.warning(
            "padding_free: %s builds its attention mask without transformers' packed-row support; "
            "training with padded batches instead",
            type(model).__name__,
        )
    return PaddingCollator(pad_id)


__all__ = [
    "LORA_TARGETS",
    "PaddingCollator",
    "encode_example",
    "honours_packed_rows",
    "lora_targets",
    "make_collator",
    "use_bf16",
]
