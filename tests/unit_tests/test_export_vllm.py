from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from langchain_fslm import FSLMChain, GenerationConfig, ManifestError, StageSpec
from langchain_fslm.cli import app
from langchain_fslm.export_vllm import LoraModule, VllmPlan, render, vllm_plan

runner = CliRunner()


@pytest.fixture()
def stack_dir(tiny_engine, tiny_adapters, tmp_path):
    specs = [
        StageSpec(
            name="intent", prompt="R: {input}", adapter="a", generation=GenerationConfig(max_new_tokens=2)
        ),
        StageSpec(name="middle", prompt="M: {intent}", generation=GenerationConfig(max_new_tokens=2)),
        StageSpec(
            name="answer", prompt="A: {middle}", adapter="b", generation=GenerationConfig(max_new_tokens=2)
        ),
    ]
    stack = FSLMChain.from_specs(specs, engine=tiny_engine, adapter_root=tiny_adapters["a"].parent)
    return stack.save_pretrained(tmp_path / "my stack")


def test_plan_serves_each_adapter_under_its_stage_name(stack_dir, tiny_model_dir):
    plan = vllm_plan(stack_dir, port=8123)
    assert plan.base == str(tiny_model_dir)
    assert plan.base_stages == ["middle"]
    adapters = stack_dir.resolve() / "adapters"
    assert plan.command() == [
        "vllm", "serve", str(tiny_model_dir), "--host", "0.0.0.0", "--port", "8123",
        "--enable-lora", "--lora-modules", f"intent={adapters / 'intent'}", f"answer={adapters / 'answer'}",
        "--max-lora-rank", "8", "--max-loras", "2",
    ]  # fmt: skip
    assert [m.rank for m in plan.modules] == [4, 4]  # rank 4 rounds up to vLLM's smallest allowed above 1
    assert plan.modules[0].target_modules == ["query_key_value"]


def test_plan_keeps_the_manifests_base_revision_and_trust_setting(stack_dir, tiny_model_dir):
    manifest_file = stack_dir / "fslm_stack.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["base_model"].update(revision="abc123", trust_remote_code=True)
    manifest_file.write_text(json.dumps(manifest))
    command = vllm_plan(stack_dir).command()
    assert command[command.index("--revision") + 1] == "abc123"
    assert command[command.index("--tokenizer-revision") + 1] == "abc123"
    assert "--trust-remote-code" in command
    overridden = vllm_plan(stack_dir, base=str(tiny_model_dir)).command()  # another base: its own revision
    assert "--revision" not in overridden and "--trust-remote-code" not in overridden


def test_rank_rounds_up_to_a_vllm_value(stack_dir):
    config_file = stack_dir / "adapters" / "answer" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["r"] = 20
    config_file.write_text(json.dumps(config))
    assert vllm_plan(stack_dir).max_lora_rank == 32


def test_cli_prints_and_writes_the_script(stack_dir, tmp_path, tiny_model_dir):
    script = tmp_path / "missing" / "folders" / "serve.sh"  # created, like --handoff-log's
    result = runner.invoke(app, ["export", "vllm", str(stack_dir), "--port", "9000", "--write", str(script)])
    assert result.exit_code == 0, result.output
    text = script.read_text()
    assert text in result.output
    assert os.access(script, os.X_OK)
    assert "# middle" in text and "base model" in text
    assert f"FSLMChain.from_pretrained({str(stack_dir.resolve())!r}" in text
    serve = text.split("exec ", 1)[1]
    assert serve.startswith(f"vllm serve {shlex.quote(str(tiny_model_dir))} \\\n")
    assert "  --port 9000 \\\n" in serve and serve.endswith("  --max-loras 2\n")
    command = shlex.split(serve.replace("\\\n", " "))
    assert command == vllm_plan(stack_dir, port=9000).command()
    if shutil.which("bash"):
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_cli_write_error_is_clean(stack_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(app, ["export", "vllm", str(stack_dir), "--write", str(blocker / "serve.sh")])
    assert result.exit_code == 2 and "error: cannot write" in result.output


def test_scaling_doc_shows_the_script_as_written():
    modules = [
        LoraModule(
            stage=s,
            path=f"/data/my-stack/adapters/{s}",
            rank=8,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        )  # what fslm train targets
        for s in ("intent", "key_points", "draft", "answer")
    ]
    plan = VllmPlan(base="HuggingFaceTB/SmolLM2-135M-Instruct", modules=modules, base_stages=[])
    doc = (Path(__file__).resolve().parents[2] / "docs" / "scaling.md").read_text(encoding="utf-8")
    assert f"```bash\n{render(plan, '/data/my-stack')}```" in doc


def test_embedded_default_maps_to_its_hub_id_and_gguf_needs_base(stack_dir):
    path = stack_dir / "fslm_stack.json"
    manifest = json.loads(path.read_text())
    manifest["base_model"] = {"source": "embedded:smollm2-135m-instruct"}
    path.write_text(json.dumps(manifest))
    assert vllm_plan(stack_dir).base == "HuggingFaceTB/SmolLM2-135M-Instruct"

    manifest["base_model"] = {"source": "/models/x.Q4_1.gguf"}
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="GGUF.*--base"):
        vllm_plan(stack_dir)
    assert vllm_plan(stack_dir, base="org/model").base == "org/model"
    result = runner.invoke(app, ["export", "vllm", str(stack_dir)])
    assert result.exit_code == 2 and "GGUF" in result.output
