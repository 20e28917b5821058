"""Loading base models, the GGUF cache, adapters and stack folders: the cases that used to go wrong."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path

import pytest

from langchain_fslm import ChatFSLM, FSLMChain, GenerationConfig, ManifestError, StageSpec, models
from langchain_fslm.engine.base import GenerationRequest
from langchain_fslm.errors import AdapterError, FSLMError
from langchain_fslm.models import gguf_cache

# ----------------------------------------------------------------------------- GGUF cache


@pytest.fixture()
def fake_gguf(tmp_path, monkeypatch, tiny_model_dir):
    """A .gguf file whose 'conversion' loads the tiny model (recording the dtype it was asked for)."""
    import transformers

    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF-fake")
    conversions: list[object] = []
    real_model = transformers.AutoModelForCausalLM.from_pretrained
    real_tok = transformers.AutoTokenizer.from_pretrained

    def model_from(path, *args, gguf_file=None, **kwargs):
        if gguf_file is None:
            return real_model(path, *args, **kwargs)
        conversions.append(kwargs.get("dtype"))
        return real_model(tiny_model_dir, dtype=kwargs.get("dtype"))

    def tok_from(path, *args, gguf_file=None, **kwargs):
        return real_tok(tiny_model_dir if gguf_file else path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok_from)
    return gguf, conversions


def _weights(model):
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}


def test_gguf_cache_holds_fp32_whatever_dtype_came_first(fake_gguf, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    gguf, conversions = fake_gguf
    bf16, _ = models.load_base_model(models.BaseModelRef(source=str(gguf), dtype="bfloat16"))
    assert next(bf16.parameters()).dtype == torch.bfloat16
    fp32, _ = models.load_base_model(models.BaseModelRef(source=str(gguf), dtype="float32"))
    assert conversions == [torch.float32]  # converted once, in fp32
    reference = _weights(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    got = _weights(fp32)
    assert all(torch.equal(got[k], reference[k]) for k in reference)  # not bf16-rounded


def test_gguf_cache_that_is_broken_is_rebuilt_not_raised(fake_gguf, caplog):
    gguf, conversions = fake_gguf
    models.load_base_model(str(gguf))
    cached = gguf_cache._gguf_cache_folder(gguf_cache._file_hash(gguf))
    os.truncate(cached / "model.safetensors", 1000)
    with caplog.at_level(logging.INFO, logger="langchain_fslm.models"):
        models.load_base_model(str(gguf))
    assert len(conversions) == 2
    (cached / "model.safetensors").write_bytes(b"\0" * 64)  # garbage: the marker's size disagrees
    models.load_base_model(str(gguf))
    assert len(conversions) == 3
    marker = json.loads((cached / "fslm_cache.json").read_text())
    (cached / "model.safetensors").write_bytes(b"\0" * 64)  # garbage the marker agrees with
    marker["weights_bytes"] = 64
    (cached / "fslm_cache.json").write_text(json.dumps(marker))
    models.load_base_model(str(gguf))  # the load fails, the cache is converted again: no SafetensorError
    assert len(conversions) == 4


def test_gguf_cache_from_before_the_marker_is_converted_again(fake_gguf):
    gguf, conversions = fake_gguf
    models.load_base_model(str(gguf))
    cached = gguf_cache._gguf_cache_folder(gguf_cache._file_hash(gguf))
    (cached / "fslm_cache.json").unlink()  # e.g. written in bf16 by an older version
    models.load_base_model(str(gguf))
    assert len(conversions) == 2 and (cached / "fslm_cache.json").is_file()


def test_killed_conversions_leave_no_temporary_folder_behind(fake_gguf):
    gguf, _ = fake_gguf
    cached = gguf_cache._gguf_cache_folder(gguf_cache._file_hash(gguf))
    leftover = cached.parent / f".tmp-{cached.name}-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")
    models.load_base_model(str(gguf))
    assert not leftover.exists()


def test_concurrent_first_loads_convert_once_and_both_succeed(fake_gguf):
    gguf, conversions = fake_gguf
    errors: list[BaseException] = []

    def load() -> None:
        try:
            models.load_base_model(str(gguf))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(conversions) == 1


def test_file_hash_memo_sees_a_rewrite_that_keeps_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"A" * 100)
    st = f.stat()
    first = gguf_cache._file_hash(f)
    f.write_bytes(b"B" * 100)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r / cp -p / rsync -t
    assert gguf_cache._file_hash(f) == gguf_cache.sha256_file(f) != first


# ----------------------------------------------------------------------------- references and errors


def test_one_engine_key_for_every_spelling_of_a_local_folder(tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tiny_model_dir.parent)
    spellings = [tiny_model_dir.name, f"./{tiny_model_dir.name}", f"{tiny_model_dir}/", str(tiny_model_dir)]
    assert len({models.BaseModelRef(source=s).key() for s in spellings}) == 1


def test_a_relative_folder_key_does_not_follow_chdir(tiny_model_dir, tmp_path, monkeypatch):
    for where in ("one", "two"):
        shutil.copytree(tiny_model_dir, tmp_path / where / "base")
    monkeypatch.chdir(tmp_path / "one")
    here = models.BaseModelRef(source="base").key()
    monkeypatch.chdir(tmp_path / "two")
    assert models.BaseModelRef(source="base").key() != here  # another folder, another engine


def test_hub_id_offline_names_the_id_and_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotFoundError, match=r"'nobody/no-such-model-xyz'.*HF_HUB_OFFLINE"):
        models.load_base_model("nobody/no-such-model-xyz")


def test_bad_local_references_are_clear_fslm_errors(tiny_model_dir, tmp_path):
    cases = {
        str(tiny_model_dir / "config.json"): "is a file, not a folder",
        "": "empty",
        r"C:\models\base": "folder not found",
        str(tmp_path / "nothing.GGUF"): "GGUF file not found",
    }
    for source, message in cases.items():
        with pytest.raises(FSLMError, match=message):
            models.load_base_model(source)
    with pytest.raises(models.ModelNotFoundError, match="x.gguf"):
        models.load_base_model(models.BaseModelRef(source=str(tiny_model_dir), gguf_file="x.gguf"))


# ----------------------------------------------------------------------------- stack folders


def _one_stage(adapter: str | None = "a") -> list[StageSpec]:
    return [
        StageSpec(
            name="s1",
            prompt="Q: {input}",
            adapter=adapter,
            generation=GenerationConfig(max_new_tokens=6),
            parse_retries=0,
            on_parse_error="pass_raw",
        )
    ]


def test_saving_never_replaces_a_folder_or_file_that_is_not_a_stack(tiny_engine, tiny_adapters, tmp_path):
    stack = FSLMChain.from_specs(_one_stage(), engine=tiny_engine, adapter_root=tiny_adapters["a"].parent)
    project = tmp_path / "project"
    project.mkdir()
    (project / "code.py").write_text("precious")
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    for target in (project, notes):
        with pytest.raises(ManifestError, match=str(target)):
            stack.save_pretrained(target)
    assert (project / "code.py").read_text() == "precious" and notes.read_text() == "precious"
    (tmp_path / "empty").mkdir()
    stack.save_pretrained(tmp_path / "empty")  # an empty folder is fine, and so is an existing stack
    stack.save_pretrained(tmp_path / "empty")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_save_and_load_expand_the_home_folder(tiny_engine, tiny_adapters, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    stack = FSLMChain.from_specs(_one_stage(), engine=tiny_engine, adapter_root=tiny_adapters["a"].parent)
    folder = stack.save_pretrained("~/stk")
    assert folder == tmp_path / "home" / "stk" and not (tmp_path / "~").exists()
    assert FSLMChain.from_pretrained("~/stk", engine=tiny_engine).invoke("hi") == stack.invoke("hi")


def test_a_stack_saved_over_another_reloads_the_new_adapters(tiny_engine, tiny_adapters, tmp_path):
    root = tiny_adapters["a"].parent
    first = FSLMChain.from_specs(_one_stage("a"), engine=tiny_engine, adapter_root=root)
    second = FSLMChain.from_specs(_one_stage("b"), engine=tiny_engine, adapter_root=root)
    assert first.invoke("hello") != second.invoke("hello")
    first.save_pretrained(tmp_path / "s")
    assert FSLMChain.from_pretrained(tmp_path / "s", engine=tiny_engine).invoke("hello") == first.invoke(
        "hello"
    )
    second.save_pretrained(tmp_path / "s")
    again = FSLMChain.from_pretrained(tmp_path / "s", engine=tiny_engine)
    assert again.invoke("hello") == second.invoke("hello")


def test_a_relative_base_folder_is_saved_absolute(tiny_model_dir, tiny_adapters, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_model_dir.parent)
    stack = FSLMChain.from_specs(
        _one_stage(), base_model=tiny_model_dir.name, adapter_root=tiny_adapters["a"].parent
    )
    folder = stack.save_pretrained(tmp_path / "s")
    source = json.loads((folder / "fslm_stack.json").read_text())["base_model"]["source"]
    assert source == str(tiny_model_dir.resolve())
    moved = shutil.move(folder, tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    assert FSLMChain.from_pretrained(moved).invoke("hello") == stack.invoke("hello")


# ----------------------------------------------------------------------------- adapters


def _adapter_copy(src: Path, dest: Path, **config_updates) -> Path:
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "adapter_config.json").read_text())
    cfg.update(config_updates)
    (dest / "adapter_config.json").write_text(json.dumps(cfg))
    return dest


def test_a_first_adapter_that_peft_refuses_leaves_the_engine_usable(
    tiny_model_dir, tiny_adapters, monkeypatch
):
    import peft.peft_model

    from langchain_fslm.engine.local import LocalEngine

    engine = LocalEngine.from_ref(str(tiny_model_dir), batch_window_ms=None)
    request = GenerationRequest(prompt="hello there", config=GenerationConfig(max_new_tokens=6))
    before = engine.generate([request])[0].text

    def refuse(*args, **kwargs):  # peft fails after injecting its layers (size mismatch, version...)
        raise RuntimeError("peft refused the state dict")

    with monkeypatch.context() as patch:
        patch.setattr(peft.peft_model, "set_peft_model_state_dict", refuse)
        with pytest.raises(AdapterError, match="peft refused"):
            engine.load_adapter("bad", tiny_adapters["a"])
    assert not engine.is_peft and engine.generate([request])[0].text == before
    engine.load_adapter("a", tiny_adapters["a"])
    assert engine.generate([request.model_copy(update={"adapter": "a"})])[0].text != before


def _fresh_engine(tiny_model_dir: Path):
    from langchain_fslm.engine.local import LocalEngine

    return LocalEngine.from_ref(str(tiny_model_dir), batch_window_ms=None)


def test_release_frees_a_stacks_adapters_once_no_stack_uses_them(tiny_model_dir, tiny_adapters):
    engine = _fresh_engine(tiny_model_dir)
    base_text = FSLMChain.from_specs(_one_stage(None), engine=engine).invoke("hello")
    root = tiny_adapters["a"].parent
    first = FSLMChain.from_specs(_one_stage("a"), engine=engine, adapter_root=root)
    second = FSLMChain.from_specs(_one_stage("a"), engine=engine, adapter_root=root)
    other = FSLMChain.from_specs(_one_stage("b"), engine=engine, adapter_root=root)
    text_a, text_b = second.invoke("hello"), other.invoke("hello")
    assert len(engine.model.peft_config) == 2  # the same folder is loaded once

    first.release()
    first.release()  # a second release gives nothing back twice
    assert second.invoke("hello") == text_a
    # the released stack refuses to run, though its adapter is still loaded for `second` (issue 26, 10)
    for run in (first.invoke, lambda x: list(first.stream(x)), lambda x: first.batch([x])):
        with pytest.raises(AdapterError, match="released"):
            run("hello")
    with pytest.raises(AdapterError, match="released"):
        ChatFSLM(stack=first).invoke("hello")
    second.with_generation(max_new_tokens=3).release()  # copies share their stack's loads
    assert len(engine.model.peft_config) == 1
    with pytest.raises(AdapterError, match="released"):
        second.invoke("hello")
    second.release()  # already released through its copy: nothing happens
    assert other.invoke("hello") == text_b

    other.release()
    assert not engine.is_peft  # the last adapter gone: the plain base model again
    assert FSLMChain.from_specs(_one_stage(None), engine=engine).invoke("hello") == base_text
    again = FSLMChain.from_specs(_one_stage("a"), engine=engine, adapter_root=root)
    assert again.invoke("hello") == text_a


def test_reloading_and_releasing_stacks_keeps_no_adapters(tiny_model_dir, tiny_adapters, tmp_path):
    engine = _fresh_engine(tiny_model_dir)
    params = sum(p.numel() for p in engine.model.parameters())
    for i in range(5):  # a retrained stack each time: a new folder, new adapter names
        shutil.copytree(tiny_adapters["a"], tmp_path / f"run{i}" / "a")
        stack = FSLMChain.from_specs(_one_stage("a"), engine=engine, adapter_root=tmp_path / f"run{i}")
        stack.invoke("hello")
        stack.release()
    assert not engine.is_peft and engine.adapter_paths == {} and engine.adapter_users == {}
    assert sum(p.numel() for p in engine.model.parameters()) == params


def test_stacks_loaded_and_released_beside_a_running_stack_leave_its_answers_alone(
    tiny_model_dir, tiny_adapters, tmp_path
):
    engine = _fresh_engine(tiny_model_dir)
    running = FSLMChain.from_specs(_one_stage(None), engine=engine)  # the base model: peft comes and goes
    expected = running.invoke("hello")
    answers: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            answers.append(running.invoke("hello"))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        for i in range(4):
            shutil.copytree(tiny_adapters["b"], tmp_path / f"run{i}" / "b")
            stack = FSLMChain.from_specs(_one_stage("b"), engine=engine, adapter_root=tmp_path / f"run{i}")
            stack.invoke("hello")
            stack.release()
    finally:
        stop.set()
        thread.join()
    assert len(answers) > 4 and set(answers) == {expected}
    assert not engine.is_peft


def test_a_stack_that_fails_to_load_keeps_none_of_its_adapters(tiny_model_dir, tiny_adapters):
    engine = _fresh_engine(tiny_model_dir)
    specs = [*_one_stage("a"), _one_stage("missing")[0].model_copy(update={"name": "s2"})]
    with pytest.raises(AdapterError, match="missing"):
        FSLMChain.from_specs(specs, engine=engine, adapter_root=tiny_adapters["a"].parent)
    assert not engine.is_peft and engine.adapter_users == {}


def test_a_folder_loaded_under_a_loaded_name_replaces_it(tiny_model_dir, tiny_adapters):
    request = GenerationRequest(prompt="hello", adapter="x", config=GenerationConfig(max_new_tokens=6))
    reference = _fresh_engine(tiny_model_dir)
    reference.load_adapter("x", tiny_adapters["b"])
    engine = _fresh_engine(tiny_model_dir)
    engine.load_adapter("x", tiny_adapters["a"])
    engine.load_adapter("x", tiny_adapters["b"])  # the only adapter: peft cannot delete it in place
    assert engine.generate([request])[0].text == reference.generate([request])[0].text
    with pytest.raises(AdapterError, match="No adapter named 'y'"):
        engine.release_adapter("y")


def test_adapter_files_that_peft_would_half_load_are_refused(tiny_engine, tiny_adapters, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    src = tiny_adapters["a"]
    weights = load_file(src / "adapter_model.safetensors")
    variants = {
        "no_lora": ({"foo.weight": torch.zeros(2, 2)}, {}, "no LoRA weights"),
        "no_prefix": (
            {k.removeprefix("base_model.model."): v for k, v in weights.items()},
            {},
            "does not start",
        ),
        "only_a": ({k: v for k, v in weights.items() if "lora_A" in k}, {}, "no lora_B"),
        "flat": ({k: v.flatten() if "lora_A" in k else v for k, v in weights.items()}, {}, "2 dimensions"),
        "rank": (weights, {"r": 8}, "r=8"),
    }
    for name, (tensors, config, message) in variants.items():
        folder = _adapter_copy(src, tmp_path / name, **config)
        save_file(tensors, folder / "adapter_model.safetensors")
        with pytest.raises(AdapterError, match=message):
            tiny_engine.load_adapter(f"review-{name}", folder)
