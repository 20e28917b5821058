"""Run settings for distillation and training, validated by pydantic, loadable from YAML or TOML.

A config file has a ``distill:`` and/or a ``train:`` section holding the same names as the CLI flags
(with underscores), e.g.::

    distill:
      data: ../shared/data/alpaca/alpaca_5000.json
      teacher: hf:embedded
      out: runs/handoffs.jsonl
      limit: 120
    train:
      handoffs: runs/handoffs.jsonl
      base: embedded:smollm2-135m-instruct
      out: runs/my-stack
      max_steps: 30
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from langchain_fslm.errors import FSLMError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the tomli backport has the same API
    import tomli as tomllib


class ConfigError(FSLMError, ValueError):
    """A config file is missing, unreadable or holds a wrong value."""


class DistillConfig(BaseModel):
    """Settings of one distillation run (see :func:`langchain_fslm.training.distill`).

    Attributes:
        data: Alpaca-format JSON file (``instruction``, ``input``, ``output``).
        teacher: Teacher spec (``hf:embedded``, ``hf:<folder>``, ``openai:<model>``,
            ``ollama:<model>``, ``module:attr``).
        out: JSON-lines file of records (appended to; finished records are skipped on rerun).
        heldout: Records held out for evaluation (never distilled).
        seed: Seed of the held-out split.
        limit: Distil at most this many of the training records (None: all).
        batch_size: Records per teacher ``batch`` call.
        max_new_tokens: Teacher generation budget per stage (None: the stage defaults).
        final_target: ``reference``: the last stage learns Alpaca's ``output``; ``teacher``: the teacher's.
        mode: ``plain`` or ``hindsight`` (the teacher also sees the reference answer; see
            :mod:`langchain_fslm.training.hindsight`).
        derive: Stages written from the reference without the teacher (``key_points``).
    """

    model_config = ConfigDict(extra="forbid")

    data: Path
    teacher: str = "hf:embedded"
    out: Path = Path("runs/handoffs.jsonl")
    heldout: int = Field(default=200, ge=0)
    seed: int = 0
    limit: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=8, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    final_target: Literal["reference", "teacher"] = "reference"
    mode: Literal["plain", "hindsight"] = "plain"
    derive: list[Literal["key_points"]] = Field(default_factory=list)


class TrainConfig(BaseModel):
    """Settings of one training run (see :func:`langchain_fslm.training.train_stack`).

    Attributes:
        handoffs: Distilled records (output of ``fslm distill``).
        base: Base model source (hub id, folder, ``.gguf``, ``embedded:smollm2-135m-instruct``).
        out: Stack folder to write.
        work_dir: Checkpoints and loss logs (default: ``<out>.work`` beside the stack).
        stages: Train only these stages (default: every stage in the records).
        target_modules: LoRA target modules (default: chosen by the base model's architecture).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling.
        lora_dropout: LoRA dropout.
        epochs: Passes over each stage's records (ignored when ``max_steps`` is set).
        max_steps: Optimizer steps per adapter (None: ``epochs`` decide).
        stage_steps: Optimizer steps of named stages, overriding ``max_steps`` for them (e.g.
            ``{"intent": 80, "answer": 240}``: the short upstream text needs fewer steps than the answer).
        learning_rate: Peak learning rate.
        batch_size: Examples per device per step.
        grad_accum: Gradient accumulation steps.
        max_length: Truncate prompt + target to this many tokens.
        save_steps: Checkpoint every this many steps (for resume).
        logging_steps: Log the loss every this many steps.
        seed: Training seed.
        max_new_tokens: Generation budget written into the stack's stages (None: role defaults).
        bf16: Train under bf16 autocast (weights stay float32). None: where the hardware runs bf16
            fast (a CUDA GPU with bf16, or a CPU with AVX512-BF16 / AMX), about 2x the fp32 speed on
            such CPUs at the same loss (see docs/performance.md).
        group_by_length: Batch records of similar length together (less padding; 1.17x on a CPU in
            docs/performance.md). Off by default: it changes which records share a step.
        padding_free: Join each batch's records into one row with restarting position ids, which
            transformers turns into a block-diagonal causal mask: the same loss as padded batches,
            no padding computed (see docs/performance.md). Falls back to padding, with a warning, for
            architectures without that support.
    """

    model_config = ConfigDict(extra="forbid")

    handoffs: Path
    base: str = "embedded:smollm2-135m-instruct"
    out: Path = Path("runs/my-stack")
    work_dir: Path | None = None
    stages: list[str] | None = None
    target_modules: list[str] | None = None
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    stage_steps: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    learning_rate: float = Field(default=2e-4, gt=0)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=512, ge=8)
    save_steps: int = Field(default=50, ge=1)
    logging_steps: int = Field(default=5, ge=1)
    seed: int = 0
    max_new_tokens: int | None = Field(default=None, ge=1)
    bf16: bool | None = None
    group_by_length: bool = False
    padding_free: bool = True

    def steps_for(self, stage: str) -> int | None:
        """The optimizer steps of ``stage``'s adapter (None: ``epochs`` decide)."""
        return self.stage_steps.get(stage, self.max_steps)

    def resolved_work_dir(self) -> Path:
        """Where checkpoints go."""
        return self.work_dir or self.out.with_name(self.out.name + ".work")


def parse_stage_steps(pairs: list[str]) -> dict[str, str]:
    """``["intent=80", "answer=240"]`` as a mapping (``TrainConfig`` validates the numbers).

    Raises:
        ConfigError: Naming the first pair not written ``STAGE=STEPS``.
    """
    bad = [p for p in pairs if p.count("=") != 1 or not all(p.split("="))]
    if bad:
        raise ConfigError(f"--stage-steps {bad[0]!r}: write STAGE=STEPS, e.g. --stage-steps answer=240")
    return dict(p.split("=") for p in pairs)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: use a .yaml, .yml, .toml or .json config file")
    except (ValueError, yaml.YAMLError) as err:  # TOMLDecodeError, JSONDecodeError are ValueErrors
        raise ConfigError(f"{path}: cannot parse ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with 'distill' and/or 'train'")
    unknown = sorted(set(data) - {"distill", "train"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; use 'distill' and/or 'train'")
    return data


def load_config(path: Path | None, section: Literal["distill", "train"], overrides: dict[str, Any]) -> Any:
    """Build a validated config from a file section plus flag overrides (flags win; None = unset).

    Raises:
        ConfigError: Naming the file (or flags) and the field, on a missing or wrong value.
    """
    cls: type[BaseModel] = DistillConfig if section == "distill" else TrainConfig
    raw = _read(path).get(section) if path else None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path} [{section}]: the section must be a mapping of field names to values")
    values: dict[str, Any] = dict(raw or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        where = str(path) if path else "flags"
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{where} [{section}]: {msgs}") from err
