"""Reload soak: a long-running process loads a freshly trained stack again and again.

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/reload.py [--loads 30]

Each load copies one four-stage stack folder (the embedded SmolLM2-135M base, random r=8 LoRA adapters on
q_proj/v_proj, the size of trained ones) to a new folder, as a retrained stack would be, loads it with
``FSLMChain.from_pretrained``, answers one short request, and drops the stack: once keeping its
adapters (``keep``, what every load did before ``FSLMChain.release``), once calling ``stack.release()``
(``release``). Each mode runs in its own process, so their resident memory compares. Prints a table
and writes ``benchmarks/results/reload.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, random_lora, report, rss_mib  # noqa: E402
from benchmarks.inference import STAGES, TARGETS, specs  # noqa: E402


def child(mode: str, loads: int, root: Path) -> dict[str, Any]:
    """Load, invoke and drop the stack ``loads`` times; resident memory and adapters after each load."""
    from langchain_fslm import FSLMChain
    from langchain_fslm.engine.local import get_engine
    from langchain_fslm.models import BaseModelRef

    engine = get_engine(BaseModelRef())  # the base model, loaded before the first measurement
    rss, adapters, seconds = [], [], []
    for i in range(loads):
        folder = shutil.copytree(root / "stack", root / f"{mode}-{i}")
        start = time.perf_counter()
        stack = FSLMChain.from_pretrained(folder)
        seconds.append(time.perf_counter() - start)
        stack.invoke("Why is the sky blue?")
        if mode == "release":
            stack.release()
        del stack
        gc.collect()
        rss.append(rss_mib())
        adapters.append(len(engine.adapter_paths))
    return {"rss_mib": rss, "adapters_loaded": adapters, "load_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", type=int, default=30)
    parser.add_argument("--child", choices=["keep", "release"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.loads, args.root)))
        return

    from langchain_fslm import FSLMChain
    from langchain_fslm.engine.local import get_engine
    from langchain_fslm.models import BaseModelRef

    root = Path(tempfile.mkdtemp(prefix="fslm-reload-"))
    engine = get_engine(BaseModelRef())
    for i, name in enumerate(STAGES):
        random_lora(engine.model, root / "adapters" / name, seed=i, targets=TARGETS)
    FSLMChain.from_specs(specs(4), engine=engine, adapter_root=root / "adapters").save_pretrained(
        root / "stack"
    )
    adapter_mib = sum(f.stat().st_size for f in (root / "adapters").rglob("*.safetensors")) / 2**20

    results: dict[str, Any] = {}
    for mode in ("keep", "release"):
        command = [sys.executable, __file__, "--child", mode, "--loads", str(args.loads), "--root", str(root)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(root, ignore_errors=True)

    rows = [
        ("loads per mode", str(args.loads), ""),
        ("adapter files per load (MiB)", f"{adapter_mib:.1f}", ""),
    ]
    for mode, r in results.items():
        growth = (r["rss_mib"][-1] - r["rss_mib"][0]) / max(1, args.loads - 1)
        mid = (args.loads - 1) // 2
        times = [f"{r['load_s'][i]:.1f}" for i in (0, mid, -1)]
        rows += [
            (f"{mode}: adapters loaded after the last load", str(r["adapters_loaded"][-1]), ""),
            (
                f"{mode}: RSS after load 1 / {args.loads} (MiB)",
                f"{r['rss_mib'][0]:.0f} / {r['rss_mib'][-1]:.0f}",
                "",
            ),
            (f"{mode}: RSS growth per load (MiB)", f"{growth:+.1f}", "about 0 with release"),
            (f"{mode}: load time, load 1 / {mid + 1} / {args.loads} (s)", " / ".join(times), ""),
            (f"{mode}: median load time (s)", f"{statistics.median(r['load_s']):.2f}", ""),
        ]
    report("reload", rows, {"machine": machine(), "loads": args.loads, "adapter_mib": adapter_mib, **results})


if __name__ == "__main__":
    main()
