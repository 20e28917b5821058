"""Soak: 2,000 invocations of a small four-stage stack; resident memory and latency per 100 calls.

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/soak.py [--n 2000]

A tiny random GPT-NeoX (the unit tests' model, real Pythia tokenizer) with four LoRA adapters, one per
stage, so the run exercises the whole path (LCEL, parsing, handoff events, mixed adapters) quickly.
Pass: RSS after call 2,000 within 5% of RSS after call 100; latency does not drift: the median of the
per-100 medians over the last 500 calls within 25% of that over calls 101-600 (window medians, so a
burst of other jobs on a shared machine does not pass for drift).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, report, rss_mib  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from langchain_fslm import FSLMChain, GenerationConfig, HandoffLogger, StageSpec
    from langchain_fslm.engine.local import LocalEngine
    from tests.conftest import build_tiny_adapter, build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="fslm-soak-"))
    model_dir = build_tiny_model(tmp / "model")
    gen = GenerationConfig(max_new_tokens=6)
    specs = []
    for i, name in enumerate(["intent", "key_points", "draft", "answer"]):
        build_tiny_adapter(model_dir, tmp / "adapters" / name, seed=i + 1)
        prev = "{input}" if i == 0 else "{input} / {" + specs[-1].name + "}"
        specs.append(
            StageSpec(
                name=name,
                prompt=f"{name}: {prev}",
                adapter=f"adapters/{name}",
                generation=gen,
                parse_retries=0,
                on_parse_error="pass_raw",
            )
        )
    engine = LocalEngine.from_ref(str(model_dir))
    stack = FSLMChain.from_specs(specs, engine=engine, adapter_root=tmp)
    logger = HandoffLogger()  # keeps records in memory: cleared every window, like a log shipper
    rss, lat, cpu, windows, cpu_windows = [], [], [], [], []
    errors = 0
    for i in range(args.n):
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            stack.invoke(f"Request number {i}: say something about {i % 37}.", config={"callbacks": [logger]})
        except Exception as err:  # counted, never hidden
            errors += 1
            print(f"call {i}: {type(err).__name__}: {err}")
        lat.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        if (i + 1) % 100 == 0:
            logger.records.clear()
            gc.collect()
            rss.append(rss_mib())
            windows.append(statistics.median(lat[-100:]))
            cpu_windows.append(statistics.median(cpu[-100:]))
            print(
                f"{i + 1:5d} calls  rss {rss[-1]:7.1f} MiB  median latency {windows[-1] * 1000:6.1f} ms"
                f"  median CPU time {cpu_windows[-1] * 1000:6.1f} ms  load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    growth = rss[-1] / rss[0] - 1
    early = statistics.median(windows[1:6] or windows)
    late = statistics.median(windows[-5:])
    drift = late / early - 1
    cpu_early = statistics.median(cpu_windows[1:6] or cpu_windows)
    cpu_late = statistics.median(cpu_windows[-5:])
    cpu_drift = cpu_late / cpu_early - 1
    rows = [
        ("invocations", str(args.n), "2000"),
        ("errors", str(errors), "0"),
        ("RSS after call 100 (MiB)", f"{rss[0]:.1f}", ""),
        ("RSS after last call (MiB)", f"{rss[-1]:.1f}", ""),
        ("RSS growth after first 100", f"{growth * 100:+.2f}%", "< 5%"),
        ("latency, calls 101-600 (ms)", f"{early * 1000:.1f}", ""),
        ("latency, last 500 calls (ms)", f"{late * 1000:.1f}", ""),
        ("latency drift (wall)", f"{drift * 100:+.1f}%", "within +-25%"),
        ("CPU time per call, calls 101-600 (ms)", f"{cpu_early * 1000:.1f}", ""),
        ("CPU time per call, last 500 (ms)", f"{cpu_late * 1000:.1f}", ""),
        ("CPU-time drift", f"{cpu_drift * 100:+.1f}%", "within +-25%"),
    ]
    report(
        "soak",
        rows,
        {
            "machine": machine(),
            "n": args.n,
            "errors": errors,
            "rss_mib_per_100": rss,
            "median_latency_s_per_100": windows,
            "median_cpu_s_per_100": cpu_windows,
            "cpu_drift": cpu_drift,
            "torch_threads": args.threads,
            "rss_growth": growth,
            "latency_drift": drift,
        },
    )


if __name__ == "__main__":
    main()
