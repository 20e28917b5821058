"""Loading a base model and its tokenizer from a reference.

Every place that loads a base model goes through :func:`load_base_model`, so the rules live here:
safetensors only, ``trust_remote_code`` off unless asked, left padding and ``pad = eos`` where unset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_fslm.models.gguf_cache import load_gguf
from langchain_fslm.models.refs import BaseModelRef, ModelNotFoundError, error_sentence, resolve, torch_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Set left padding (for batched generation) and ``pad = eos`` where no pad token is set."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
        model, tokenizer = load_gguf(resolved, ref)
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
                resolved.path, dtype=torch_dtype(ref.dtype), use_safetensors=True, **kwargs
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
                f"Could not load base model {ref.source!r}: {error_sentence(err)} Only safetensors weights "
                "are loaded; hub ids need network access or a filled Hugging Face cache."
            ) from err
    model.eval()
    return model, prepare_tokenizer(tokenizer)
