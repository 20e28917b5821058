"""LoRA training throughput: a plain fp32 Trainer run vs faster settings of the same run.

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/training.py [--steps 6] [--seq 256] [--batch 4]

Trainer + peft directly (the package's training module is not used, so this measures the settings,
not our code): LoRA r=8 on q_proj/v_proj of the embedded SmolLM2-135M base, Alpaca records from
``shared/data/alpaca``. Variants (``--variants``): fp32; bf16 autocast; bf16 autocast + length grouping;
fp32 + length grouping; fp32 or bf16 + padding-free (transformers' ``DataCollatorWithFlattening``: a batch's
records joined into one row, position ids restarting per record, which transformers turns into a
block-diagonal causal mask: the same loss as the padded batch, no padding computed). By default the
bf16 ones run only where the hardware runs bf16 fast (the ``fslm train`` auto setting): elsewhere CPU
bf16 is emulated and many times slower. Tokens/s counts real (non-padding) tokens. Prints a table,
writes ``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, report  # noqa: E402

VARIANTS = (
    "fp32",
    "bf16",
    "bf16+length-grouping",
    "fp32+length-grouping",
    "fp32+padding-free",
    "bf16+padding-free",
)


def records(n: int) -> list[str]:
    from langchain_fslm.models import shared_dir

    data = json.loads((shared_dir() / "data/alpaca/alpaca_5000.json").read_text())
    return [f"{r['instruction']}\n{r.get('input', '')}\n\n{r['output']}" for r in data[:n]]


def train(variant: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorWithFlattening,
        Trainer,
        TrainingArguments,
    )

    from langchain_fslm.models import BaseModelRef, load_base_model

    torch.manual_seed(0)
    model, tokenizer = load_base_model(BaseModelRef())
    tokenizer.padding_side = "right"
    model.config.use_cache = False  # training; also lets packed position ids select a block-diagonal mask
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=args.seq),
        batched=True,
        remove_columns=["text"],
    )
    real_tokens = sum(len(ids) for ids in dataset["input_ids"][: args.steps * args.batch])
    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="fslm-bench-train-"),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=2e-4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=variant.startswith("bf16"),
        train_sampling_strategy="group_by_length" if variant.endswith("length-grouping") else "random",
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollatorWithFlattening()
        if variant.endswith("padding-free")
        else DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "seconds": seconds,
        "step_s": seconds / args.steps,
        "tokens_per_s": real_tokens / seconds,
        "final_loss": losses[-1],
        "mean_loss": sum(losses) / len(losses),
        "train_loss": result.training_loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--variants", help="comma-separated, from: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    variants = args.variants.split(",") if args.variants else []
    if variants and ("fp32" not in variants or set(variants) - set(VARIANTS)):
        parser.error(f"--variants must include fp32 and name only: {', '.join(VARIANTS)}")
    texts = records(args.steps * args.batch)
    out: dict[str, Any] = {"machine": machine(), "settings": vars(args)}
    if not variants and out["machine"]["fast_bf16"]:
        variants = ["fp32", "bf16", "bf16+padding-free"]
    elif not variants:
        print("no fast bf16 on this machine (AVX512-BF16/AMX or a bf16 GPU): fp32 variants only")
        variants = ["fp32", "fp32+length-grouping", "fp32+padding-free"]
    for variant in variants:
        out[variant] = train(variant, texts, args)
        print(variant, out[variant], flush=True)
    base = out["fp32"]
    rows = []
    for variant in variants:
        r = out[variant]
        rows.append((f"{variant}: s/step", f"{r['step_s']:.2f}", ""))
        rows.append((f"{variant}: tokens/s", f"{r['tokens_per_s']:.0f}", ""))
        rows.append(
            (f"{variant}: speed-up vs fp32", f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x", ">= 1.6x")
        )
        rows.append((f"{variant}: mean loss", f"{r['mean_loss']:.4f}", f"fp32 {base['mean_loss']:.4f}"))
    report("training", rows, out)


if __name__ == "__main__":
    main()
