from __future__ import annotations

from typer.testing import CliRunner

from langchain_fslm import FSLMChain, GenerationConfig, StageSpec
from langchain_fslm.cli import app
from langchain_fslm.roles import default_stage_specs

runner = CliRunner()


def test_run_shows_handoffs_and_info_reads_the_stack(tiny_model_dir, tiny_engine, tmp_path):
    result = runner.invoke(
        app,
        [
            "run",
            "Why is the sky blue?",
            "--base",
            str(tiny_model_dir),
            "--max-new-tokens",
            "4",
            "--show-handoffs",
        ],
    )
    assert result.exit_code == 0, result.output
    err = result.stderr
    order = [err.index(f"── {a} → {b}") for a, b in [("intent", "answer")]]
    assert order == sorted(order) and err.index("── answer") > order[-1]  # handoffs live, then the answer
    assert "answer → output" not in err  # the answer is printed once, on stdout
    expected = FSLMChain.default(str(tiny_model_dir), max_new_tokens=4).invoke("Why is the sky blue?")
    assert result.stdout == expected + "\n"

    folder = FSLMChain.from_specs(default_stage_specs(4), engine=tiny_engine).save_pretrained(tmp_path / "s")
    result = runner.invoke(app, ["info", str(folder)])
    assert result.exit_code == 0, result.output
    assert "intent" in result.output and "answer" in result.output
    result = runner.invoke(app, ["run", "hi", "--stack", str(folder), "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output


def test_info_on_a_broken_folder_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 2
    assert "no stack manifest" in result.output


def test_run_with_compile_decode_takes_the_compiled_path(tiny_model_dir, tiny_engine, monkeypatch):
    import torch._dynamo

    from langchain_fslm.engine import local
    from langchain_fslm.engine.compiled import CompiledDecode

    calls: list[str | None] = []

    class Traced(CompiledDecode):  # dynamo traces the step, no inductor codegen (fast)
        def __init__(self) -> None:
            super().__init__(backend="eager")

        def call(self, model, adapter):  # type: ignore[no-untyped-def]
            calls.append(adapter)
            return super().call(model, adapter)

    monkeypatch.setattr(local, "CompiledDecode", Traced)
    monkeypatch.setattr(tiny_engine, "compiled", None)  # the shared engine gets it back afterwards
    args = ["run", "hi", "--base", str(tiny_model_dir), "--max-new-tokens", "3"]
    torch._dynamo.reset()
    try:
        plain = runner.invoke(app, args)
        assert plain.exit_code == 0, plain.output
        assert calls == [] and tiny_engine.compiled is None  # off unless asked for
        result = runner.invoke(app, [*args, "--compile-decode"])
    finally:
        torch._dynamo.reset()
    assert result.exit_code == 0, result.output
    assert isinstance(tiny_engine.compiled, Traced)
    # the upstream stage (intent) decodes on the compiled path; the streamed answer eagerly (the
    # local engine's stream() has no compiled path)
    assert len(calls) == 1
    assert result.output == plain.output  # the same greedy answer


def test_run_flags_that_cannot_apply_are_clear_errors(tiny_model_dir, tiny_engine, tmp_path):
    folder = FSLMChain.from_specs(default_stage_specs(4), engine=tiny_engine).save_pretrained(tmp_path / "s")
    negative = runner.invoke(app, ["run", "hi", "--base", str(tiny_model_dir), "--max-new-tokens", "0"])
    assert negative.exit_code == 2 and "max-new-tokens" in negative.output  # typer's own range check
    manifest = runner.invoke(app, ["info", str(folder / "fslm_stack.json")])  # the manifest file itself
    assert manifest.exit_code == 0, manifest.output
    assert "base model: {" in manifest.output  # a folder base model is printed as its reference


def test_fslm_works_without_the_eval_extra():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['lm_eval'] = None\n"  # as if lm-eval were not installed
        "from typer.testing import CliRunner\n"
        "from langchain_fslm.cli import app\n"
        "result = CliRunner().invoke(app, ['run', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "result = CliRunner().invoke(app, ['eval', '--limit', '1'])\n"  # a clear error, before any work
        "assert result.exit_code == 2 and 'langchain-fslm[eval]' in result.output, result.output\n"
        "import langchain_fslm.evaluation as e\n"
        "try:\n    e.FSLMLM\nexcept ImportError as err:\n    assert 'eval' in str(err)\n"
        "else:\n    raise AssertionError('FSLMLM without lm-eval')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_a_stack_moved_to_another_machine_runs_with_base_pointing_at_its_copy(
    tiny_model_dir, tiny_adapters, tmp_path
):
    import json
    import shutil

    specs = [
        StageSpec(name="s1", prompt="Q: {input}", adapter="a", generation=GenerationConfig(max_new_tokens=4))
    ]
    stack = FSLMChain.from_specs(
        specs, base_model=str(tiny_model_dir), adapter_root=tiny_adapters["a"].parent
    )
    folder = stack.save_pretrained(tmp_path / "s")
    manifest = json.loads((folder / "fslm_stack.json").read_text())
    manifest["base_model"]["source"] = "/the/other/machine/tiny-model"  # where it was trained
    (folder / "fslm_stack.json").write_text(json.dumps(manifest))
    copy = shutil.copytree(tiny_model_dir, tmp_path / "here" / "tiny-model")

    lost = runner.invoke(app, ["run", "hi", "--stack", str(folder)])
    assert lost.exit_code == 2 and "/the/other/machine/tiny-model" in lost.output
    moved = runner.invoke(app, ["run", "hi", "--stack", str(folder), "--base", str(copy)])
    assert moved.exit_code == 0, moved.output
    assert moved.stdout.strip() == stack.invoke("hi").strip()


def test_run_checks_its_arguments_before_loading_a_model(monkeypatch, tmp_path):
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(FSLMChain, "default", no_load)
    monkeypatch.setattr(FSLMChain, "from_pretrained", no_load)
    result = runner.invoke(app, ["run", "  \u200b "])
    assert result.exit_code == 2 and "empty" in result.stderr
    result = runner.invoke(app, ["run", "hi", "--stack", str(tmp_path)])
    assert result.exit_code == 2 and "no stack manifest" in result.stderr
    result = runner.invoke(app, ["run", "hi", "--max-new-tokens", "100000"])
    assert result.exit_code == 2 and "max-new-tokens" in result.output and "Traceback" not in result.output


def test_library_deprecation_notices_do_not_reach_the_user(tiny_model_dir, tiny_engine):
    import warnings

    def noisy(*args, **kwargs):  # what transformers does inside a command
        warnings.warn_explicit(
            "`is_gradient_checkpointing` is deprecated",
            FutureWarning,
            "modeling_utils.py",
            1,
            "transformers.x",
        )
        warnings.warn_explicit("ours", UserWarning, "stage.py", 1, "langchain_fslm.stage")
        raise SystemExit(0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from unittest import mock

        with mock.patch.object(FSLMChain, "default", noisy):
            runner.invoke(app, ["run", "hi"])
    assert [str(w.message) for w in caught] == ["ours"]


def test_help_shows_flags_without_type_noise():
    result = runner.invoke(app, ["run", "--help"])
    assert "--show-handoffs / --no-show-handoffs" in result.output and "<bool>" not in result.output


def test_help_shows_the_config_defaults_of_distill_and_train():
    distill = " ".join(runner.invoke(app, ["distill", "--help"]).output.split())  # unwrap the lines
    assert "[default: 200]" in distill and "[default: hf:embedded]" in distill
    train = " ".join(runner.invoke(app, ["train", "--help"]).output.split())
    assert "[default: 0.0002]" in train and "[default: embedded:smollm2-135m-instruct]" in train
