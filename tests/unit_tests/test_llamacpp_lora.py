"""The peft -> GGUF LoRA conversion for llama.cpp: layout, permutation, cache, and what it refuses.

No model is loaded: the base is described by a :class:`BaseGGUF` with SmolLM2's shapes (two layers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from langchain_fslm.engine.llamacpp_lora import (
    BaseGGUF,
    _permute_rows,
    gguf_lora,
    plan_conversion,
    read_base_gguf,
)
from langchain_fslm.errors import AdapterError
from langchain_fslm.models.refs import ModelNotFoundError
from tests.llamacpp_helpers import SMOLLM2_MLP_SHAPES, SMOLLM2_SHAPES, random_adapter

GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
GGUF_NAMES |= {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def fake_base(arch: str = "llama", layers: int = 2) -> BaseGGUF:
    shapes = {}
    for layer in range(layers):
        for module, (n_out, n_in) in (SMOLLM2_SHAPES | SMOLLM2_MLP_SHAPES).items():
            shapes[f"blk.{layer}.{GGUF_NAMES[module]}.weight"] = (n_in, n_out)  # GGUF ne: inner first
    return BaseGGUF(
        path=Path("base.gguf"),
        arch=arch,
        n_head=9,
        n_head_kv=3,
        n_layers=30,
        context_length=8192,
        shapes=shapes,
    )


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path / "cache"))


def adapter(tmp_path: Path, **kwargs) -> Path:
    return random_adapter(tmp_path / "adapter", layers=range(2), **kwargs)


def test_written_file_has_the_layout_llama_cpp_loads(tmp_path):
    import gguf
    from safetensors.numpy import load_file

    folder = adapter(tmp_path, r=8, alpha=16)
    written = gguf_lora(folder, fake_base())
    reader = gguf.GGUFReader(str(written))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert meta == {
        "general.architecture": "llama",
        "general.type": "adapter",
        "adapter.type": "lora",
        "adapter.lora.alpha": 16.0,
    }
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * 4 * 2
    weights = load_file(str(folder / "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers.1.self_attn"
    for module, heads in (("q_proj", 9), ("k_proj", 3), ("v_proj", None), ("o_proj", None)):
        name = f"blk.1.{GGUF_NAMES[module]}.weight"
        a, b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
        n_out, n_in = SMOLLM2_SHAPES[module]
        assert list(a.shape) == [n_in, 8] and list(b.shape) == [8, n_out]  # ne = [in, r] and [r, out]
        assert a.tensor_type.name == "F16" and b.tensor_type.name == "F16"
        peft_a = weights[f"{prefix}.{module}.lora_A.weight"].astype(np.float16)
        np.testing.assert_array_equal(np.asarray(a.data), peft_a)
        peft_b = weights[f"{prefix}.{module}.lora_B.weight"].astype(np.float16)
        expected_b = peft_b if heads is None else _permute_rows(peft_b, heads)
        np.testing.assert_array_equal(np.asarray(b.data), expected_b)
        if heads is not None:
            assert not np.array_equal(np.asarray(b.data), peft_b)  # the permutation really moves rows


def test_permutation_interleaves_the_two_halves_of_each_head():
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)  # 2 heads of 4 rows
    assert _permute_rows(rows, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_conversion_is_cached_by_the_adapter_files(tmp_path):
    folder = adapter(tmp_path)
    first = gguf_lora(folder, fake_base())
    assert gguf_lora(folder, fake_base()) == first
    assert gguf_lora(folder, fake_base(), permute_qk=False) != first
    random_adapter(folder, layers=range(2), seed=7)  # saved again over the same folder
    again = gguf_lora(folder, fake_base())
    assert again != first and again.is_file()
    assert not list(again.parent.glob(".*.tmp"))  # atomic: no temporary file left


def test_mlp_projections_are_mapped(tmp_path):
    folder = adapter(tmp_path, modules=SMOLLM2_MLP_SHAPES)
    plan = plan_conversion(folder, fake_base())
    assert sorted({name.split(".")[2] for name, _ in plan.tensors.values()}) == [
        "ffn_down",
        "ffn_gate",
        "ffn_up",
    ]
    assert all(heads is None for _, heads in plan.tensors.values())


def test_rslora_alpha_is_folded_into_llama_cpp_scale(tmp_path):
    folder = adapter(tmp_path, r=4, alpha=8, config={"use_rslora": True})
    assert plan_conversion(folder, fake_base()).alpha == pytest.approx(8 * 2)  # alpha/sqrt(r) == a'/r


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"bias": "lora_only"}, "bias"),
        ({"lora_bias": True}, "lora_bias"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"alpha_pattern": {"q_proj": 4}}, "alpha_pattern"),
        ({"peft_type": "IA3"}, "peft_type"),
    ],
)
def test_configs_llama_cpp_cannot_apply_are_refused(tmp_path, config, reason):
    folder = adapter(tmp_path, config=config)
    with pytest.raises(AdapterError, match=reason) as caught:
        plan_conversion(folder, fake_base())
    assert "adapter_config.json" in str(caught.value)


def test_unmapped_architecture_is_refused(tmp_path):
    with pytest.raises(AdapterError, match="architecture 'qwen2'.*engine='torch'"):
        plan_conversion(adapter(tmp_path), fake_base(arch="qwen2"))


def test_other_modules_are_refused_naming_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = adapter(tmp_path)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    weights["base_model.model.model.embed_tokens.lora_A.weight"] = weights[next(iter(weights))].clone()
    save_file(weights, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="embed_tokens.*cannot adapt"):
        plan_conversion(folder, fake_base())


def test_dora_magnitude_tensor_is_refused(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    folder = adapter(tmp_path)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    weights["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = torch.ones(576)
    save_file(weights, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="DoRA magnitude"):
        plan_conversion(folder, fake_base())


def test_adapter_for_another_base_is_refused(tmp_path):
    wrong = adapter(tmp_path, modules={"q_proj": (512, 512)})
    with pytest.raises(AdapterError, match="another base"):
        plan_conversion(wrong, fake_base())
    deeper = random_adapter(tmp_path / "deep", layers=range(3))  # the base has 2 layers
    with pytest.raises(AdapterError, match=r"blk\.2\.attn_\w+\.weight, which base.gguf lacks"):
        plan_conversion(deeper, fake_base())


def test_missing_half_of_a_pair_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = adapter(tmp_path)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    del weights["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
    save_file(weights, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=r"blk\.0\.attn_v has no lora_B"):
        plan_conversion(folder, fake_base())


def test_missing_files_are_named(tmp_path):
    folder = adapter(tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="adapter_model.safetensors is missing"):
        plan_conversion(folder, fake_base())
    (folder / "adapter_config.json").write_text(json.dumps([1]))
    with pytest.raises(AdapterError, match="expected a JSON object"):
        plan_conversion(folder, fake_base())


def test_broken_base_files_are_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        read_base_gguf(tmp_path / "nothing.gguf")
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelNotFoundError, match="not a readable GGUF"):
        read_base_gguf(corrupt)


def test_safetensors_reader_matches_safetensors_for_every_float_dtype_without_torch(tmp_path):
    """The llama.cpp path reads adapters with numpy alone (bf16 included, which numpy lacks)."""
    import subprocess
    import sys

    import torch
    from safetensors.torch import save_file

    from langchain_fslm.engine.safetensors_file import SafetensorsFormatError, read_float32, read_header

    tensors = {
        name: torch.randn(3, 5).to(dtype) for name, dtype in (("a", torch.bfloat16), ("b", torch.float16))
    }
    tensors["c"] = torch.randn(2, 4)
    file = tmp_path / "adapter_model.safetensors"
    save_file(tensors, str(file))
    header, _ = read_header(file)
    assert {k: e["dtype"] for k, e in header.items()} == {"a": "BF16", "b": "F16", "c": "F32"}
    arrays = read_float32(file, ["a", "b", "c"])
    for key, tensor in tensors.items():
        assert arrays[key].tolist() == tensor.float().tolist()  # exact: widening only
    with pytest.raises(SafetensorsFormatError, match="no tensor"):
        read_float32(file, ["d"])
    code = (  # a fresh process: reading the header and the tensors imports no torch
        "import sys; from pathlib import Path; "
        "from langchain_fslm.engine.adapter_check import read_tensor_header; "
        "from langchain_fslm.engine.safetensors_file import read_float32; "
        f"folder = Path({str(tmp_path)!r}); read_tensor_header(folder); "
        "read_float32(folder / 'adapter_model.safetensors', ['a']); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    file.write_bytes(file.read_bytes()[:20])
    with pytest.raises(SafetensorsFormatError):
        read_header(file)
