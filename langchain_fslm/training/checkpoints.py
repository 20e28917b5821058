"""Checkpoints of a training run: what a stage's adapter depends on, and where a rerun resumes.

Each stage's work folder (``<work_dir>/<stage>``) holds a run file with the fingerprint of the run
(settings and a hash of the examples) and the Trainer's ``checkpoint-N`` folders. A rerun with the same
fingerprint resumes from the newest complete checkpoint; one with another fingerprint is refused, so
an adapter is never trained half with one setting and half with another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from langchain_fslm.errors import InvalidInputError
from langchain_fslm.files import write_text
from langchain_fslm.training.config import TrainConfig

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
NOT_FINGERPRINTED = frozenset({"out", "work_dir", "stages", "logging_steps", "save_steps", "max_new_tokens"})
"""Settings that do not change what a stage's adapter learns (everything else must match to resume)."""


def stage_fingerprint(
    config: TrainConfig, stage: str, examples: list[tuple[str, str]], system: str | None
) -> dict[str, Any]:
    """What a stage's adapter depends on: the training settings and a hash of its examples.

    The stage's own step count stands in for ``max_steps`` / ``stage_steps``, so another stage's
    step count does not invalidate this one (and runs without ``stage_steps`` keep their fingerprint).
    """
    settings = config.model_dump(mode="json", exclude=set(NOT_FINGERPRINTED) | {"handoffs", "stage_steps"})
    settings["max_steps"] = config.steps_for(stage)
    digest = hashlib.sha256(json.dumps([system, examples], ensure_ascii=False).encode()).hexdigest()
    return {"settings": settings, "examples_sha256": digest}


def check_work_dir(stage_dir: Path, fingerprint: dict[str, Any], main: bool) -> None:
    """Refuse to resume (or reuse) a stage trained with other settings or other examples."""
    run_file = stage_dir / RUN_FILE
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
        logger.warning("%s: a run without %s (older version?); resuming it unchecked", stage_dir, RUN_FILE)
    if main and not run_file.is_file():
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_file, json.dumps(fingerprint))


def last_complete_checkpoint(stage_dir: Path) -> str | None:
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


__all__ = ["NOT_FINGERPRINTED", "RUN_FILE", "check_work_dir", "last_complete_checkpoint", "stage_fingerprint"]
