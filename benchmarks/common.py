"""Helpers shared by the benchmark scripts: adapters for a base, resident memory, tables and JSON."""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def rss_mib() -> float:
    """Resident memory of this process, MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def random_lora(model: Any, folder: Path, seed: int, targets: list[str], scale: float = 0.05) -> Path:
    """Save a LoRA adapter with random weights for ``model`` (a real adapter of realistic size).

    The model is wrapped and unwrapped again, so it is left as it was.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    peft_model.save_pretrained(folder, safe_serialization=True)
    peft_model.unload()
    return folder


def generate_calls(engine: Any) -> int:
    """How many ``generate`` calls the engine's micro-batcher has made (0 without one)."""
    return engine.batcher.calls if engine.batcher else 0


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures came from."""
    import torch

    from langchain_fslm.training.finetune import use_bf16

    return {
        "cpu": cpu_model(),
        "fast_bf16": use_bf16(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_at_start": os.getloadavg()[0],
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def param_bytes(model: Any) -> int:
    """Bytes of a model's parameters (a tied output head once): what batch-1 decode reads per token."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def bandwidth_bound(out: dict[str, Any], readings: list[float], weight_bytes: int) -> tuple[str, str, str]:
    """Record the run's bandwidth readings and the decode bound of their median in ``out``; its table row.

    The read bandwidth of a shared host moves within minutes, so scripts read it several times and
    take the median (``bandwidth_gbs``, ``bound_tps``: weights read once per token).
    """
    out["bandwidth_readings_gbs"] = readings
    out["bandwidth_gbs"] = statistics.median(readings)
    out["bound_tps"] = out["bandwidth_gbs"] * 1e9 / weight_bytes
    return (
        f"read bandwidth, median of {len(readings)} readings (GB/s)",
        f"{out['bandwidth_gbs']:.1f} ({min(readings):.1f}-{max(readings):.1f})",
        "",
    )


def report(name: str, rows: list[tuple[str, str, str]], data: dict[str, Any]) -> Path:
    """Print a table (what, measured, target) and write the JSON next to the other results."""
    width = max(len(r[0]) for r in rows)
    print(f"\n{name}")
    print(f"{'measure'.ljust(width)} | {'value':>22} | target")
    print(f"{'-' * width}-+-{'-' * 22}-+-------")
    for what, value, target in rows:
        print(f"{what.ljust(width)} | {value:>22} | {target}")
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    print(f"\nwrote {path}")
    return path


def bootstrap_ci(groups: list[list[float]], rounds: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean over groups of each group's mean.

    Each round resamples every group's values with replacement, within the group (items stay in their
    task). Pass per-record differences of two systems to get a paired interval of the difference.
    """
    rng = random.Random(seed)
    means = []
    for _ in range(rounds):
        per_group = [sum(g[rng.randrange(len(g))] for _ in g) / len(g) for g in groups]
        means.append(sum(per_group) / len(per_group))
    means.sort()
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]
