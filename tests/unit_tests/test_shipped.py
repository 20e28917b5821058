"""The shipped trained default stack: shipping a trained folder, the card's hashes, and default()'s choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from langchain_fslm import FSLMChain
from langchain_fslm.errors import ManifestError
from langchain_fslm.manifest import StackManifest, StageSpec, dump_manifest
from langchain_fslm.models import BaseModelRef
from langchain_fslm.persistence import stage_adapter_path
from langchain_fslm.shipped import CARD_FILE, SHIPPED_DIR, ship_stack, shipped_stack_dir, verify_card

CARD = {
    "data": "alpaca_5000.json",
    "records": 2,
    "teacher": "fake",
    "mode": "hindsight",
    "derive": ["key_points"],
    "steps": 1,
    "seed": 0,
    "commit": "abc",
}


def trained_stack(folder: Path, model_dir: Path, adapters: dict[str, Path]) -> Path:
    """A stack folder as `fslm train` writes it: a manifest and one peft adapter per stage."""
    names = ("plan", "answer")
    folder.mkdir()
    for name, src in zip(names, adapters.values(), strict=False):
        shutil.copytree(src, folder / stage_adapter_path(name))
    manifest = StackManifest(
        base_model=BaseModelRef(source=str(model_dir)),
        stages=[
            StageSpec(name=n, prompt="{input}", adapter=stage_adapter_path(n), on_parse_error="pass_raw")
            for n in names
        ],
    )
    dump_manifest(manifest, folder)
    return folder


@pytest.fixture
def shipped(tmp_path, tiny_model_dir, tiny_adapters, monkeypatch) -> Path:
    src = trained_stack(tmp_path / "trained", tiny_model_dir, tiny_adapters)
    dest = ship_stack(src, CARD, tmp_path / "pkg" / "default")
    monkeypatch.setattr("langchain_fslm.shipped.SHIPPED_DIR", dest)
    return dest


def test_ship_writes_float16_adapters_and_a_card_with_their_hashes(shipped):
    from safetensors import safe_open

    card = json.loads((shipped / CARD_FILE).read_text())
    assert {k: card[k] for k in CARD} == CARD
    assert "CC BY-NC 4.0" in card["license"] and "CC BY-NC 4.0" in (shipped / "README.md").read_text()
    files = ("adapter_config.json", "adapter_model.safetensors")
    assert sorted(card["sha256"]) == [f"adapters/{s}/{f}" for s in ("answer", "plan") for f in files]
    with safe_open(str(shipped / "adapters/plan/adapter_model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    assert verify_card(shipped) == card


def test_a_changed_or_extra_adapter_file_is_refused_naming_it(shipped):
    weights = shipped / "adapters/plan/adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="plan/adapter_model.safetensors: SHA-256 differs"):
        shipped_stack_dir()
    weights.unlink()
    with pytest.raises(ManifestError, match="on the card but missing"):
        shipped_stack_dir()


def test_an_adapter_file_not_on_the_card_is_refused(shipped):
    (shipped / "adapters/plan/extra.bin").write_bytes(b"x")
    with pytest.raises(ManifestError, match="extra.bin: an adapter file the card does not list"):
        verify_card(shipped)


def test_ship_refuses_a_card_without_provenance(tmp_path, tiny_model_dir, tiny_adapters):
    src = trained_stack(tmp_path / "trained", tiny_model_dir, tiny_adapters)
    card = {k: v for k, v in CARD.items() if k != "teacher"}
    with pytest.raises(ManifestError, match=r"missing field\(s\) \['teacher'\]"):
        ship_stack(src, card, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_default_loads_the_shipped_adapters_and_trained_false_does_not(shipped, tiny_model_dir):
    trained = FSLMChain.default(max_new_tokens=3)
    assert [s.name for s in trained.stages] == ["plan", "answer"]
    assert all(s.adapter for s in trained.stages)
    assert trained.invoke("Hi") is not None  # the fp16 adapters load and generate on the tiny base
    zero = FSLMChain.default(str(tiny_model_dir), trained=False, max_new_tokens=3)
    assert [s.name for s in zero.stages] == ["intent", "answer"]
    assert not any(s.adapter for s in zero.stages)


def test_default_with_another_base_is_zero_shot_unless_trained_is_asked(shipped, tiny_model_dir):
    other = FSLMChain.default(str(tiny_model_dir), max_new_tokens=3)
    assert not any(s.adapter for s in other.stages)
    forced = FSLMChain.default(str(tiny_model_dir), trained=True, max_new_tokens=3)
    assert all(s.adapter for s in forced.stages)


def test_trained_true_without_a_shipped_stack_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr("langchain_fslm.shipped.SHIPPED_DIR", tmp_path / "none")
    with pytest.raises(ManifestError, match="no trained default stack is shipped"):
        FSLMChain.default(trained=True)


def test_the_package_stack_matches_its_card():
    card = verify_card(SHIPPED_DIR)  # shipped since 2026-12-07: its absence is a broken package
    assert card["mode"] in ("plain", "hindsight") and card["records"] > 0
    assert "CC BY-NC 4.0" in card["license"] and set(card["sha256"]) == {
        f"adapters/{s}/{f}"
        for s in ("intent", "answer")
        for f in ("adapter_config.json", "adapter_model.safetensors")
    }
