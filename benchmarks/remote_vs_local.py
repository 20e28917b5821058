"""Time the default four-stage stack on the local engine and on an OpenAI-compatible server.

Start a server first, e.g. ``python -m llama_cpp.server --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8000``,
then ``python benchmarks/remote_vs_local.py --url http://127.0.0.1:8000/v1``. Greedy decoding; each figure is
one run (no repeats), wall-clock seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from langchain_fslm import FSLMChain
from langchain_fslm.roles import default_stage_specs

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
    specs = default_stage_specs(args.max_new_tokens)
    results = {
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
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
