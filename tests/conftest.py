"""Shared fixtures: a tiny random GPT-NeoX (Pythia architecture) with the real Pythia tokenizer,
LoRA adapters for it, and (for integration tests) the real SmolLM2 engine."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from langchain_fslm.models import PYTHIA_TOKENIZER_DIR, shared_dir  # noqa: E402

TINY_LORA_TARGETS = ["query_key_value"]


def pythia_tokenizer_dir() -> Path:
    path = shared_dir() / PYTHIA_TOKENIZER_DIR
    if not path.is_dir():
        pytest.skip(f"Pythia tokenizer not found at {path} (set FSLM_SHARED_DIR)")
    return path


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random GPTNeoXForCausalLM plus the real Pythia tokenizer to ``folder``."""
    import torch
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
        eos_token_id=0,
        bos_token_id=0,
    )
    model = GPTNeoXForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(pythia_tokenizer_dir()).save_pretrained(folder)
    return folder


def build_tiny_adapter(model_dir: Path, folder: Path, seed: int) -> Path:
    """Save a LoRA adapter with random (non-zero) weights, so it really changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=TINY_LORA_TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(20.0)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt-neox"))


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-adapters")
    return {
        name: build_tiny_adapter(tiny_model_dir, root / name, seed=i + 1)
        for i, name in enumerate(["a", "b", "c", "d"])
    }


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    from langchain_fslm.engine.local import get_engine
    from langchain_fslm.models import BaseModelRef

    return get_engine(BaseModelRef(source=str(tiny_model_dir)))


@pytest.fixture(scope="session")
def smollm2_engine():
    from langchain_fslm.engine.local import get_engine
    from langchain_fslm.models import BaseModelRef, ModelNotFoundError

    try:
        return get_engine(BaseModelRef())
    except ModelNotFoundError as err:
        pytest.skip(str(err))
