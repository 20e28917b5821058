"""Fine-tuning: one LoRA adapter per stage on one shared base model, with transformers' Trainer.

Each stage's examples are ``(stage prompt, target)`` pairs from distilled records. The prompt is
rendered exactly as :meth:`LocalEngine.render` renders it at inference (chat template included), the
target follows it and ends with the EOS token, and the loss covers the target tokens only. Checkpoints
go to ``<work_dir>/<stage>/checkpoint-*``; a rerun resumes from the last one and skips finished stages.
The result is a stack folder that :meth:`FSLMChain.from_pretrained` loads. Works under
``accelerate launch`` / ``torchrun`` (DDP): every rank trains, rank 0 writes.

This module is the training loop; the LoRA/Trainer setup is in :mod:`.lora_setup`, resuming and the
run fingerprint in :mod:`.checkpoints`, and the stack folder is written by :mod:`langchain_fslm.persistence`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from langchain_fslm.engine.base import GenerationConfig
from langchain_fslm.errors import InvalidInputError
from langchain_fslm.files import write_text
from langchain_fslm.manifest import StackManifest, StageSpec
from langchain_fslm.models import BaseModelRef
from langchain_fslm.persistence import save_stack, stage_adapter_path
from langchain_fslm.training.checkpoints import check_work_dir, last_complete_checkpoint, stage_fingerprint
from langchain_fslm.training.config import TrainConfig
from langchain_fslm.training.lora_setup import (
    LORA_TARGETS,
    encode_example,
    lora_targets,
    make_collator,
    use_bf16,
)

logger = logging.getLogger(__name__)

SINGLE_STAGE = StageSpec(
    name="answer",
    prompt="{input}",
    output_type="answer",
    generation=GenerationConfig(max_new_tokens=128, repetition_penalty=1.1),
)
"""The single-model baseline: one stage, instruction -> answer."""

TRAIN_LOG = "training_log.json"


class TrainResult(BaseModel):
    """What a training run produced.

    Attributes:
        stack: The stack folder written (None on non-main DDP ranks).
        losses: Per stage, the logged training losses in order.
        wall_s: Per stage, training wall time in seconds (of the run that finished the stage; a resumed
            stage counts only the resumed part).
        examples: Per stage, the number of training examples.
        reused: Stages whose adapter an earlier run had finished with the same settings and data: not
            trained again (their losses and wall time are that run's).
    """

    stack: Path | None = None
    losses: dict[str, list[float]] = Field(default_factory=dict)
    wall_s: dict[str, float] = Field(default_factory=dict)
    examples: dict[str, int] = Field(default_factory=dict)
    reused: list[str] = Field(default_factory=list)


def _train_adapter(
    stage: str, examples: list[tuple[str, str]], system: str | None, config: TrainConfig, progress: bool
) -> tuple[list[float], float, bool, bool]:
    """Train (or resume) one stage's adapter.

    Returns:
        Its losses, wall time, whether this is rank 0, and whether a finished adapter was reused.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import ProgressCallback

    from langchain_fslm.engine.local import LocalEngine

    work = config.resolved_work_dir()
    stage_dir = work / stage
    final = work / "adapters" / stage
    log_file = stage_dir / "loss.json"
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    main_rank = int(os.environ.get("RANK", "0")) == 0
    check_work_dir(stage_dir, stage_fingerprint(config, stage, examples, system), main_rank)
    if (final / "adapter_model.safetensors").is_file() and log_file.is_file():
        done = json.loads(log_file.read_text())
        return done["losses"], float(done.get("wall_s", 0.0)), True, True
    set_seed(config.seed)
    engine = LocalEngine.from_ref(BaseModelRef(source=config.base))
    encoded = [encode_example(engine, p, t, config.max_length, system) for p, t in examples]
    data = [d for d in encoded if any(label != -100 for label in d["labels"])]
    if not data:
        raise InvalidInputError(
            f"stage {stage!r}: no example has target tokens within max_length={config.max_length}"
        )
    cut = sum(d["labels"][-1] != engine.tokenizer.eos_token_id for d in data)
    if len(data) < len(encoded) or cut:
        logger.warning(
            "stage %r: max_length=%d drops %d of %d examples (prompt alone too long) and cuts the "
            "target of %d kept ones before its end (no EOS learnt); raise max_length",
            stage,
            config.max_length,
            len(encoded) - len(data),
            len(encoded),
            cut,
        )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_targets(engine.model, config.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(engine.model, lora)
    args = TrainingArguments(
        output_dir=str(stage_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.steps_for(stage) or -1,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[],
        remove_unused_columns=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        bf16=use_bf16(config.bf16),
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,  # CPU DDP
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,  # type: ignore[arg-type]
        data_collator=make_collator(engine.model, engine.tokenizer.pad_token_id, config.padding_free),
    )
    if progress:  # the Trainer's bar, named after the stage it trains (four anonymous bars otherwise)
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_named_progress(stage))
    last = last_complete_checkpoint(stage_dir)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - start
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    main = trainer.is_world_process_zero()
    if main:
        model.save_pretrained(str(final), safe_serialization=True)
        log = {"stage": stage, "losses": losses, "wall_s": wall, "log": trainer.state.log_history}
        write_text(log_file, json.dumps(log))  # written last: its presence marks the stage finished
    trainer.accelerator.wait_for_everyone()
    return losses, wall, main, False


def _named_progress(stage: str) -> Any:
    """The Trainer's progress bar, described with the stage's name (built here: transformers is heavy)."""
    from transformers.trainer_callback import ProgressCallback

    class StageProgress(ProgressCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description(f"train {stage}")

    return StageProgress()


def _train(
    specs: Sequence[StageSpec],
    examples: dict[str, list[tuple[str, str]]],
    config: TrainConfig,
    name: str,
    progress: bool,
) -> TrainResult:
    result = TrainResult()
    main = True
    for spec in specs:
        pairs = examples[spec.name]
        losses, wall, main, reused = _train_adapter(spec.name, pairs, spec.system, config, progress)
        if reused:
            result.reused.append(spec.name)
        result.losses[spec.name] = losses
        result.wall_s[spec.name] = wall
        result.examples[spec.name] = len(pairs)
    if not main:
        return result
    work = config.resolved_work_dir()
    manifest = StackManifest(
        name=name,
        base_model=BaseModelRef(source=config.base).absolute(),  # read from anywhere later
        stages=[s.model_copy(update={"adapter": stage_adapter_path(s.name)}) for s in specs],
        description=f"Trained by langchain-fslm from {config.handoffs}",
    )

    def copy_adapter(spec: StageSpec, target: Path) -> None:
        # the work folder keeps its adapters (a rerun reuses finished stages), so copy, not move
        shutil.copytree(work / "adapters" / spec.name, target)

    log = {"config": config.model_dump(mode="json"), **result.model_dump(mode="json", exclude={"stack"})}
    result.stack = save_stack(
        config.out, manifest, copy_adapter, extra_files={TRAIN_LOG: json.dumps(log, indent=2) + "\n"}
    )
    return result


def _records(config: TrainConfig) -> list[dict[str, Any]]:
    from langchain_fslm.training.distill import read_records

    records = read_records(config.handoffs)
    if not records:
        raise InvalidInputError(f"{config.handoffs}: no records")
    for n, r in enumerate(records, 1):
        stages = r.get("stages") if isinstance(r, dict) else None
        if (
            not isinstance(stages, dict)
            or not all(isinstance(v, dict) and {"prompt", "target"} <= set(v) for v in stages.values())
            or not isinstance(r.get("input"), str)
            or not isinstance(r.get("reference"), str)
        ):
            raise InvalidInputError(
                f"{config.handoffs}: record {n} is not a distilled record (needs 'input', 'reference' and "
                "'stages' with a 'prompt' and 'target' per stage; write the file with `fslm distill`)"
            )
    return records


def train_stack(
    config: TrainConfig, stages: Sequence[StageSpec] | None = None, progress: bool = True
) -> TrainResult:
    """Train one LoRA adapter per stage on the distilled records and write the stack folder.

    Args:
        config: Run settings (handoffs file, base model, output folder, LoRA and Trainer settings).
        stages: Stage specs written into the stack (default: the built-in layout of the records'
            stages); only stages present in the records (and in ``config.stages``, if set) are trained.
        progress: Show the Trainer's progress bars.

    Returns:
        The stack folder, per-stage losses and wall times.
    """
    from langchain_fslm.roles import specs_for

    records = _records(config)
    present = set(records[0]["stages"])
    specs = list(stages or specs_for(present, config.max_new_tokens))
    wanted = set(config.stages) if config.stages else present
    unknown = wanted - {s.name for s in specs}
    if unknown:
        raise InvalidInputError(f"unknown stage(s) {sorted(unknown)}; stack has {[s.name for s in specs]}")
    specs = [s for s in specs if s.name in wanted and s.name in present]
    if not specs:
        raise InvalidInputError(f"{config.handoffs}: records hold no stage of {sorted(wanted)}")
    stray = sorted(set(config.stage_steps) - {s.name for s in specs})
    if stray:  # a typo would otherwise train that stage with max_steps, silently
        trained = [s.name for s in specs]
        raise InvalidInputError(f"stage_steps names stage(s) {stray} not trained here ({trained})")
    missing = [(n, s.name) for n, r in enumerate(records, 1) for s in specs if s.name not in r["stages"]]
    if missing:
        n, name = missing[0]
        raise InvalidInputError(f"{config.handoffs}: record {n} has no stage {name!r} ({len(missing)} such)")
    examples = {
        s.name: [(r["stages"][s.name]["prompt"], r["stages"][s.name]["target"]) for r in records]
        for s in specs
    }
    return _train(specs, examples, config, "fslm-stack", progress)


def train_single_lora(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train the single-model baseline: one LoRA on request -> reference answer, same records.

    Returns:
        A one-stage stack (stage ``answer``, prompt ``{input}``).
    """
    if config.stage_steps:
        raise InvalidInputError(
            "stage_steps sets a stack's stages; give the single LoRA its budget as max_steps"
        )
    records = _records(config)
    examples = {"answer": [(r["input"], r["reference"]) for r in records]}
    return _train([SINGLE_STAGE], examples, config, "single-lora", progress)


__all__ = [
    "LORA_TARGETS",  # re-exported: imported from here before the LoRA setup had its own module
    "SINGLE_STAGE",
    "TRAIN_LOG",
    "TrainResult",
    "train_single_lora",
    "train_stack",
    "use_bf16",  # re-exported for the same reason (benchmarks/common.py)
]
