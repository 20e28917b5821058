"""Training: distillation (resume, parse-failure accounting), per-stage LoRA training, config, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from langchain_fslm.cli import app
from langchain_fslm.errors import InvalidInputError
from langchain_fslm.roles import four_stage_specs
from langchain_fslm.training import DistillConfig, TrainConfig, distill, load_config, split_heldout
from langchain_fslm.training.config import ConfigError
from langchain_fslm.training.data import load_alpaca, record_id
from langchain_fslm.training.distill import dropped_path, read_records

FOUR = four_stage_specs()  # the longest built-in layout: every kind of handoff
ROWS = [
    {
        "instruction": f"Name {n} fruits.",
        "input": "" if n % 2 else "Be brief.",
        "output": f"{n} fruits: apple.",
    }
    for n in range(2, 12)
]


class CountingTeacher:
    """Plumbing double: echoes each stage's name; an empty intent for requests mentioning 'Name 3'."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def write(self, spec, prompts):
        self.calls.append((spec.name, len(prompts)))
        texts = []
        for p in prompts:
            if spec.name == "intent" and "Name 3 " in p:
                texts.append("   ")  # does not parse as an Intent
            elif spec.name == "key_points":
                texts.append("- first point\n- second point")
            elif spec.name == "intent":
                texts.append("It asks for the names of some fruits.")
            else:
                texts.append(f"{spec.name} text")
        return texts


def test_distill_drops_unparseable_records_and_resumes_without_redoing(tmp_path):
    out = tmp_path / "h.jsonl"
    teacher = CountingTeacher()
    stats = distill(ROWS[:4], teacher, out, batch_size=3, progress=False, stages=FOUR)
    assert stats.written == 3 and stats.dropped["intent"] == 1 and stats.skipped == 0
    dropped = [json.loads(x) for x in dropped_path(out).read_text().splitlines()]
    assert dropped[0]["stage"] == "intent" and dropped[0]["id"] == record_id(ROWS[1])
    records = read_records(out)
    assert all(set(r["stages"]) == {"intent", "key_points", "draft", "answer"} for r in records)
    # the last stage's target is Alpaca's reference by default; key points are parsed and re-rendered
    assert records[0]["stages"]["answer"]["target"] == ROWS[0]["output"]
    assert records[0]["stages"]["key_points"]["target"] == "- first point\n- second point"
    assert "first point" in records[0]["stages"]["draft"]["prompt"]
    assert ("answer", 3) not in teacher.calls  # reference target: the teacher never writes it

    # killed mid-write: a torn last line is cut, finished and dropped records are not redone
    with out.open("a") as f:
        f.write('{"id": "torn')
    teacher2 = CountingTeacher()
    stats = distill(
        ROWS[:6], teacher2, out, batch_size=3, progress=False, final_target="teacher", stages=FOUR
    )
    assert stats.skipped == 4 and stats.written == 2
    assert teacher2.calls[0] == ("intent", 2)
    ids = [r["id"] for r in read_records(out)]
    assert len(ids) == len(set(ids)) == 5
    assert read_records(out)[-1]["stages"]["answer"]["target"] == "answer text"


def test_distill_with_a_langchain_chat_model_and_a_local_model(tmp_path, tiny_model_dir):
    from langchain_core.language_models import FakeListChatModel

    chat = FakeListChatModel(responses=["It asks for fruit.\nextra", "- apple\n- pear", "Apples."])
    stats = distill(ROWS[:1], chat, tmp_path / "a.jsonl", progress=False, stages=FOUR)
    rec = read_records(tmp_path / "a.jsonl")[0]
    assert stats.written == 1 and rec["stages"]["intent"]["target"] == "It asks for fruit."  # stop "\n"

    stats = distill(ROWS[:2], f"hf:{tiny_model_dir}", tmp_path / "b.jsonl", max_new_tokens=4, progress=False)
    assert stats.written + sum(stats.dropped.values()) == 2
    assert all(r["teacher"] == f"hf:{tiny_model_dir}" for r in read_records(tmp_path / "b.jsonl"))


def test_distill_refuses_to_mix_teachers_in_one_file(tmp_path):
    from langchain_core.language_models import FakeListChatModel

    out = tmp_path / "h.jsonl"
    distill(ROWS[:2], CountingTeacher(), out, batch_size=2, progress=False)
    before = out.read_text()
    other = FakeListChatModel(responses=["x"])
    with pytest.raises(InvalidInputError, match=r"teacher counting; this run's teacher is FakeListChatModel"):
        distill(ROWS[:4], other, out, progress=False)
    assert out.read_text() == before  # nothing was added


def test_distill_with_an_unwritable_out_fails_before_calling_the_teacher(tmp_path):
    teacher = CountingTeacher()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InvalidInputError, match="cannot write the distilled records"):
        distill(ROWS[:2], teacher, blocker / "h.jsonl", progress=False)  # its folder is a file
    assert teacher.calls == []


def test_a_module_attr_teacher_is_recorded_by_spec_and_model(tmp_path, monkeypatch):
    import sys
    import types

    from langchain_core.language_models import FakeListChatModel

    from langchain_fslm.training.teacher import resolve_teacher

    module = types.ModuleType("my_teachers")
    module.llama = FakeListChatModel(responses=["x"])  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "my_teachers", module)
    assert resolve_teacher("my_teachers:llama").name == "my_teachers:llama = FakeListChatModel"

    class Named(FakeListChatModel):
        model_name: str = "llama3.2:3b"

    assert resolve_teacher(Named(responses=["x"])).name == "Named(llama3.2:3b)"


def test_ctrl_c_in_train_says_how_to_resume(tmp_path, monkeypatch):
    import langchain_fslm.training.finetune as finetune

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "train_stack", interrupted)
    result = CliRunner().invoke(
        app, ["train", "--handoffs", str(tmp_path / "h.jsonl"), "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 130
    assert "interrupted: finished stages and the last checkpoint are kept" in result.output


def test_heldout_split_is_seeded_and_disjoint(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS))
    train, held = split_heldout(load_alpaca(path), 3, seed=1)
    assert len(held) == 3 and len(train) == 7
    assert {record_id(r) for r in train}.isdisjoint(record_id(r) for r in held)
    assert split_heldout(ROWS, 3, seed=1) == (train, held)
    with pytest.raises(ValueError, match="cannot hold out"):
        split_heldout(ROWS, 10)


def test_config_file_and_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("distill:\n  data: a.json\n  limit: 5\ntrain:\n  handoffs: h.jsonl\n  lora_r: 4\n")
    d = load_config(cfg, "distill", {"limit": 7, "teacher": None})
    assert isinstance(d, DistillConfig) and d.limit == 7 and d.teacher == "hf:embedded"
    t = load_config(cfg, "train", {})
    assert isinstance(t, TrainConfig) and t.lora_r == 4
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nhandoffs = "h.jsonl"\nlora_r = 0\n')
    with pytest.raises(ConfigError, match="lora_r"):
        load_config(toml, "train", {})
    with pytest.raises(ConfigError, match="handoffs"):
        load_config(None, "train", {})


def _records_file(tmp_path: Path, teacher: CountingTeacher | None = None) -> Path:
    out = tmp_path / "h.jsonl"
    distill(
        [r for r in ROWS if "Name 3 " not in r["instruction"]],
        teacher or CountingTeacher(),
        out,
        progress=False,
        stages=FOUR,
    )
    return out


def test_training_lowers_the_target_loss_and_writes_a_loadable_stack(tmp_path, tiny_model_dir, tiny_engine):
    from safetensors import safe_open

    from langchain_fslm import FSLMChain

    handoffs = _records_file(tmp_path)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"train:\n  handoffs: {handoffs}\n  base: {tiny_model_dir}\n  out: {tmp_path / 'stack'}\n"
        "  max_steps: 6\n  learning_rate: 0.01\n  batch_size: 3\n  lora_r: 4\n  logging_steps: 1\n"
        "  save_steps: 3\n  max_length: 160\n  stage_steps: {intent: 2}\n"
    )
    result = CliRunner().invoke(app, ["train", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    stack = FSLMChain.from_pretrained(tmp_path / "stack", engine=tiny_engine)
    assert [s.name for s in stack.stages] == ["intent", "key_points", "draft", "answer"]
    assert all(s.adapter for s in stack.stages)
    log = json.loads((tmp_path / "stack" / "training_log.json").read_text())
    assert set(log["losses"]) == {"intent", "key_points", "draft", "answer"}
    assert len(log["losses"]["draft"]) == 6 and len(log["losses"]["intent"]) == 2  # stage_steps wins
    with safe_open(tmp_path / "stack" / "adapters" / "draft" / "adapter_model.safetensors", "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert any("lora_A" in k and s[0] == 4 for k, s in shapes.items())

    # the trained adapter gives the stage's targets a higher likelihood than the bare base model
    rec = read_records(handoffs)[0]
    for stage in stack.stages:
        pair = (tiny_engine.render(rec["stages"][stage.name]["prompt"]), rec["stages"][stage.name]["target"])
        (before, _, _), (after, _, _) = tiny_engine.loglikelihood(
            [pair, pair][:1], adapter=None
        ) + tiny_engine.loglikelihood([pair], adapter=stage.adapter)
        assert after > before, stage.name
    assert isinstance(stack.with_generation(None, max_new_tokens=3).invoke("Name 2 fruits."), str)


def _stats(output: str) -> dict:
    match = re.search(r'\{"written".*\}', output)
    assert match, output
    return json.loads(match.group(0))


def test_cli_distill_then_train_single_lora(tmp_path, tiny_model_dir, tiny_engine):
    from langchain_fslm import FSLMChain

    data = tmp_path / "d.json"
    data.write_text(json.dumps(ROWS))
    runner = CliRunner()
    args = [
        "distill",
        "--data",
        str(data),
        "--teacher",
        f"hf:{tiny_model_dir}",
        "--out",
        str(tmp_path / "h.jsonl"),
        "--heldout",
        "4",
        "--limit",
        "3",
        # enough for a random model to finish an intent and key points under their constraints
        "--max-new-tokens",
        "150",
    ]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert _stats(result.output)["skipped"] == 0
    result = runner.invoke(app, args)  # a rerun says the work was finished
    assert result.exit_code == 0 and "3 were already there" in result.stdout, result.output
    train = ["train", "--single", "--handoffs", str(tmp_path / "h.jsonl"), "--base", str(tiny_model_dir)]
    train += ["--out", str(tmp_path / "single"), "--max-steps", "1", "--group-by-length"]
    single_budget = "give the single LoRA its budget as max_steps"
    for bad, says in (("answer=1", single_budget), ("answer", "STAGE=STEPS")):
        result = runner.invoke(app, [*train, "--stage-steps", bad])
        assert result.exit_code == 2 and says in result.output, result.output
    result = runner.invoke(app, train)
    assert result.exit_code == 0, result.output
    assert (
        "loss first -> last" in result.stdout and "answer" in result.stdout and "reused" not in result.stdout
    )
    result = runner.invoke(app, train)  # nothing left to train: the summary says so
    assert result.exit_code == 0 and "nothing trained" in result.stdout, result.output
    single = FSLMChain.from_pretrained(tmp_path / "single", engine=tiny_engine)
    assert [s.name for s in single.stages] == ["answer"] and single.stages[0].prompt == "{input}"

    # the stack on another machine: its manifest's base folder is not there, --base says where it is
    manifest_file = tmp_path / "single" / "fslm_stack.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["base_model"]["source"] = str(tmp_path / "elsewhere")
    manifest_file.write_text(json.dumps(manifest))
    held = tmp_path / "out" / "held.json"
    args = ["heldout", "--stack", str(tmp_path / "single"), "--data", str(data), "--heldout", "2"]
    args += ["--limit", "1", "--max-new-tokens", "2", "--out", str(held)]
    assert runner.invoke(app, args).exit_code == 2
    result = runner.invoke(app, [*args, "--base", str(tiny_model_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(held.read_text()) == json.loads(result.stdout)
    result = runner.invoke(app, [*args, "--base", str(tiny_model_dir)])
    assert (
        "ROUGE-L" in result.stdout
        and "95% interval" in result.stdout
        and "rouge_l_per_record" not in result.stdout
    )

    result = runner.invoke(app, ["train", "--handoffs", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "not found" in result.output


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
import transformers
from langchain_fslm.training import TrainConfig, train_stack

kill_at = int(sys.argv[2])
original = transformers.Trainer.training_step
calls = []

def training_step(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # a real SIGKILL, mid-epoch, between checkpoints
    return original(self, *args, **kwargs)

transformers.Trainer.training_step = training_step
train_stack(TrainConfig.model_validate_json(Path(sys.argv[1]).read_text()), progress=False)
"""


def test_training_killed_with_sigkill_resumes_from_its_checkpoint(tmp_path, tiny_model_dir):
    import os
    import signal
    import subprocess
    import sys

    from safetensors.torch import load_file

    from langchain_fslm.training import train_stack

    handoffs = _records_file(tmp_path)

    def config(name: str) -> TrainConfig:
        return TrainConfig(
            handoffs=handoffs,
            base=str(tiny_model_dir),
            out=tmp_path / name,
            stages=["intent"],
            max_steps=12,
            save_steps=4,
            logging_steps=1,
            batch_size=2,
            learning_rate=0.01,
            max_length=128,
            lora_r=4,
        )

    whole = train_stack(config("whole"), progress=False)

    killed = config("killed")
    (tmp_path / "cfg.json").write_text(killed.model_dump_json())
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cfg.json"), "10"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    work = killed.resolved_work_dir() / "intent"
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert not (tmp_path / "killed").exists()  # no half-written stack

    resumed = train_stack(killed, progress=False)
    assert len(resumed.losses["intent"]) == len(whole.losses["intent"]) == 12
    assert resumed.losses["intent"][-1] == pytest.approx(whole.losses["intent"][-1], abs=0.05)
    a = load_file(tmp_path / "whole" / "adapters" / "intent" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "adapters" / "intent" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 0.05


def test_heldout_scores_answers_and_reference_likelihood(tiny_engine):
    from langchain_fslm.training.heldout import base_chain, evaluate_chain

    chain = base_chain(engine=tiny_engine).with_generation(max_new_tokens=3)
    result = evaluate_chain(chain, ROWS[:3], "base", batch_size=2, progress=False)
    assert result.n == 3 and result.failed == 0 and 0.0 <= result.rouge_l <= 1.0
    assert result.loglik_per_token < 0  # a random tiny model: far from certain of the reference
    assert len(result.samples) == 3 and result.samples[0]["reference"] == ROWS[0]["output"]
    per_record = [x for x in result.loglik_per_record if x is not None]
    assert len(result.rouge_l_per_record) == len(per_record) == 3
    assert abs(sum(per_record) / 3 - result.loglik_per_token) < 1e-9


def test_bf16_setting_wins_over_detection():
    from langchain_fslm.training.config import TrainConfig
    from langchain_fslm.training.finetune import use_bf16

    assert use_bf16(True) is True and use_bf16(False) is False
    assert isinstance(use_bf16(None), bool)
    assert TrainConfig(handoffs="h.jsonl", bf16=False).bf16 is False


def test_padding_free_batches_give_the_padded_loss(tiny_model_dir, tiny_engine, caplog):
    """One flattened row per batch (no padding computed) keeps records apart: the loss is unchanged."""
    import torch
    from transformers import AutoModelForCausalLM

    from langchain_fslm.training.lora_setup import PaddingCollator, encode_example, make_collator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()  # its own copy: use_cache changes
    rows = [
        encode_example(tiny_engine, f"Question {i}: " + "why? " * i, "Because. " * (5 - i), max_length=64)
        for i in range(1, 4)
    ]
    pad_id = tiny_engine.tokenizer.pad_token_id
    flat = make_collator(model, pad_id, padding_free=True)
    assert not isinstance(flat, PaddingCollator) and model.config.use_cache is False
    flat_batch = flat(rows)
    assert flat_batch["input_ids"].shape[0] == 1  # one row, no padding
    with torch.no_grad():
        padded_loss = model(**PaddingCollator(pad_id)(rows)).loss
        flat_loss = model(**flat_batch).loss
    assert torch.allclose(padded_loss, flat_loss, atol=1e-5)
    with torch.no_grad():  # without position ids restarting, records would see each other
        mixed = model(input_ids=flat_batch["input_ids"], labels=flat_batch["labels"]).loss
    assert not torch.allclose(padded_loss, mixed, atol=1e-5)

    class OtherModel:  # an architecture without transformers' packed-row masks
        config = model.config

    with caplog.at_level("WARNING"):
        assert isinstance(make_collator(OtherModel(), pad_id, padding_free=True), PaddingCollator)
    assert "padded batches instead" in caplog.text
    assert isinstance(make_collator(model, pad_id, padding_free=False), PaddingCollator)


def test_resume_skips_a_checkpoint_killed_while_saving_and_refuses_changed_settings(tmp_path):
    from langchain_fslm.training.checkpoints import (
        check_work_dir,
        last_complete_checkpoint,
        stage_fingerprint,
    )

    stage = tmp_path / "intent"
    (stage / "checkpoint-4").mkdir(parents=True)
    (stage / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (stage / "checkpoint-8").mkdir()  # killed after the adapter, before trainer_state.json
    (stage / "checkpoint-8" / "adapter_model.safetensors").write_bytes(b"x")
    assert last_complete_checkpoint(stage) == str(stage / "checkpoint-4")
    assert not (stage / "checkpoint-8").exists()

    pairs = [("p", "t")]
    config = TrainConfig(handoffs=tmp_path / "h.jsonl", lora_r=4)
    check_work_dir(stage, stage_fingerprint(config, "s", pairs, None), main=True)
    check_work_dir(stage, stage_fingerprint(config, "s", pairs, None), main=True)  # same run: fine
    with pytest.raises(InvalidInputError, match="lora_r"):
        changed = config.model_copy(update={"lora_r": 8})
        check_work_dir(stage, stage_fingerprint(changed, "s", pairs, None), main=True)
    with pytest.raises(InvalidInputError, match="training examples"):
        check_work_dir(stage, stage_fingerprint(config, "s", [("p", "other")], None), main=True)
    # another stage's step count leaves this stage's run resumable; its own count does not
    other = config.model_copy(update={"stage_steps": {"answer": 9}})
    check_work_dir(stage, stage_fingerprint(other, "s", pairs, None), main=True)
    with pytest.raises(InvalidInputError, match="max_steps"):
        own = config.model_copy(update={"stage_steps": {"s": 9}})
        check_work_dir(stage, stage_fingerprint(own, "s", pairs, None), main=True)


def test_bad_handoffs_and_config_sections_are_named(tmp_path):
    from langchain_fslm.training import train_stack

    alpaca = tmp_path / "d.json"
    alpaca.write_text(json.dumps(ROWS))  # an Alpaca file, not distilled records
    with pytest.raises(ValueError, match="record 1 is not a distilled record"):
        train_stack(TrainConfig(handoffs=alpaca))
    with pytest.raises(ValueError, match=r"stage_steps names stage\(s\) \['nope'\] not trained"):
        train_stack(TrainConfig(handoffs=_records_file(tmp_path), stage_steps={"nope": 1}))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"\[train\]: the section must be a mapping"):
        load_config(cfg, "train", {})


def test_identical_rows_are_records_of_their_own_and_resume_exactly(tmp_path):
    from langchain_fslm.training.data import record_ids

    rows = [ROWS[0], ROWS[2], dict(ROWS[0]), dict(ROWS[0])]  # issue 26, class 10: one id given three times
    ids = record_ids(rows)
    assert len(set(ids)) == 4 and ids[2] == f"{ids[0]}-2" and ids[3] == f"{ids[0]}-3"
    out = tmp_path / "h.jsonl"
    stats = distill(rows[:3], CountingTeacher(), out, progress=False)
    assert stats.written == 3  # before: the copy was skipped as if done, or written under the same id
    again = distill(rows, CountingTeacher(), out, progress=False)
    assert (again.skipped, again.written) == (3, 1)
    assert sorted(r["id"] for r in read_records(out)) == sorted(ids)


def test_heldout_answers_on_one_engine_and_scores_on_the_scorer(tiny_engine):
    """An engine that cannot score (llama.cpp) answers; the scorer's torch engine scores the references."""
    import dataclasses

    from langchain_fslm.engine.local import LocalEngine
    from langchain_fslm.errors import FSLMError
    from langchain_fslm.training.heldout import base_chain, evaluate_chain

    class AnswersOnly(LocalEngine):  # the same generations, and no log-likelihoods
        def __init__(self, inner: LocalEngine) -> None:
            self.__dict__.update(inner.__dict__)

        def capabilities(self):  # type: ignore[no-untyped-def]
            return dataclasses.replace(super().capabilities(), loglikelihood=False)

    plain = base_chain(engine=tiny_engine).with_generation(max_new_tokens=3)
    answering = base_chain(engine=AnswersOnly(tiny_engine)).with_generation(max_new_tokens=3)
    with pytest.raises(FSLMError, match="torch engine"):
        evaluate_chain(answering, ROWS[:2], "base", progress=False)
    split = evaluate_chain(answering, ROWS[:2], "base", progress=False, scorer=plain)
    whole = evaluate_chain(plain, ROWS[:2], "base", progress=False)
    assert split.rouge_l_per_record == whole.rouge_l_per_record
    assert split.loglik_per_record == pytest.approx(whole.loglik_per_record)
