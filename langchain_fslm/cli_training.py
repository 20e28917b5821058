"""The ``fslm distill``, ``fslm train`` and ``fslm heldout`` commands (thin: flags -> library)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from langchain_fslm.cli_errors import fail, interrupted
from langchain_fslm.files import write_text

ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", help="YAML/TOML config file; flags override its values.")
]


def distill(
    data: Annotated[Optional[Path], typer.Option(help="Alpaca JSON file.")] = None,
    teacher: Annotated[
        Optional[str],
        typer.Option(help="hf:embedded, hf:<model>, openai:<model>, ollama:<model>, module:attr"),
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output JSON-lines file (appended, resumable).")] = None,
    heldout: Annotated[
        Optional[int], typer.Option(help="Records held out (seeded), never distilled.")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the held-out split.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Distil at most this many training records.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Records per teacher batch.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Teacher budget per stage.")] = None,
    teacher_final: Annotated[
        Optional[bool],
        typer.Option("--teacher-final", help="Last stage learns the teacher's answer, not Alpaca's."),
    ] = None,
    config: ConfigOpt = None,
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
        )
    except FSLMError as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        raise interrupted("the records written so far are kept") from None
    typer.echo(json.dumps(stats.model_dump()))


def train(
    handoffs: Annotated[Optional[Path], typer.Option(help="Records from `fslm distill`.")] = None,
    base: Annotated[
        Optional[str], typer.Option(help="Base model (hub id, folder, .gguf, embedded:...).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Stack folder to write.")] = None,
    work_dir: Annotated[Optional[Path], typer.Option(help="Checkpoints (default <out>.work).")] = None,
    single: Annotated[bool, typer.Option(help="Train the single-LoRA baseline instead.")] = False,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps per adapter.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Epochs per adapter.")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Learning rate.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per step per device.")] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="LoRA rank.")] = None,
    target_modules: Annotated[Optional[str], typer.Option(help="Comma-separated LoRA targets.")] = None,
    save_steps: Annotated[Optional[int], typer.Option(help="Checkpoint every N steps.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Max tokens per example.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Training seed.")] = None,
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
) -> None:
    """Train one LoRA per stage (or one single LoRA) and write a stack folder; resumes if killed."""
    from langchain_fslm.errors import FSLMError
    from langchain_fslm.training.config import load_config
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
        typer.echo(json.dumps(result.model_dump(mode="json", exclude={"losses"})))


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
    out: Annotated[Optional[Path], typer.Option(help="Also write the result JSON here.")] = None,
) -> None:
    """Score a stack (or the base model) on the held-out Alpaca records: ROUGE-L and reference loglik."""
    from langchain_fslm.chain import FSLMChain
    from langchain_fslm.errors import FSLMError
    from langchain_fslm.models import shared_dir
    from langchain_fslm.training.data import load_alpaca, split_heldout
    from langchain_fslm.training.heldout import base_chain, evaluate_chain

    data = data or shared_dir() / "data" / "alpaca" / "alpaca_5000.json"
    try:
        _, rows = split_heldout(load_alpaca(data), n_heldout, seed)
        rows = rows[:limit] if limit else rows
        chain = FSLMChain.from_pretrained(stack, base_model=base) if stack else base_chain(base)
        if max_new_tokens:
            for s in chain.stages:
                chain = chain.with_generation(s.name, max_new_tokens=max_new_tokens)
        result = evaluate_chain(chain, rows, str(stack or "base"), batch_size=batch_size)
    except FSLMError as err:
        raise fail(str(err)) from None
    text = json.dumps(result.model_dump(), indent=2)
    if out:
        write_text(out, text + "\n")
    typer.echo(text)
