"""Reliability: concurrency gives sequential results, broken stack files are refused naming file and
field, nothing is unpickled, saves are atomic, and the parse-failure policy holds when streaming."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from langchain_fslm import (
    AdapterError,
    FSLMChain,
    KeyPoints,
    ManifestError,
    SLMRunnable,
    StageOutputError,
    StageSpec,
)
from langchain_fslm.roles import four_stage_specs

PROMPTS = [
    f"Question {i}: name {w}." for i, w in enumerate("a fruit|a colour|a city|a tool|a song".split("|") * 5)
]
assert len(PROMPTS) == 25


@pytest.fixture(scope="module")
def adapted_stack(tiny_engine, tiny_adapters) -> FSLMChain:
    """Four stages on one base, each with its own adapter."""
    specs = four_stage_specs(max_new_tokens=5)
    for spec, name in zip(specs, "abcd", strict=True):
        spec.adapter = name
    return FSLMChain.from_specs(specs, engine=tiny_engine, adapter_root=tiny_adapters["a"].parent)


@pytest.fixture(scope="module")
def sequential(adapted_stack) -> list[str]:
    return [adapted_stack.invoke(p) for p in PROMPTS]


@pytest.fixture(scope="module")
def saved_stack(adapted_stack, tmp_path_factory) -> Path:
    return adapted_stack.save_pretrained(tmp_path_factory.mktemp("saved") / "stack")


# ----------------------------------------------------------------------------- concurrency
def test_eight_threads_by_25_invokes_equal_sequential(adapted_stack, sequential):
    def worker(seed: int) -> list[tuple[int, str]]:
        order = list(range(len(PROMPTS)))
        random.Random(seed).shuffle(order)
        return [(i, adapted_stack.invoke(PROMPTS[i])) for i in order]

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(worker, s) for s in range(8)]
        outcomes = [f.result(timeout=600) for f in futures]  # a deadlock fails here, not hangs
    assert sum(len(o) for o in outcomes) == 200
    for outcome in outcomes:
        for i, answer in outcome:
            assert answer == sequential[i]


async def test_fifty_concurrent_ainvokes_equal_sequential(adapted_stack, sequential):
    inputs = PROMPTS * 2
    answers = await asyncio.wait_for(asyncio.gather(*(adapted_stack.ainvoke(p) for p in inputs)), 600)
    assert answers == sequential * 2


def test_batch_with_max_concurrency_equals_sequential(adapted_stack, sequential):
    assert adapted_stack.batch(PROMPTS, config={"max_concurrency": 3}) == sequential
    stage = adapted_stack.stages[0]
    expected = [stage.invoke(p).raw for p in PROMPTS[:6]]
    assert [r.raw for r in stage.batch(PROMPTS[:6], config={"max_concurrency": 2})] == expected


# ----------------------------------------------------------------------------- broken files
def copy_stack(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "stack"))


def load(folder: Path, tiny_engine) -> FSLMChain:
    return FSLMChain.from_pretrained(folder, engine=tiny_engine)


def test_corrupted_adapter_file_is_refused(saved_stack, tmp_path, tiny_engine):
    folder = copy_stack(saved_stack, tmp_path)
    weights = folder / "adapters/draft/adapter_model.safetensors"
    weights.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(AdapterError, match=r"draft/adapter_model.safetensors.*not a readable safetensors"):
        load(folder, tiny_engine)


def test_truncated_safetensors_is_refused(saved_stack, tmp_path, tiny_engine):
    folder = copy_stack(saved_stack, tmp_path)
    weights = folder / "adapters/answer/adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(AdapterError, match=r"adapters/answer/adapter_model.safetensors"):
        load(folder, tiny_engine)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("peft_type", "PREFIX_TUNING", "field 'peft_type'"),
        ("r", 0, "field 'r'"),
        ("target_modules", None, "field 'target_modules'"),
    ],
)
def test_wrong_adapter_config_field_is_refused(saved_stack, tmp_path, tiny_engine, field, value, match):
    folder = copy_stack(saved_stack, tmp_path)
    config_file = folder / "adapters/intent/adapter_config.json"
    config = json.loads(config_file.read_text())
    config[field] = value
    config_file.write_text(json.dumps(config))
    with pytest.raises(AdapterError, match=rf"adapters/intent/adapter_config.json: {match}"):
        load(folder, tiny_engine)


def test_adapter_from_another_base_is_refused_and_leaves_no_trace(tiny_engine, tmp_path):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tests.conftest import build_tiny_adapter

    other_dir = tmp_path / "wider"
    config = GPTNeoXConfig(
        vocab_size=50304, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).save_pretrained(other_dir)
    adapter = build_tiny_adapter(other_dir, tmp_path / "foreign", seed=3)
    with pytest.raises(AdapterError, match=r"safetensors: tensor .*query_key_value.*in_features=32"):
        tiny_engine.load_adapter("foreign", adapter)
    assert not tiny_engine.has_adapter("foreign")


def test_manifest_missing_or_wrong_field_names_it(saved_stack, tmp_path, tiny_engine):
    folder = copy_stack(saved_stack, tmp_path)
    path = folder / "fslm_stack.json"
    data = json.loads(path.read_text())
    broken = {k: v for k, v in data.items() if k != "stages"}
    path.write_text(json.dumps(broken))
    with pytest.raises(ManifestError, match=r"fslm_stack.json: stages: Field required"):
        load(folder, tiny_engine)
    data["stages"][2]["generation"]["max_new_tokens"] = "many"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"fslm_stack.json: stages\[draft\]\.generation\.max_new_tokens"):
        load(folder, tiny_engine)
    data["stages"][2]["generation"]["max_new_tokens"] = 5
    data["format_version"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"fslm_stack.json: format_version: .*unsupported .* version 2"):
        load(folder, tiny_engine)
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load(folder, tiny_engine)


def test_adapter_path_outside_the_stack_is_refused(saved_stack, tmp_path, tiny_engine):
    folder = copy_stack(saved_stack, tmp_path)
    path = folder / "fslm_stack.json"
    data = json.loads(path.read_text())
    data["stages"][0]["adapter"] = "../elsewhere"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"stages\[intent\]\.adapter.*inside the stack"):
        load(folder, tiny_engine)
    outside = Path(shutil.copytree(folder / "adapters/intent", tmp_path / "outside"))
    os.symlink(outside, folder / "adapters/link")
    data["stages"][0]["adapter"] = "adapters/link"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"stages\.intent\.adapter leaves the stack folder"):
        load(folder, tiny_engine)


class Boom:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_nothing_is_unpickled_from_a_stack(saved_stack, tmp_path, tiny_engine):
    folder = copy_stack(saved_stack, tmp_path)
    marker = tmp_path / "unpickled"
    adapter = folder / "adapters/key_points"
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(Boom(marker)))
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors is missing.*never loaded"):
        load(folder, tiny_engine)
    assert not marker.exists()


def test_remote_code_is_refused_unless_asked(saved_stack, tmp_path, tiny_engine):
    folder = copy_stack(saved_stack, tmp_path)
    path = folder / "fslm_stack.json"
    data = json.loads(path.read_text())
    data["base_model"]["trust_remote_code"] = True
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"fslm_stack.json: base_model.trust_remote_code"):
        load(folder, tiny_engine)
    assert FSLMChain.from_pretrained(folder, engine=tiny_engine, trust_remote_code=True)


# ----------------------------------------------------------------------------- atomic saves
def test_a_crash_mid_save_keeps_the_old_stack(adapted_stack, saved_stack, tmp_path, tiny_engine, monkeypatch):
    folder = copy_stack(saved_stack, tmp_path)
    before = load(folder, tiny_engine).invoke(PROMPTS[0])
    engine = adapted_stack.stages[0].engine
    real_save = engine.save_adapter
    saved: list[str] = []

    def crash_on_third(name, target):
        if len(saved) == 2:
            raise KeyboardInterrupt("killed mid-save")
        saved.append(name)
        real_save(name, target)

    monkeypatch.setattr(engine, "save_adapter", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        adapted_stack.save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack"]  # no temp folders left behind
    assert load(folder, tiny_engine).invoke(PROMPTS[0]) == before
    saved.clear()
    with pytest.raises(KeyboardInterrupt):
        adapted_stack.save_pretrained(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()  # nothing half-written that could load


# ----------------------------------------------------------------------------- parse policy
class StreamingScript:
    """Plumbing fake: streams a scripted text (tests the parse policy of a streamed last stage)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def generate(self, requests):
        from langchain_fslm import Generation

        return [Generation(text=self.text) for _ in requests]

    def stream(self, request):
        yield self.text

    def render(self, prompt, system=None):
        return prompt

    def count_tokens(self, text):  # a scripted engine counts words
        return len(text.split())

    def has_adapter(self, name):
        return True


def test_streamed_stage_that_does_not_parse_names_the_stage():
    spec = StageSpec(name="points", prompt="{input}", output_type="key_points", on_parse_error="raise")
    stack = FSLMChain.from_specs([spec], engine=StreamingScript("  \n "))
    with pytest.raises(StageOutputError, match="'points'") as err:
        list(stack.stream("x"))
    assert err.value.raw == "  \n "


def test_streamed_stage_pass_raw_hands_the_text_on():
    stage = SLMRunnable(
        name="points",
        prompt="{input}",
        output_type=KeyPoints,
        engine=StreamingScript(" "),
        on_parse_error="pass_raw",
    )
    stack = FSLMChain(stages=[stage])
    assert "".join(stack.stream("x")) == " "
