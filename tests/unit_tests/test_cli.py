from __future__ import annotations

from typer.testing import CliRunner

from langchain_fslm import FSLMChain
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
    assert "intent → key_points" in result.output and "answer → output" in result.output

    folder = FSLMChain.from_specs(default_stage_specs(4), engine=tiny_engine).save_pretrained(tmp_path / "s")
    result = runner.invoke(app, ["info", str(folder)])
    assert result.exit_code == 0, result.output
    assert "key_points" in result.output
    result = runner.invoke(app, ["run", "hi", "--stack", str(folder), "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output


def test_info_on_a_broken_folder_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 2
    assert "no stack manifest" in result.output
