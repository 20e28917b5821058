"""Time the default four-stage stack on the local engine and on an OpenAI-compatible server.

Start a server first, e.g. ``python -m llama_cpp.server --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8000``,
then ``HF_HUB_OFFLINE=1 python benchmarks/remote_vs_local.py --url http://127.0.0.1:8000/v1 [--skip-local]``.
Greedy decoding; each figure is one run (no repeats), wall-clock seconds. Prints a table and writes
``benchmarks/results/remote_vs_local.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, report  # noqa: E402
from langchain_fslm import FSLMChain  # noqa: E402
from langchain_fslm.roles import four_stage_specs  # noqa: E402

PROMPTS = ["Why is the sky blue?", "How do I boil an egg?", "What does a CPU do?"]


def measure(stack: FSLMChain) -> dict[str, float | int]:
    start = time.perf_counter()
    outs = [stack.invoke(p) for p in PROMPTS]
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    batch = stack.batch(PROMPTS)
    batched = time.perf_counter() - start
    tokens = sum(o.usage["output_tokens"] for o in outs)
    return {
        "sequential_s": round(sequential, 2),
        "batch_s": round(batched, 2),
        "generated_tokens": tokens,
        "batch_generated_tokens": sum(o.usage["output_tokens"] for o in batch),
        "batch_equals_sequential": [b.output for b in batch] == [o.output for o in outs],
        "tokens_per_s_sequential": round(tokens / sequential, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()
    specs = four_stage_specs(args.max_new_tokens)
    results: dict = {
        "machine": machine(),
        "url": args.url,
        "load_avg_1m": os.getloadavg()[0],
        "prompts": len(PROMPTS),
        "max_new_tokens": args.max_new_tokens,
    }
    remote = FSLMChain.from_specs(
        specs, backend="remote", remote={"base_url": args.url}, include_handoffs=True
    )
    results["remote"] = measure(remote)
    if not args.skip_local:
        local = FSLMChain.from_specs(specs, include_handoffs=True)
        local.invoke("warm up")
        results["local"] = measure(local)
    rows = []
    for backend in ("remote", "local"):
        if backend not in results:
            continue
        r = results[backend]
        rows += [
            (f"{backend}: {len(PROMPTS)} prompts one by one (s)", f"{r['sequential_s']:.2f}", ""),
            (f"{backend}: the same as one batch (s)", f"{r['batch_s']:.2f}", ""),
            (
                f"{backend}: tokens generated (one by one, batch)",
                f"{r['generated_tokens']}, {r['batch_generated_tokens']}",
                "",
            ),
            (f"{backend}: batch outputs equal one-by-one", str(r["batch_equals_sequential"]), ""),
            (f"{backend}: tokens/s one by one", f"{r['tokens_per_s_sequential']:.1f}", ""),
        ]
    report("remote_vs_local", rows, results)


if __name__ == "__main__":
    main()
