"""Test material for the llama.cpp engine: an F32 copy of a GGUF and random LoRA adapters for SmolLM2.

The torch engine runs the embedded Q4_1 GGUF de-quantised to fp32 (transformers uses gguf's own
``dequantize``); an F32 GGUF of the same de-quantised values lets llama.cpp run exactly those weights, so
only arithmetic differs between the two engines and a wrong adapter conversion shows plainly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from langchain_fslm.files import write_atomically
from langchain_fslm.models.refs import cache_dir

SMOLLM2_SHAPES = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576)}
"""(out, in) of SmolLM2-135M's attention projections; 30 layers."""
SMOLLM2_MLP_SHAPES = {"gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)}


def f32_copy(source: Path) -> Path:
    """An F32 GGUF with ``source``'s metadata and de-quantised tensors (cached by the source's name/size)."""
    import gguf
    import numpy as np

    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|v1".encode()).hexdigest()
    target = cache_dir() / "test-gguf-f32" / f"{key[:24]}.gguf"
    if target.is_file():
        return target
    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch=arch)
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
                continue
            sub = field.types[1] if len(field.types) > 1 else None
            writer.add_key_value(name, field.contents(), field.types[0], sub)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        for tensor in reader.tensors:
            shape = [int(d) for d in reversed(tensor.shape)]  # numpy order: outermost first
            data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            writer.add_tensor(tensor.name, data.reshape(shape))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return write_atomically(target, write)


def random_adapter(
    folder: Path,
    *,
    seed: int = 0,
    r: int = 8,
    alpha: int = 16,
    b_scale: float = 0.05,
    modules: dict[str, tuple[int, int]] | None = None,
    layers: range = range(30),
    config: dict[str, object] | None = None,
) -> Path:
    """A peft LoRA adapter for SmolLM2 with random A and B (peft starts B at zero: no effect at all)."""
    import torch
    from safetensors.torch import save_file

    modules = modules or SMOLLM2_SHAPES
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in layers:
        for module, (n_out, n_in) in modules.items():
            group = "mlp" if module in SMOLLM2_MLP_SHAPES else "self_attn"
            key = f"base_model.model.model.layers.{layer}.{group}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, n_in, generator=generator) / n_in**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(n_out, r, generator=generator) * b_scale
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    settings = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted(modules),
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        **(config or {}),
    }
    (folder / "adapter_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder
