"""Distillation: a teacher runs the stack's stage prompts in sequence and writes every stage's target.

Output: one JSON line per finished record::

    {"id": ..., "input": <request>, "reference": <Alpaca output>, "teacher": <spec>,
     "stages": {"intent": {"prompt": <rendered stage prompt>, "target": <text>}, ...}}

Records are appended and fsynced batch by batch; a rerun skips records already written (and records
already dropped, listed in ``<out>.dropped.jsonl`` with the stage and the parse error).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from langchain_core.exceptions import OutputParserException
from pydantic import BaseModel, Field

from langchain_fslm.errors import InvalidInputError
from langchain_fslm.manifest import StageSpec
from langchain_fslm.outputs import StageOutputParser, output_type_by_name
from langchain_fslm.training.data import record_ids, request_text
from langchain_fslm.training.hindsight import DERIVABLE, teacher_prompt
from langchain_fslm.training.hindsight import derive as derive_target
from langchain_fslm.training.teacher import Teacher, resolve_teacher


class DistillStats(BaseModel):
    """What a distillation run did.

    Attributes:
        written: Records written by this run.
        skipped: Records already finished (or dropped) by an earlier run.
        dropped: Per stage, records dropped by this run because the teacher's output did not parse.
    """

    written: int = 0
    skipped: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)


def dropped_path(out: Path) -> Path:
    """Where dropped record ids are listed."""
    return out.with_name(out.name + ".dropped.jsonl")


def _written(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; a torn last line (killed mid-write) is cut off first."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
        data = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def _open_output(out: Path, teacher: str, mode: str = "plain") -> set[str]:
    """Check ``out`` can be written and holds only this teacher's and mode's records; return the ids done.

    Raises:
        InvalidInputError: If ``out`` cannot be written, or an earlier run wrote it with another teacher
            or in another mode.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.open("a").close()  # fail before the teacher is called, not after its first batch
        records, dropped = _written(out), _written(dropped_path(out))
    except OSError as err:
        raise InvalidInputError(f"{out}: cannot write the distilled records ({err})") from None
    others = sorted({str(r.get("teacher")) for r in records} - {teacher})
    if others:
        raise InvalidInputError(
            f"{out} holds records written by teacher {', '.join(others)}; this run's teacher is "
            f"{teacher}. Use another --out (or delete the file) rather than mix two teachers' targets."
        )
    modes = sorted({str(r.get("mode", "plain")) for r in records} - {mode})
    if modes:
        raise InvalidInputError(
            f"{out} holds records distilled in {', '.join(modes)} mode; this run is in {mode} mode. Use "
            "another --out rather than mix targets written with and without the reference answer."
        )
    return {r["id"] for r in (*records, *dropped)}


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def distill(
    rows: Sequence[dict[str, Any]],
    teacher: Teacher | Any,
    out: str | Path,
    *,
    stages: Sequence[StageSpec] | None = None,
    batch_size: int = 8,
    final_target: Literal["reference", "teacher"] = "reference",
    max_new_tokens: int | None = None,
    progress: bool = True,
    mode: Literal["plain", "hindsight"] = "plain",
    derive: Sequence[str] = (),
) -> DistillStats:
    """Run the teacher over every stage for each row and append the records to ``out``.

    Args:
        rows: Alpaca rows (``instruction``, ``input``, ``output``).
        teacher: A :class:`Teacher`, a LangChain chat model/LLM, or a teacher spec string.
        out: JSON-lines output (appended; finished rows are skipped).
        stages: Stage specs (default: :func:`~langchain_fslm.roles.default_stage_specs`).
        batch_size: Rows per teacher call.
        final_target: ``reference`` (default): the last stage's target is the row's ``output``;
            ``teacher``: the teacher writes it too.
        max_new_tokens: Override the teacher's generation budget per stage.
        progress: Show a tqdm progress bar.
        mode: ``plain``: the teacher gets each stage's own prompt; ``hindsight``: a prompt that also shows
            the row's reference answer (:mod:`~langchain_fslm.training.hindsight`). The training prompt
            recorded is the stage's own in both. A file holds one mode.
        derive: Stages whose target is written from the reference without the teacher
            (:func:`~langchain_fslm.training.hindsight.derive`; the teacher writes those it cannot).

    Returns:
        Counts of written, skipped and dropped records.

    Raises:
        InvalidInputError: If ``out`` cannot be written or holds another teacher's records.
    """
    from tqdm.auto import tqdm

    from langchain_fslm.roles import default_stage_specs
    from langchain_fslm.stage import SLMRunnable

    specs = [s.with_budget(max_new_tokens) for s in stages or default_stage_specs()]
    runnables = [SLMRunnable.from_spec(s, engine=None) for s in specs]  # prompts only: no engine
    parsers = [StageOutputParser(output_type=output_type_by_name(s.output_type)) for s in specs]
    resolved = resolve_teacher(teacher)
    out = Path(out)
    unknown = sorted(set(derive) - set(DERIVABLE))
    if unknown:
        raise InvalidInputError(
            f"cannot derive stage(s) {unknown} from the reference; derivable: {DERIVABLE}"
        )
    done = _open_output(out, resolved.name, mode)
    todo = [(rid, r) for rid, r in zip(record_ids(rows), rows, strict=True) if rid not in done]
    stats = DistillStats(skipped=len(rows) - len(todo), dropped={s.name: 0 for s in specs})
    bar = tqdm(total=len(todo), desc=f"distill ({resolved.name})", unit="rec", disable=not progress)
    for start in range(0, len(todo), batch_size):
        ids = [rid for rid, _ in todo[start : start + batch_size]]
        batch = [r for _, r in todo[start : start + batch_size]]
        states: list[dict[str, Any]] = [{"input": request_text(r)} for r in batch]
        records: list[dict[str, Any] | None] = [
            {
                "id": rid,
                "input": s["input"],
                "reference": r["output"],
                "teacher": resolved.name,
                "mode": mode,
                "stages": {},
            }
            for rid, r, s in zip(ids, batch, states, strict=True)
        ]
        lost: list[dict[str, Any]] = []
        for k, (spec, runnable, parser) in enumerate(zip(specs, runnables, parsers, strict=True)):
            live = [i for i, rec in enumerate(records) if rec is not None]
            prompts = [runnable.render(states[i]) for i in live]
            if k == len(specs) - 1 and final_target == "reference":
                texts = [str(batch[i]["output"]) for i in live]
            else:
                texts = _teacher_texts(
                    resolved, spec, [states[i] for i in live], [batch[i] for i in live], prompts, mode, derive
                )
            for i, prompt, text in zip(live, prompts, texts, strict=True):
                record = records[i]
                assert record is not None
                try:
                    target = parser.parse(text).as_text()
                except OutputParserException as err:
                    stats.dropped[spec.name] += 1
                    lost.append({"id": record["id"], "stage": spec.name, "error": str(err), "raw": text})
                    records[i] = None
                    continue
                record["stages"][spec.name] = {"prompt": prompt, "target": target}
                states[i][spec.name] = target
        finished = [rec for rec in records if rec is not None]
        _append(out, finished)
        _append(dropped_path(out), lost)
        stats.written += len(finished)
        bar.update(len(batch))
    bar.close()
    return stats


def _teacher_texts(
    teacher: Teacher,
    spec: StageSpec,
    states: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    prompts: list[str],
    mode: str,
    derive: Sequence[str],
) -> list[str]:
    """One stage's targets for a batch.

    Derived from the reference where asked and possible, else the teacher's reply to the stage's prompt
    (plain mode) or to its hindsight prompt.
    """
    texts: list[str | None] = [
        derive_target(spec.name, str(r["output"])) if spec.name in derive else None for r in rows
    ]
    ask = [i for i, t in enumerate(texts) if t is None]
    if mode == "hindsight":
        asked = [teacher_prompt(spec, states[i], str(rows[i]["output"])) for i in ask]
    else:
        asked = [prompts[i] for i in ask]
    for i, text in zip(ask, teacher.write(spec, asked) if ask else [], strict=True):
        texts[i] = text
    return [t or "" for t in texts]


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read distilled records (a torn last line is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: handoffs file not found (run `fslm distill` first)")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
