"""Choosing the in-process engine: engine="torch" | "llamacpp" | "auto", $FSLM_ENGINE, the manifest, --engine.

The factories are replaced by ones returning the tiny torch engine, so no GGUF model is loaded here.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from langchain_fslm import FSLMChain, GenerationConfig, StageSpec
from langchain_fslm.cli import app
from langchain_fslm.engine import registry
from langchain_fslm.engine.registry import default_engine, local_engine_kind
from langchain_fslm.manifest import StackManifest
from langchain_fslm.models import BaseModelRef

SPEC = StageSpec(name="answer", prompt="Answer: {input}", generation=GenerationConfig(max_new_tokens=3))


@pytest.fixture()
def made(tiny_engine, monkeypatch):
    made: list[str] = []
    for kind in ("torch", "llamacpp"):

        def factory(ref, settings, kind=kind):
            made.append(kind)
            return tiny_engine

        monkeypatch.setitem(registry._FACTORIES, kind, factory)
    monkeypatch.delenv("FSLM_ENGINE", raising=False)
    return made


def test_auto_is_llamacpp_on_a_gguf_base_only(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("FSLM_ENGINE", raising=False)
    gguf = BaseModelRef()  # the embedded default is a GGUF file
    folder = BaseModelRef(source=str(tiny_model_dir))
    try:
        assert local_engine_kind("auto", gguf) == "llamacpp"
    except Exception:  # noqa: BLE001 - no embedded model on this machine: resolved as torch
        pytest.skip("embedded GGUF not found")
    assert local_engine_kind("auto", folder) == "torch"
    assert local_engine_kind("torch", gguf) == "torch"
    assert local_engine_kind(None, gguf) == "llamacpp"  # the default: llama.cpp on a GGUF base
    assert local_engine_kind(None, folder) == "torch"
    assert local_engine_kind("auto", gguf, needs_torch=True) == "torch"  # compiled decoding, scoring
    with pytest.raises(ValueError, match="engine='llamacpp' cannot do this"):
        local_engine_kind("llamacpp", gguf, needs_torch=True)
    with pytest.raises(ValueError, match="engine='vllm'"):
        local_engine_kind("vllm", gguf)


def test_fslm_engine_sets_the_default(monkeypatch):
    monkeypatch.setenv("FSLM_ENGINE", "auto")
    assert default_engine() == "auto"
    monkeypatch.setenv("FSLM_ENGINE", "nope")
    with pytest.raises(ValueError, match=r"\$FSLM_ENGINE='nope'"):
        default_engine()


def test_from_specs_creates_the_chosen_engine(made, tiny_model_dir):
    base = str(tiny_model_dir)
    FSLMChain.from_specs([SPEC], base_model=base, engine="llamacpp")
    FSLMChain.from_specs([SPEC], base_model=base, engine="torch")
    FSLMChain.from_specs([SPEC], base_model=base)  # default: torch
    assert made == ["llamacpp", "torch", "torch"]
    with pytest.raises(ValueError, match="engine='gpu'"):
        FSLMChain.from_specs([SPEC], base_model=base, engine="gpu")  # type: ignore[arg-type]


def test_compile_decode_picks_torch_under_auto(made, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("FSLM_ENGINE", "llamacpp")  # a default, not the caller's choice: torch wins
    FSLMChain.from_specs([SPEC], base_model=str(tiny_model_dir), compile_decode=True)
    assert made == ["torch"]


def test_manifest_engine_field_is_read_and_written_only_when_set(made, tiny_model_dir, tmp_path):
    manifest = StackManifest(stages=[SPEC], base_model=BaseModelRef(source=str(tiny_model_dir)))
    folder = tmp_path / "stack"
    FSLMChain.from_specs(manifest.stages, base_model=manifest.base_model).save_pretrained(folder)
    data = json.loads((folder / "fslm_stack.json").read_text())
    assert "engine" not in data  # a torch stack's manifest is unchanged
    data["engine"] = "llamacpp"
    (folder / "fslm_stack.json").write_text(json.dumps(data))
    FSLMChain.from_pretrained(folder)
    FSLMChain.from_pretrained(folder, engine="torch")  # the caller's choice wins
    assert made == ["torch", "llamacpp", "torch"]
    data["engine"] = "cuda"
    (folder / "fslm_stack.json").write_text(json.dumps(data))
    from langchain_fslm.errors import ManifestError

    with pytest.raises(ManifestError, match="engine"):
        FSLMChain.from_pretrained(folder)


def test_cli_refuses_an_unknown_engine():
    result = CliRunner().invoke(app, ["run", "hi", "--engine", "cuda"])
    assert result.exit_code != 0 and "--engine must be one of auto, llamacpp, torch" in result.output
