"""Fine-tuning: one LoRA adapter per stage on one shared base model, with transformers' Trainer.

Each stage's examples are ``(stage prompt, target)`` pairs from distilled records. The prompt is
rendered exactly as :meth:`LocalEngine.render` renders it at inference (chat template included), the
target follows it and ends with the EOS token, and the loss covers the target tokens only. Checkpoints
go to ``<work_dir>/<stage>/checkpoint-*``; a rerun resumes from the last one and skips finished stages.
The result is a stack folder that :meth:`FSLMChain.from_pretrained` loads. Works under
``accelerate launch`` / ``torchrun`` (DDP): every rank trains, rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
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
from langchain_fslm.training.config import TrainConfig

LORA_TARGETS: dict[str, list[str]] = {
    "gpt_neox": ["query_key_value"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn"],
    "phi3": ["qkv_proj"],
}
"""LoRA target modules per ``config.model_type`` (override with ``TrainConfig.target_modules``)."""

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
    """

    stack: Path | None = None
    losses: dict[str, list[float]] = Field(default_factory=dict)
    wall_s: dict[str, float] = Field(default_factory=dict)
    examples: dict[str, int] = Field(default_factory=dict)


def use_bf16(setting: bool | None = None) -> bool:
    """Whether to train under bf16 autocast: the setting, or where the hardware runs bf16 fast."""
    if setting is not None:
        return setting
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def lora_targets(model: Any, override: Sequence[str] | None = None) -> list[str]:
    """The LoRA target modules for a model: ``override``, else by architecture.

    Raises:
        InvalidInputError: For an architecture without a default (pass ``target_modules``).
    """
    if override:
        return list(override)
    model_type = getattr(model.config, "model_type", "")
    if model_type not in LORA_TARGETS:
        raise InvalidInputError(
            f"no default LoRA targets for model type {model_type!r}; pass target_modules "
            f"(known: {sorted(LORA_TARGETS)})"
        )
    return LORA_TARGETS[model_type]


def encode_example(
    engine: Any, prompt: str, target: str, max_length: int, system: str | None = None
) -> dict[str, list[int]]:
    """Token ids and labels of one example; labels are -100 on the prompt (loss on the target only)."""
    tok = engine.tokenizer
    prompt_ids = tok(engine.render(prompt, system), add_special_tokens=False)["input_ids"]
    target_ids = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = (prompt_ids + target_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + target_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


class _Collator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids, labels, mask = [], [], []
        for r in rows:
            pad = width - len(r["input_ids"])
            ids.append(r["input_ids"] + [self.pad_id] * pad)
            labels.append(r["labels"] + [-100] * pad)
            mask.append([1] * len(r["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


def honours_packed_rows(model: Any) -> bool:
    """Whether the model's attention keeps records apart when a batch is flattened into one row.

    transformers' mask builder (``masking_utils.create_causal_mask``) turns position ids that restart
    at 0 into a block-diagonal causal mask; architectures whose modelling code builds masks another
    way would let one record attend to the previous one.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(base).__module__)
    return module is not None and hasattr(module, "create_causal_mask")


def make_collator(model: Any, pad_id: int, padding_free: bool) -> Any:
    """The training collator: padding-free (one flattened row per batch) where sound, else padding.

    Padding-free batches give the same loss as padded ones (no record sees another; tested) without
    computing padding tokens. The model must run without a KV cache (``use_cache=False``), which is
    what training does anyway.
    """
    from transformers import DataCollatorWithFlattening

    if padding_free and honours_packed_rows(model):
        model.config.use_cache = False
        return DataCollatorWithFlattening()
    if padding_free:
        logger.warning(
            "padding_free: %s builds its attention mask without transformers' packed-row support; "
            "training with padded batches instead",
            type(model).__name__,
        )
    return _Collator(pad_id)


_RUN_FILE = "run.json"
_NOT_FINGERPRINTED = frozenset({"out", "work_dir", "stages", "logging_steps", "save_steps", "max_new_tokens"})
"""Settings that do not change what a stage's adapter learns (everything else must match to resume)."""


def _fingerprint(config: TrainConfig, examples: list[tuple[str, str]], system: str | None) -> dict[str, Any]:
    """What a stage's adapter depends on: the training settings and a hash of its examples."""
    import hashlib

    settings = config.model_dump(mode="json", exclude=set(_NOT_FINGERPRINTED) | {"handoffs"})
    digest = hashlib.sha256(json.dumps([system, examples], ensure_ascii=False).encode()).hexdigest()
    return {"settings": settings, "examples_sha256": digest}


def _check_work_dir(stage_dir: Path, fingerprint: dict[str, Any], main: bool) -> None:
    """Refuse to resume (or reuse) a stage trained with other settings or other examples."""
    run_file = stage_dir / _RUN_FILE
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        if old != fingerprint:
            diff = sorted(
                k
                for k in set(old.get("settings", {})) | set(fingerprint["settings"])
                if old.get("settings", {}).get(k) != fingerprint["settings"].get(k)
            )
            if old.get("examples_sha256") != fingerprint["examples_sha256"]:
                diff.append("the training examples (handoffs file)")
            raise InvalidInputError(
                f"{stage_dir}: holds a run of this stage with other settings ({', '.join(diff)}); "
                "delete that folder or pass another --work-dir / --out to start afresh"
            )
    elif main and stage_dir.is_dir() and any(stage_dir.iterdir()):
        logger.warning("%s: a run without %s (older version?); resuming it unchecked", stage_dir, _RUN_FILE)
    if main and not run_file.is_file():
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_file, json.dumps(fingerprint))


def _last_complete_checkpoint(stage_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` that was written to the end (Trainer writes trainer_state.json last).

    A kill while the Trainer saves leaves a checkpoint folder without it; resuming from that folder
    would fail every rerun, so it is skipped (and removed).
    """
    if not stage_dir.is_dir():
        return None
    found = []
    for path in stage_dir.glob("checkpoint-*"):
        step = path.name.rpartition("-")[2]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        if (path / "trainer_state.json").is_file():
            return str(path)
        logger.warning("%s was not written completely (killed while saving?); removing it", path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def _train_adapter(
    stage: str, examples: list[tuple[str, str]], system: str | None, config: TrainConfig, progress: bool
) -> tuple[list[float], float, bool]:
    """Train (or resume) one stage's adapter; returns its losses, wall time and whether this is rank 0."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, set_seed

    from langchain_fslm.engine.local import LocalEngine

    work = config.resolved_work_dir()
    stage_dir = work / stage
    final = work / "adapters" / stage
    log_file = stage_dir / "loss.json"
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    _check_work_dir(stage_dir, _fingerprint(config, examples, system), int(os.environ.get("RANK", "0")) == 0)
    if (final / "adapter_model.safetensors").is_file() and log_file.is_file():
        done = json.loads(log_file.read_text())
        return done["losses"], float(done.get("wall_s", 0.0)), True
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
        max_steps=config.max_steps or -1,
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
    last = _last_complete_checkpoint(stage_dir)
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
    return losses, wall, main


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
        losses, wall, main = _train_adapter(spec.name, pairs, spec.system, config, progress)
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
        stages: Stage specs written into the stack (default: the four default roles); only stages
            present in the records (and in ``config.stages``, if set) are trained.
        progress: Show the Trainer's progress bars.

    Returns:
        The stack folder, per-stage losses and wall times.
    """
    from langchain_fslm.roles import default_stage_specs

    records = _records(config)
    specs = list(stages or default_stage_specs(config.max_new_tokens))
    present = set(records[0]["stages"])
    wanted = set(config.stages) if config.stages else present
    unknown = wanted - {s.name for s in specs}
    if unknown:
        raise InvalidInputError(f"unknown stage(s) {sorted(unknown)}; stack has {[s.name for s in specs]}")
    specs = [s for s in specs if s.name in wanted and s.name in present]
    if not specs:
        raise InvalidInputError(f"{config.handoffs}: records hold no stage of {sorted(wanted)}")
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
    records = _records(config)
    examples = {"answer": [(r["input"], r["reference"]) for r in records]}
    return _train([SINGLE_STAGE], examples, config, "single-lora", progress)
