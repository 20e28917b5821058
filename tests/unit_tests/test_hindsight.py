"""Hindsight distillation (issue 25, part 1): the teacher sees the reference, the trained stage does not."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from langchain_fslm import InvalidInputError
from langchain_fslm.cli import app
from langchain_fslm.roles import default_stage_specs, four_stage_specs
from langchain_fslm.training.distill import distill, read_records
from langchain_fslm.training.hindsight import derive, teacher_prompt

ROWS = [
    {
        "instruction": f"Describe fruit number {n}.",
        "input": "",
        "output": f"Fruit {n} is sweet. It grows on trees. People eat it raw.",
    }
    for n in range(4)
]


class RecordingTeacher:
    """Plumbing double: remembers every prompt, answers in each stage's format."""

    name = "recording"

    def __init__(self) -> None:
        self.prompts: dict[str, list[str]] = {}

    def write(self, spec, prompts):
        self.prompts.setdefault(spec.name, []).extend(prompts)
        if spec.name == "key_points":
            return ["- sweet taste\n- grows on trees"] * len(prompts)
        return [f"The request asks about a fruit ({spec.name})."] * len(prompts)


def test_the_teacher_sees_the_reference_and_the_recorded_prompt_does_not(tmp_path):
    teacher = RecordingTeacher()
    out = tmp_path / "h.jsonl"
    stats = distill(ROWS, teacher, out, mode="hindsight", progress=False, stages=four_stage_specs())
    assert stats.written == 4
    for stage in ("intent", "key_points", "draft"):
        assert all(row["output"] in p for row, p in zip(ROWS, teacher.prompts[stage], strict=True))
    records = read_records(out)
    assert {r["mode"] for r in records} == {"hindsight"}
    for record, row in zip(records, ROWS, strict=True):
        for stage, handoff in record["stages"].items():
            assert row["output"] not in handoff["prompt"], stage  # inference sees only the request
        assert record["stages"]["answer"]["target"] == row["output"]
    # the key points the teacher wrote in hindsight reach the draft's teacher prompt
    assert "- sweet taste" in teacher.prompts["draft"][0]


def test_plain_mode_prompts_are_the_stage_prompts(tmp_path):
    teacher = RecordingTeacher()
    distill(ROWS[:2], teacher, tmp_path / "h.jsonl", progress=False)
    assert all(ROWS[0]["output"] not in p for p in teacher.prompts["intent"])
    assert {r["mode"] for r in read_records(tmp_path / "h.jsonl")} == {"plain"}


def test_one_file_holds_one_mode(tmp_path):
    out = tmp_path / "h.jsonl"
    distill(ROWS[:2], RecordingTeacher(), out, progress=False)
    with pytest.raises(InvalidInputError, match="plain mode; this run is in hindsight mode"):
        distill(ROWS, RecordingTeacher(), out, mode="hindsight", progress=False)


def test_derived_key_points_come_from_the_reference_without_the_teacher(tmp_path):
    teacher = RecordingTeacher()
    rows = [*ROWS[:2], {"instruction": "Say hi.", "input": "", "output": "Hi."}]  # one clause: teacher
    four = four_stage_specs()
    distill(
        rows,
        teacher,
        tmp_path / "h.jsonl",
        mode="hindsight",
        derive=["key_points"],
        progress=False,
        stages=four,
    )
    records = read_records(tmp_path / "h.jsonl")
    assert records[0]["stages"]["key_points"]["target"] == (
        "- Fruit 0 is sweet.\n- It grows on trees.\n- People eat it raw."
    )
    assert records[2]["stages"]["key_points"]["target"] == "- sweet taste\n- grows on trees"
    assert len(teacher.prompts["key_points"]) == 1  # only the record it could not derive
    with pytest.raises(InvalidInputError, match="cannot derive"):
        distill(ROWS, teacher, tmp_path / "other.jsonl", derive=["draft"], progress=False)


def test_derive_shortens_and_bounds_the_points():
    long = "Word " * 60 + "end. Second point here. Third one. Fourth one. Fifth is dropped."
    points = derive("key_points", long).splitlines()
    assert len(points) == 4 and all(p.startswith("- ") and len(p) <= 122 for p in points)
    assert points[0].endswith("...")
    assert derive("key_points", "Only one sentence") is None


def test_a_one_sentence_reference_is_split_at_its_clauses():
    assert derive("key_points", "The cymbal is percussion and the flute is wind.") == (
        "- The cymbal is percussion\n- the flute is wind."
    )
    assert derive("key_points", "Serenely, precious, stumble, obvious.") == (
        "- Serenely\n- precious\n- stumble\n- obvious."
    )
    six = derive("key_points", "aa1, bb2, cc3, dd4, ee5, ff6.")
    assert six == "- aa1, bb2\n- cc3, dd4\n- ee5, ff6."  # grouped, nothing dropped


def test_hindsight_prompt_of_a_custom_stage_adds_the_reference():
    spec = default_stage_specs()[0].model_copy(update={"name": "topic", "prompt": "Topic of: {input}"})
    prompt = teacher_prompt(spec, {"input": "What is {x}?"}, "A {brace} answer.")
    assert prompt.startswith("Topic of: What is {x}?") and "A {brace} answer." in prompt


def test_cli_hindsight_flags(tmp_path, tiny_model_dir):
    data = tmp_path / "d.json"
    data.write_text(json.dumps(ROWS))
    args = [
        "distill",
        "--data",
        str(data),
        "--teacher",
        f"hf:{tiny_model_dir}",
        "--out",
        str(tmp_path / "h.jsonl"),
    ]
    args += [
        "--heldout",
        "1",
        "--limit",
        "1",
        "--max-new-tokens",
        "150",  # a random model finishes an intent under its constraint
        "--hindsight",
        "--derive",
        "key_points",
    ]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert {r["mode"] for r in read_records(tmp_path / "h.jsonl")} == {"hindsight"}


def test_the_default_layout_in_hindsight_mode_writes_intents_seeing_the_reference(tmp_path):
    teacher = RecordingTeacher()
    distill(ROWS, teacher, tmp_path / "h.jsonl", mode="hindsight", progress=False)
    records = read_records(tmp_path / "h.jsonl")
    assert [list(r["stages"]) for r in records] == [["intent", "answer"]] * 4
    assert list(teacher.prompts) == ["intent"]  # the answer stage learns the reference: no teacher call
    assert all(row["output"] in p for row, p in zip(ROWS, teacher.prompts["intent"], strict=True))
    record = records[0]
    assert record["stages"]["intent"]["target"] in record["stages"]["answer"]["prompt"]
    assert record["stages"]["answer"]["prompt"].endswith(ROWS[0]["instruction"])  # the request comes last
    assert ROWS[0]["output"] not in record["stages"]["answer"]["prompt"]
