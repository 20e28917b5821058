"""Compiled decoding (``LocalEngine(compile_decode=True)``) against the default engine and four pipelines.

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/compiled.py [--tokens 16] [--rounds 3]

Same set-up as ``inference.py`` (the embedded SmolLM2-135M-Instruct, four random LoRA adapters of a
trained one's size, the default four roles, greedy, no parse retries). In one process: the machine's
read bandwidth (read at the start, around the decode rates and before each round; the bound uses the
median, as the bandwidth moves within minutes on a shared host) and the batch-1 decode bound; the decode
rate of a stage on the default engine and on a second engine with ``compile_decode=True`` (after its
first, compiling call, which is timed on its own); then interleaved rounds of the same prompts through
four ``HuggingFacePipeline`` objects (one model copy each, adapter merged), the default stack and the
compiled stack, with the outputs compared. Writes ``benchmarks/results/compiled.json`` (the latest
run, whatever ``--tokens``; the JSON records ``tokens_per_stage``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bandwidth_bound, machine, param_bytes, random_lora, report  # noqa: E402
from benchmarks.inference import (  # noqa: E402
    PROMPTS,
    STAGES,
    TARGETS,
    bandwidth_gbs,
    decode_rate,
    naive_pipelines,
    run_naive,
    specs,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16, help="max_new_tokens of every stage")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from langchain_fslm import FSLMChain
    from langchain_fslm.engine.local import LocalEngine
    from langchain_fslm.models import BaseModelRef, load_base_model

    out: dict[str, Any] = {"machine": machine(), "tokens_per_stage": args.tokens}
    adapters = Path(tempfile.mkdtemp(prefix="fslm-bench-adapters-"))
    model, tokenizer = load_base_model(BaseModelRef())
    for i, name in enumerate(STAGES):
        random_lora(model, adapters / name, seed=i + 1, targets=TARGETS)
    eager = LocalEngine(model, tokenizer, base_ref=BaseModelRef())
    compiled = LocalEngine.from_ref(BaseModelRef(), compile_decode=True)
    stacks = {
        "default": FSLMChain.from_specs(specs(args.tokens), engine=eager, adapter_root=adapters),
        "compiled": FSLMChain.from_specs(specs(args.tokens), engine=compiled, adapter_root=adapters),
    }
    weight_bytes = param_bytes(model)
    readings = [bandwidth_gbs()]  # more around the decode rates and in each round; the bound uses the median

    start = time.perf_counter()
    stacks["compiled"].invoke(PROMPTS[0])
    out["first_compiled_invoke_s"] = time.perf_counter() - start
    print(f"first compiled invoke (compiles): {out['first_compiled_invoke_s']:.1f} s", flush=True)
    stacks["default"].invoke(PROMPTS[0])
    adapter = stacks["default"].stages[2].adapter
    readings.append(bandwidth_gbs())
    out["decode_tps_default"] = decode_rate(eager, adapter)
    out["decode_tps_compiled"] = decode_rate(compiled, adapter)
    readings.append(bandwidth_gbs())
    print(f"decode {out['decode_tps_default']:.1f} vs {out['decode_tps_compiled']:.1f} tok/s", flush=True)

    pipes = naive_pipelines(adapters)
    prompts = PROMPTS[:3]
    ways = {
        "pipelines": lambda p: run_naive(stacks["default"], pipes, p),
        "default": stacks["default"].invoke,
        "compiled": stacks["compiled"].invoke,
    }
    ways["pipelines"](prompts[0])  # warm
    times: dict[str, list[float]] = {name: [] for name in ways}
    texts: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        readings.append(bandwidth_gbs())
        for name, run in ways.items():
            start = time.perf_counter()
            texts[name] = [run(p) for p in prompts]
            times[name].append(time.perf_counter() - start)
    out["round_s"] = times
    out["median_s"] = {name: statistics.median(t) for name, t in times.items()}
    out["identical_to_pipelines"] = {
        name: sum(a == b for a, b in zip(texts[name], texts["pipelines"], strict=True)) for name in ways
    }
    out["compared"] = len(prompts)
    bandwidth_row = bandwidth_bound(out, readings, weight_bytes)

    median, bound = out["median_s"], out["bound_tps"]
    same = out["identical_to_pipelines"]
    rows = [
        bandwidth_row,
        ("batch-1 decode bound (tok/s)", f"{bound:.1f}", ""),
        ("stage decode, default engine (tok/s)", f"{out['decode_tps_default']:.1f}", ""),
        (
            "stage decode, compile_decode (tok/s)",
            f"{out['decode_tps_compiled']:.1f} ({out['decode_tps_compiled'] / bound:.0%} of bound)",
            ">= 80%",
        ),
        ("first compiled invoke, compiling (s)", f"{out['first_compiled_invoke_s']:.1f}", ""),
        (
            f"{len(prompts)} invokes, four pipelines, median of {args.rounds} (s)",
            f"{median['pipelines']:.2f}",
            "",
        ),
        (
            "  default stack (s, vs pipelines)",
            f"{median['default']:.2f} ({median['default'] / median['pipelines']:.2f}x)",
            "",
        ),
        (
            "  compile_decode stack (s, vs pipelines)",
            f"{median['compiled']:.2f} ({median['compiled'] / median['pipelines']:.2f}x)",
            "<= 0.9x",
        ),
        (
            "outputs identical to the pipelines' (default, compiled)",
            f"{same['default']}/{len(prompts)}, {same['compiled']}/{len(prompts)}",
            "all",
        ),
    ]
    report("compiled", rows, out)


if __name__ == "__main__":
    main()
