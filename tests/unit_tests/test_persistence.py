"""The stack folder writer and reader (langchain_fslm.persistence), without a model: adapters are files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from langchain_fslm.errors import ManifestError
from langchain_fslm.manifest import StackManifest, StageSpec
from langchain_fslm.models import BaseModelRef
from langchain_fslm.persistence import load_stack_manifest, save_stack, stage_adapter_path


def manifest(*names: str, description: str = "") -> StackManifest:
    return StackManifest(
        base_model=BaseModelRef(source="EleutherAI/pythia-160m"),
        stages=[StageSpec(name=n, prompt="{input}", adapter=stage_adapter_path(n)) for n in names]
        + [StageSpec(name="bare", prompt="{input}")],  # a stage on the bare base model: no folder
        description=description,
    )


def fake_adapter(tag: str):
    """A write_adapter that writes a recognisable adapter file (what peft would write is not the point)."""

    def write(spec: StageSpec, target: Path) -> None:
        target.mkdir()
        (target / "adapter_config.json").write_text(json.dumps({"stage": spec.name, "tag": tag}))

    return write


def tag_of(folder: Path, stage: str) -> str:
    return str(json.loads((folder / "adapters" / stage / "adapter_config.json").read_text())["tag"])


def test_round_trip_writes_adapters_and_reads_the_same_manifest(tmp_path):
    written = manifest("plan", "answer", description="round trip")
    folder = save_stack(tmp_path / "stack", written, fake_adapter("v1"))
    assert folder == (tmp_path / "stack").resolve()
    assert load_stack_manifest(folder) == written
    assert tag_of(folder, "plan") == tag_of(folder, "answer") == "v1"
    assert sorted(p.name for p in (folder / "adapters").iterdir()) == ["answer", "plan"]  # none for "bare"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack"]  # no temporary folder left


def test_extra_files_are_written_beside_the_manifest(tmp_path):
    extras = {"training_log.json": '{"losses": [1.0]}\n', "logs/raw.bin": b"\x00\x01"}
    folder = save_stack(tmp_path / "s", manifest("plan"), fake_adapter("v1"), extra_files=extras)
    assert (folder / "training_log.json").read_text(encoding="utf-8") == extras["training_log.json"]
    assert (folder / "logs" / "raw.bin").read_bytes() == b"\x00\x01"
    assert load_stack_manifest(folder).stages[0].name == "plan"


@pytest.mark.parametrize("name", ["../outside.json", "/abs.json", "fslm_stack.json", "adapters/plan/x.json"])
def test_an_extra_file_cannot_leave_the_folder_or_overwrite_the_stack(tmp_path, name):
    with pytest.raises(ValueError, match="extra file"):
        save_stack(tmp_path / "s", manifest("plan"), fake_adapter("v1"), extra_files={name: "x"})
    assert not (tmp_path / "s").exists() and not (tmp_path / "outside.json").exists()


def test_a_failure_mid_write_leaves_the_old_stack_intact(tmp_path):
    folder = save_stack(tmp_path / "stack", manifest("plan", "answer"), fake_adapter("old"))
    before = (folder / "fslm_stack.json").read_text()

    def crash_on_second(spec: StageSpec, target: Path) -> None:
        if spec.name == "answer":
            raise KeyboardInterrupt("killed mid-save")  # not an Exception: the cleanup must still run
        fake_adapter("new")(spec, target)

    with pytest.raises(KeyboardInterrupt):
        save_stack(folder, manifest("plan", "answer", description="new"), crash_on_second)
    assert (folder / "fslm_stack.json").read_text() == before
    assert tag_of(folder, "plan") == tag_of(folder, "answer") == "old"  # not half old, half new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack"]  # the temporary copy is gone


def test_an_adapter_that_was_not_written_is_an_error_before_the_old_stack_is_replaced(tmp_path):
    folder = save_stack(tmp_path / "stack", manifest("plan"), fake_adapter("old"))
    with pytest.raises(ManifestError, match=r"stage 'plan' was not written"):
        save_stack(folder, manifest("plan"), lambda spec, target: None)
    assert tag_of(folder, "plan") == "old"


def test_stages_sharing_an_adapter_folder_write_it_once(tmp_path):
    shared = StackManifest(
        stages=[StageSpec(name=n, prompt="{input}", adapter="adapters/shared") for n in ("a", "b")]
    )
    calls: list[str] = []

    def write(spec: StageSpec, target: Path) -> None:
        calls.append(spec.name)
        fake_adapter("v1")(spec, target)

    folder = save_stack(tmp_path / "s", shared, write)
    assert calls == ["a"] and load_stack_manifest(folder) == shared


def test_reading_a_folder_that_is_no_stack_names_the_file(tmp_path):
    with pytest.raises(ManifestError, match=r"fslm_stack.json: no stack manifest here"):
        load_stack_manifest(tmp_path)
    folder = save_stack(tmp_path / "s", manifest("plan"), fake_adapter("v1"))
    for child in (folder / "adapters" / "plan").iterdir():
        child.unlink()
    (folder / "adapters" / "plan").rmdir()
    with pytest.raises(ManifestError, match=r"fslm_stack.json: stages\.plan\.adapter"):
        load_stack_manifest(folder)


def test_saved_adapters_name_the_manifests_base_not_a_local_cache_path(tmp_path):
    written = manifest("plan")

    def peft_like(spec: StageSpec, target: Path) -> None:
        target.mkdir(parents=True)
        config = {"peft_type": "LORA", "r": 8, "base_model_name_or_path": "/home/someone/.cache/fslm/smollm2"}
        (target / "adapter_config.json").write_text(json.dumps(config))

    folder = save_stack(tmp_path / "s", written, peft_like)
    config = json.loads((folder / "adapters" / "plan" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == written.base_model.source
    assert config["r"] == 8
