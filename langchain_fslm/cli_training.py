"""The ``fslm distill``, ``fslm train`` and ``fslm heldout`` commands (thin: flags -> library)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from langchain_fslm.cli_errors import fail, interrupted
from langchain_fslm.cli_output import JsonOpt, finish, mean_interval, table
from langchain_fslm.files import write_text

ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", help="YAML/TOML config file; flags override its values.")
]


def _h(section: str, field: str, text: str) -> str:
    """Help text with the config's default (the flags default to None so a config file can set them)."""
    from langchain_fslm.training.config import DistillConfig, TrainConfig

    model = DistillConfig if section == "distill" else TrainConfig
    info = model.model_fields[field]
    if info.is_required():
        return f"{text} [required, here or in --config]"
    default = info.get_default(call_default_factory=True)
    return text if default is None or default == {} else f"{text} [default: {default}]"


def distill(
    data: Annotated[Optional[Path], typer.Option(help=_h("distill", "data", "Alpaca JSON file."))] = None,
    teacher: Annotated[
        Optional[str],
        typer.Option(
            help=_h(
                "distill", "teacher", "hf:embedded, hf:<model>, openai:<model>, ollama:<model>, module:attr"
            )
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(help=_h("distill", "out", "Output JSON-lines file (appended, resumable).")),
    ] = None,
    heldout: Annotated[
        Optional[int],
        typer.Option(help=_h("distill", "heldout", "Records held out (seeded), never distilled.")),
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(help=_h("distill", "seed", "Seed of the held-out split."))
    ] = None,
    limit: Annotated[
        Optional[int], typer.Option(help=_h("distill", "limit", "Distil at most this many training records."))
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(help=_h("distill", "batch_size", "Records per teacher batch."))
    ] = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option(help=_h("distill", "max_new_tokens", "Teacher budget per stage."))
    ] = None,
    teacher_final: Annotated[
        Optional[bool],
        typer.Option("--teacher-final", help="Last stage learns the teacher's answer, not Alpaca's."),
    ] = None,
    hindsight: Annotated[
        Optional[bool],
        typer.Option(
            "--hindsight",
            help="The teacher also sees each record's reference answer and writes the handoffs that lead "
            "to it (the trained stages still see only the request).",
        ),
    ] = None,
    derive: Annotated[
        Optional[list[str]],
        typer.Option(help="Stage written from the reference without the teacher (key_points); repeatable."),
    ] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, JsonOpt] = False,
) -> None:
    """Let a teacher write every stage's target for Alpaca records (JSON lines, resumable)."""
    from langchain_fslm.errors import FSLMError
    from langchain_fslm.training.config import load_config
    from langchain_fslm.training.data import load_alpaca, split_heldout
    from langchain_fslm.training.distill import distill as run_distill

    try:
        cfg = load_config(
            config,
            "distill",
            {
                "data": data,
                "teacher": teacher,
                "out": out,
                "heldout": heldout,
                "seed": seed,
                "limit": limit,
                "batch_size": batch_size,
                "max_new_tokens": max_new_tokens,
                "final_target": "teacher" if teacher_final else None,
                "mode": "hindsight" if hindsight else None,
                "derive": derive or None,
            },
        )
        train, _ = split_heldout(load_alpaca(cfg.data), cfg.heldout, cfg.seed)
        rows = train[: cfg.limit] if cfg.limit else train
        stats = run_distill(
            rows,
            cfg.teacher,
            cfg.out,
            batch_size=cfg.batch_size,
            final_target=cfg.final_target,
            max_new_tokens=cfg.max_new_tokens,
            mode=cfg.mode,
            derive=cfg.derive,
        )
    except FSLMError as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        raise interrupted("the records written so far are kept") from None
    finish(_distill_summary(stats, cfg.out), stats.model_dump(), as_json)


def train(
    handoffs: Annotated[
        Optional[Path], typer.Option(help=_h("train", "handoffs", "Records from `fslm distill`."))
    ] = None,
    base: Annotated[
        Optional[str],
        typer.Option(help=_h("train", "base", "Base model (hub id, folder, .gguf, embedded:...).")),
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help=_h("train", "out", "Stack folder to write."))] = None,
    work_dir: Annotated[
        Optional[Path], typer.Option(help=_h("train", "work_dir", "Checkpoints (default <out>.work)."))
    ] = None,
    single: Annotated[bool, typer.Option(help="Train the single-LoRA baseline instead.")] = False,
    max_steps: Annotated[
        Optional[int], typer.Option(help=_h("train", "max_steps", "Optimizer steps per adapter."))
    ] = None,
    stage_steps: Annotated[
        Optional[list[str]],
        typer.Option(help=_h("train", "stage_steps", "STAGE=STEPS, overriding --max-steps (repeatable).")),
    ] = None,
    epochs: Annotated[
        Optional[float], typer.Option(help=_h("train", "epochs", "Epochs per adapter."))
    ] = None,
    learning_rate: Annotated[
        Optional[float], typer.Option(help=_h("train", "learning_rate", "Learning rate."))
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(help=_h("train", "batch_size", "Examples per step per device."))
    ] = None,
    lora_r: Annotated[Optional[int], typer.Option(help=_h("train", "lora_r", "LoRA rank."))] = None,
    target_modules: Annotated[
        Optional[str], typer.Option(help=_h("train", "target_modules", "Comma-separated LoRA targets."))
    ] = None,
    save_steps: Annotated[
        Optional[int], typer.Option(help=_h("train", "save_steps", "Checkpoint every N steps."))
    ] = None,
    max_length: Annotated[
        Optional[int], typer.Option(help=_h("train", "max_length", "Max tokens per example."))
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help=_h("train", "seed", "Training seed."))] = None,
    bf16: Annotated[
        Optional[bool], typer.Option("--bf16/--fp32", help="bf16 autocast (default: where fast).")
    ] = None,
    group_by_length: Annotated[
        Optional[bool], typer.Option("--group-by-length", help="Batch records of similar length.")
    ] = None,
    padding_free: Annotated[
        Optional[bool],
        typer.Option("--padding-free/--padded", help="One flattened row per batch (default) or padding."),
    ] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, JsonOpt] = False,
) -> None:
    """Train one LoRA per stage (or one single LoRA) and write a stack folder; resumes if killed."""
    from langchain_fslm.errors import FSLMError
    from langchain_fslm.training.config import load_config, parse_stage_steps
    from langchain_fslm.training.finetune import train_single_lora, train_stack

    try:
        cfg = load_config(
            config,
            "train",
            {
                "handoffs": handoffs,
                "base": base,
                "out": out,
                "work_dir": work_dir,
                "max_steps": max_steps,
                "stage_steps": parse_stage_steps(stage_steps) if stage_steps else None,
                "epochs": epochs,
                "learning_rate": learning_rate,
                "batch_size": batch_size,
                "lora_r": lora_r,
                "save_steps": save_steps,
                "max_length": max_length,
                "seed": seed,
                "bf16": bf16,
                "group_by_length": group_by_length,
                "padding_free": padding_free,
                "target_modules": target_modules.split(",") if target_modules else None,
            },
        )
        result = train_single_lora(cfg) if single else train_stack(cfg)
    except FSLMError as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        raise interrupted("finished stages and the last checkpoint are kept") from None
    if result.stack is not None:
        finish(_train_summary(result), result.model_dump(mode="json", exclude={"losses"}), as_json)


def heldout(
    stack: Annotated[
        Optional[Path], typer.Option(help="Stack folder (omit for the bare base model, zero-shot).")
    ] = None,
    data: Annotated[
        Optional[Path], typer.Option(help="Alpaca JSON file (default: the shared alpaca_5000.json).")
    ] = None,
    base: Annotated[
        Optional[str],
        typer.Option(
            help="Base model to score when no --stack; with --stack, where its base model is on this "
            "machine (default: its manifest's)."
        ),
    ] = None,
    n_heldout: Annotated[
        int, typer.Option("--heldout", min=1, help="Held-out split size (as in distill).")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the split (as in distill).")] = 0,
    limit: Annotated[
        Optional[int], typer.Option(min=1, help="Score only the first N held-out records.")
    ] = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option(min=1, help="Override every stage's budget.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Records per batch.")] = 8,
    engine: Annotated[
        Optional[str],
        typer.Option(
            help="What writes the answers: torch, llamacpp or auto (llamacpp on a GGUF base). Default: "
            "the stack's manifest, else $FSLM_ENGINE, else auto. The reference likelihoods are always "
            "scored on torch."
        ),
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the full result JSON here.")] = None,
    as_json: Annotated[bool, JsonOpt] = False,
) -> None:
    """Score a stack (or the base model) on the held-out Alpaca records: ROUGE-L and reference loglik."""
    from langchain_fslm.chain import FSLMChain
    from langchain_fslm.engine.registry import ENGINE_CHOICES, capabilities_of
    from langchain_fslm.errors import FSLMError
    from langchain_fslm.models import shared_dir
    from langchain_fslm.training.data import load_alpaca, split_heldout
    from langchain_fslm.training.heldout import base_chain, evaluate_chain

    if engine is not None and engine not in ENGINE_CHOICES:
        raise fail(f"--engine must be one of {', '.join(ENGINE_CHOICES)}; got {engine!r}")
    data = data or shared_dir() / "data" / "alpaca" / "alpaca_5000.json"
    try:
        _, rows = split_heldout(load_alpaca(data), n_heldout, seed)
        rows = rows[:limit] if limit else rows

        def load(choice: str | None) -> Any:
            chain = (
                FSLMChain.from_pretrained(stack, base_model=base, engine=choice)  # type: ignore[arg-type]  # checked above
                if stack
                else base_chain(base, engine=choice)
            )
            for s in chain.stages if max_new_tokens else []:
                chain = chain.with_generation(s.name, max_new_tokens=max_new_tokens)
            return chain

        chain = load(engine)  # answers on the chosen engine (llama.cpp on a GGUF base by default) ...
        # ... and the reference likelihoods on torch, whatever answers
        scorer = None if capabilities_of(chain.stages[-1].engine).loglikelihood else load("torch")
        result = evaluate_chain(chain, rows, str(stack or "base"), batch_size=batch_size, scorer=scorer)
    except FSLMError as err:
        raise fail(str(err)) from None
    if out:
        write_text(out, json.dumps(result.model_dump(), indent=2) + "\n")
    summary = _heldout_summary(result) + (f"\nfull result (per record): {out}" if out else "")
    finish(summary, result.model_dump(), as_json)


def _distill_summary(stats: Any, out: Path) -> str:
    dropped = sum(stats.dropped.values())
    rows = [[stage, n] for stage, n in stats.dropped.items()]
    lines = [
        f"wrote {stats.written} record(s) to {out}"
        + (f"; {stats.skipped} were already there (finished by an earlier run)" if stats.skipped else ""),
    ]
    if dropped:
        lines += [
            f"dropped {dropped} record(s) whose teacher output did not validate:",
            table(["stage", "dropped"], rows),
        ]
    return "\n".join(lines)


def _train_summary(result: Any) -> str:
    rows = []
    for stage, losses in result.losses.items():
        loss = f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "-"
        note = "reused (finished earlier)" if stage in result.reused else ""
        rows.append(
            [stage, result.examples.get(stage, 0), loss, round(result.wall_s.get(stage, 0.0), 1), note]
        )
    head = f"wrote the stack {result.stack}"
    if result.reused and len(result.reused) == len(result.losses):
        head += " (every stage was finished by an earlier run with the same settings: nothing trained)"
    return head + "\n" + table(["stage", "examples", "loss first -> last", "wall s", ""], rows)


def _heldout_summary(result: Any) -> str:
    rouge, lo, hi = mean_interval(result.rouge_l_per_record)
    logliks = [v for v in result.loglik_per_record if v is not None]
    ll, ll_lo, ll_hi = mean_interval(logliks)
    rows = [
        ["ROUGE-L", rouge, f"[{lo:.3f}, {hi:.3f}]", result.n],
        ["loglik / token", ll, f"[{ll_lo:.3f}, {ll_hi:.3f}]", len(logliks)],
    ]
    failed = f"; {result.failed} record(s) failed (scored 0)" if result.failed else ""
    return f"{result.system} on {result.n} held-out record(s), {result.wall_s:.1f} s{failed}\n" + table(
        ["metric", "mean", "95% interval", "n"], rows
    )
