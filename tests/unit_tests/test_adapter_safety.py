"""Adapters that would change the shared base model, or that load but are wrong (issue 26, classes 1-2).

Every case is refused before peft reads the folder, with an :class:`AdapterError` naming the file and
the field or tensor; the tiny base model's parameters stay bit-identical through the refused load and
the release of an adapter loaded beside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from langchain_fslm.errors import AdapterError

QKV = "base_model.model.gpt_neox.layers.{}.attention.query_key_value"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from langchain_fslm.engine.local import LocalEngine

    return LocalEngine.from_ref(str(tiny_model_dir), batch_window_ms=None)


@pytest.fixture(scope="module")
def snapshot(engine) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in engine.plain_model.state_dict().items()}


def _assert_base_untouched(engine, snapshot) -> None:
    import torch

    assert not engine.is_peft
    now = engine.plain_model.state_dict()
    assert set(now) == set(snapshot), set(now) ^ set(snapshot)
    changed = [k for k, v in snapshot.items() if not torch.equal(v, now[k])]
    assert not changed, f"base weights changed: {changed}"


def _variant(src: Path, dest: Path, config: dict[str, Any] | None = None, tensors=None) -> Path:
    """A copy of adapter ``src`` with config fields replaced and tensors edited (a callable on the dict)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    if config:
        cfg = json.loads((dest / "adapter_config.json").read_text())
        cfg.update(config)
        (dest / "adapter_config.json").write_text(json.dumps(cfg))
    if tensors is not None:
        weights = load_file(dest / "adapter_model.safetensors")
        edited = {k: v.contiguous() for k, v in tensors(weights).items()}
        save_file(edited, dest / "adapter_model.safetensors")
    return dest


def _refused(engine, snapshot, tiny_adapters, folder: Path, file: str, match: str) -> None:
    """Refused on the plain model and beside a loaded adapter; the base is bit-identical after."""
    pattern = rf"{re.escape(str(folder / file))}.*{match}"
    with pytest.raises(AdapterError, match=pattern):
        engine.load_adapter("bad", folder)
    assert not engine.is_peft
    engine.load_adapter("good", tiny_adapters["a"])
    try:
        with pytest.raises(AdapterError, match=pattern):
            engine.load_adapter("bad", folder)
        assert not engine.has_adapter("bad")
    finally:
        engine.release_adapter("good")
    _assert_base_untouched(engine, snapshot)


def _with(**extra):
    def edit(weights):
        import torch

        made = {k: (v() if callable(v) else v) for k, v in extra.items()}
        return {**weights, **{k: v for k, v in made.items() if isinstance(v, torch.Tensor)}}

    return edit


def _zeros(*shape):
    def make():
        import torch

        return torch.zeros(*shape)

    return make


# field value, extra tensors, what the message says (after the field name)
BASE_CHANGING = {
    "pissa": ({"init_lora_weights": "pissa"}, None, "'init_lora_weights'.*rewrites the base"),
    "pissa_niter": ({"init_lora_weights": "pissa_niter_4"}, None, "'init_lora_weights'.*rewrites the base"),
    "olora": ({"init_lora_weights": "olora"}, None, "'init_lora_weights'.*rewrites the base"),
    "olora_case": ({"init_lora_weights": "OLoRA"}, None, "'init_lora_weights'.*rewrites the base"),
    "corda": ({"init_lora_weights": "corda"}, None, "'init_lora_weights'.*rewrites the base"),
    "lora_ga": ({"init_lora_weights": "lora_ga"}, None, "'init_lora_weights'.*rewrites the base"),
    "loftq": ({"init_lora_weights": "loftq"}, None, "'init_lora_weights'.*LoftQ"),
    "mica": ({"init_lora_weights": "mica"}, None, "'init_lora_weights'.*leave the base"),
    "init_int": ({"init_lora_weights": 1}, None, "'init_lora_weights'"),
    "dora": ({"use_dora": True}, None, "'use_dora'.*DoRA"),
    "bias_all": (
        {"bias": "all"},
        {f"{QKV.format(0)}.bias": _zeros(96)},
        "'bias'.*biases",
    ),
    "bias_lora_only": ({"bias": "lora_only"}, None, "'bias'"),
    "modules_to_save": (
        {"modules_to_save": ["embed_out"]},
        {"base_model.model.embed_out.weight": _zeros(50304, 32)},
        "'modules_to_save'.*copies of base modules",
    ),
    "trainable_tokens": ({"trainable_token_indices": [1, 2]}, None, "'trainable_token_indices'"),
    "layer_replication": ({"layer_replication": [[0, 2], [1, 2]]}, None, "'layer_replication'"),
    "lora_bias": ({"lora_bias": True}, {f"{QKV.format(0)}.lora_B.bias": _zeros(96)}, "'lora_bias'"),
    "target_parameters": ({"target_parameters": ["weight"]}, None, "'target_parameters'"),
    "qalora": ({"use_qalora": True}, None, "'use_qalora'"),
    "alora": ({"alora_invocation_tokens": [5, 6]}, None, "'alora_invocation_tokens'.*variant"),
    "arrow": ({"arrow_config": {"top_k": 1}}, None, "'arrow_config'"),
    "megatron": ({"megatron_config": {"tensor_model_parallel_size": 2}}, None, "'megatron_config'"),
    "unknown_setting": ({"rewrite_base_on_load": True}, None, "'rewrite_base_on_load'.*does not know"),
}


@pytest.mark.parametrize("case", sorted(BASE_CHANGING))
def test_settings_that_touch_the_shared_base_are_refused_before_peft(
    engine, snapshot, tiny_adapters, tmp_path, case
):
    config, extra, match = BASE_CHANGING[case]
    folder = _variant(tiny_adapters["a"], tmp_path / case, config, _with(**extra) if extra else None)
    _refused(engine, snapshot, tiny_adapters, folder, "adapter_config.json", match)


@pytest.mark.parametrize(
    "key",
    [
        "base_model.model.gpt_neox.embed_in.weight",  # peft loads it over the base embeddings
        f"{QKV.format(0)}.base_layer.weight",
        f"{QKV.format(0)}.weight",
        f"{QKV.format(0)}.lora_magnitude_vector",  # a DoRA magnitude smuggled into a plain config
    ],
)
def test_a_tensor_that_is_not_a_lora_matrix_is_refused(engine, snapshot, tiny_adapters, tmp_path, key):
    import torch

    def add(weights):
        shape = (50304, 32) if "embed_in" in key else (96, 32) if key.endswith("weight") else (96,)
        return {**weights, key: torch.zeros(*shape)}

    folder = _variant(tiny_adapters["a"], tmp_path / "extra", tensors=add)
    _refused(engine, snapshot, tiny_adapters, folder, "adapter_model.safetensors", "not a LoRA matrix")


def _drop_layer(weights):
    return {k: v for k, v in weights.items() if ".layers.1." not in k}


def _set(key: str, value):
    def edit(weights):
        out = dict(weights)
        out[key] = value(out[key])
        return out

    return edit


def _nan(t):
    t = t.clone()
    t[0, 0] = float("nan")
    return t


def _inf(t):
    t = t.clone()
    t[-1, -1] = float("-inf")
    return t


WRONG_FILES = {
    "missing_layer": (None, _drop_layer, "no LoRA tensors for module 'gpt_neox.layers.1"),
    "not_selected": ({"layers_to_transform": [0]}, None, "layers.1.*does not select"),
    "nan": (None, _set(f"{QKV.format(0)}.lora_A.weight", _nan), "1 NaN or infinite"),
    "inf": (None, _set(f"{QKV.format(1)}.lora_B.weight", _inf), "1 NaN or infinite"),
    "int_dtype": (None, _set(f"{QKV.format(0)}.lora_A.weight", lambda t: t.to(int)), "dtype I64"),
    "int8_dtype": (
        None,
        _set(f"{QKV.format(1)}.lora_B.weight", lambda t: t.to(__import__("torch").int8)),
        "I8",
    ),
    "out_shape": (None, _set(f"{QKV.format(0)}.lora_B.weight", lambda t: t[:95]), "out_features=96"),
    "in_shape": (None, _set(f"{QKV.format(1)}.lora_A.weight", lambda t: t[:, :31]), "in_features=32"),
    "three_dims": (None, _set(f"{QKV.format(0)}.lora_A.weight", lambda t: t[None]), "2 dimensions"),
    "rank_a": (None, _set(f"{QKV.format(0)}.lora_A.weight", lambda t: t[:3]), "rank 3.*r=4"),
    "rank_pattern": ({"rank_pattern": {"query_key_value": 2}}, None, "rank 4.*r=2 for this module"),
}


@pytest.mark.parametrize("case", sorted(WRONG_FILES))
def test_weights_that_load_but_are_wrong_are_refused(engine, snapshot, tiny_adapters, tmp_path, case):
    config, edit, match = WRONG_FILES[case]
    folder = _variant(tiny_adapters["a"], tmp_path / case, config, edit)
    _refused(engine, snapshot, tiny_adapters, folder, "adapter_model.safetensors", match)


ABSURD_CONFIG = {
    "alpha_huge": ({"lora_alpha": 1e9}, "'lora_alpha'.*scales the LoRA update by 2.5e\\+08"),
    "alpha_negative": ({"lora_alpha": -16}, "'lora_alpha'.*above 0"),
    "alpha_zero": ({"lora_alpha": 0}, "'lora_alpha'.*above 0"),
    "alpha_text": ({"lora_alpha": "16"}, "'lora_alpha'.*finite number"),
    "alpha_bool": ({"lora_alpha": True}, "'lora_alpha'.*finite number"),
    "alpha_nan": ({"lora_alpha": float("nan")}, "'lora_alpha'.*finite number"),
    "alpha_pattern": ({"alpha_pattern": {"query_key_value": 1e6}}, "'alpha_pattern.query_key_value'"),
    "rslora_huge": ({"use_rslora": True, "lora_alpha": 4096}, "'lora_alpha'.*sqrt\\(r\\)"),
    "dropout": ({"lora_dropout": 1.5}, "'lora_dropout'"),
    "rank_pattern_zero": ({"rank_pattern": {"query_key_value": 0}}, "'rank_pattern.query_key_value'"),
    "fan_in_fan_out": ({"fan_in_fan_out": "yes"}, "'fan_in_fan_out'"),
}


@pytest.mark.parametrize("case", sorted(ABSURD_CONFIG))
def test_absurd_scaling_and_settings_are_refused(engine, snapshot, tiny_adapters, tmp_path, case):
    config, match = ABSURD_CONFIG[case]
    folder = _variant(tiny_adapters["a"], tmp_path / case, config)
    _refused(engine, snapshot, tiny_adapters, folder, "adapter_config.json", match)


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json"])
def test_a_file_linked_out_of_the_adapter_folder_is_refused(engine, snapshot, tiny_adapters, tmp_path, name):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(tiny_adapters["b"] / name, outside / name)
    folder = _variant(tiny_adapters["a"], tmp_path / "stack" / "adapters" / "a")
    (folder / name).unlink()
    os.symlink(outside / name, folder / name)
    _refused(engine, snapshot, tiny_adapters, folder, name, "is a link to .*outside the adapter folder")


def test_adapters_that_keep_the_base_alone_still_load(
    engine, snapshot, tiny_adapters, tmp_path, tiny_model_dir
):
    """Controls: the checks refuse the cases above, not these."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    inside = _variant(tiny_adapters["a"], tmp_path / "inside")
    (inside / "adapter_model.safetensors").rename(inside / "weights.safetensors")
    os.symlink("weights.safetensors", inside / "adapter_model.safetensors")  # a link within the folder
    layer0 = _variant(
        tiny_adapters["b"],
        tmp_path / "layer0",
        {"layers_to_transform": [0], "init_lora_weights": "gaussian"},
        lambda w: {k: v for k, v in w.items() if ".layers.0." in k},
    )
    ranked = _variant(
        tiny_adapters["c"],
        tmp_path / "ranked",
        {"rank_pattern": {"layers.1.attention.query_key_value": 2}, "use_rslora": True, "bias": "none"},
        lambda w: {
            k: (v[:2] if "1.attention" in k and "lora_A" in k else v[:, :2] if "1.attention" in k else v)
            for k, v in w.items()
        },
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    embed = LoraConfig(
        r=2, target_modules=["embed_in", "dense"], init_lora_weights="orthogonal", task_type="CAUSAL_LM"
    )
    get_peft_model(base, embed).save_pretrained(tmp_path / "embed")
    folders = [inside, layer0, ranked, tmp_path / "embed"]
    for i, folder in enumerate(folders):
        engine.load_adapter(f"ok{i}", folder)
    for i in range(len(folders)):
        engine.release_adapter(f"ok{i}")
    _assert_base_untouched(engine, snapshot)
