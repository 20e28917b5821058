"""Batch-1 decode against the bandwidth bound: where the time of one token goes, and what compiling buys.

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/decode.py [--tokens 64]

On the embedded SmolLM2-135M-Instruct (fp32), side by side in one run: the machine's read bandwidth and
the bound it puts on batch-1 decoding (weights read once per token); plain ``model.generate``; the
same with a static KV cache; static cache plus ``torch.compile`` (transformers' ``CompileConfig``,
compile time reported separately); the same again with one-row matmuls compiled as inductor's own
reduction kernels (``gemv_as_reduction``: what ``LocalEngine(compile_decode=True)`` runs); and the
time of a bare forward pass of one token (no ``generate`` loop around it); then the same model with
bf16 weights (half the bytes per token). Prefill of a 300-token prompt is timed for fp32 and bf16.
Greedy outputs of the variants are compared. Writes ``benchmarks/results/decode.json``. ``gemv.py``
measures the matmul kernels' own ceiling.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, report  # noqa: E402
from benchmarks.inference import PROMPTS, bandwidth_gbs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    import torch
    from transformers import CompileConfig, DynamicCache

    from langchain_fslm.engine.compiled import gemv_as_reduction
    from langchain_fslm.models import BaseModelRef, load_base_model

    model, tokenizer = load_base_model(BaseModelRef())
    model.eval()
    ids = tokenizer(PROMPTS[1], return_tensors="pt")
    long_ids = tokenizer(" ".join(["The quick brown fox jumps over the lazy dog."] * 25), return_tensors="pt")
    n = args.tokens

    def generate(tokens: int, model: Any = model, inputs: Any = ids, **kwargs: Any) -> tuple[float, Any]:
        with torch.inference_mode():
            start = time.perf_counter()
            greedy = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
            out = model.generate(**inputs, **greedy, **kwargs)
            return time.perf_counter() - start, out

    def rate(model: Any = model, **kwargs: Any) -> float:
        """Decode tokens/s without the prefill: (n-token time - 1-token time) / (n - 1), best of 2."""
        t1 = min(generate(1, model, **kwargs)[0] for _ in range(2))
        tn = min(generate(n, model, **kwargs)[0] for _ in range(2))
        return (n - 1) / (tn - t1)

    def prefill_s(model: Any) -> float:
        """Time to the first token of a 300-token prompt, best of 2."""
        return min(generate(1, model, long_ids)[0] for _ in range(2))

    def forward_rate() -> float:
        """One-token forward passes on a warm cache, no generate loop: the model's own cost."""
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            model(**ids, past_key_values=cache, use_cache=True)
            token = ids["input_ids"][:, -1:]
            start = time.perf_counter()
            for _ in range(n):
                model(input_ids=token, past_key_values=cache, use_cache=True)
            return n / (time.perf_counter() - start)

    out: dict[str, Any] = {"machine": machine(), "tokens": n}
    out["bandwidth_gbs"] = bandwidth_gbs()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out["bound_tps"] = out["bandwidth_gbs"] * 1e9 / weight_bytes
    out["plain_tps"] = rate()
    out["forward_only_tps"] = forward_rate()
    out["static_tps"] = rate(cache_implementation="static")
    compile_config = CompileConfig(fullgraph=False, dynamic=False)
    compile_config._compile_all_devices = True  # transformers compiles on GPUs only unless told
    start = time.perf_counter()
    generate(8, cache_implementation="static", compile_config=compile_config)
    out["compile_s"] = time.perf_counter() - start
    out["compiled_tps"] = rate(cache_implementation="static", compile_config=compile_config)
    plain = generate(n)[1]
    compiled = generate(n, cache_implementation="static", compile_config=compile_config)[1]
    out["identical"] = bool(torch.equal(plain, compiled))
    del compiled
    # what compile_decode runs: the same, with one-row matmuls compiled as inductor's own reductions
    torch._dynamo.reset()
    with gemv_as_reduction():
        start = time.perf_counter()
        generate(8, cache_implementation="static", compile_config=compile_config)
        out["reduction_compile_s"] = time.perf_counter() - start
        out["reduction_tps"] = rate(cache_implementation="static", compile_config=compile_config)
        reduced = generate(n, cache_implementation="static", compile_config=compile_config)[1]
    out["reduction_identical"] = bool(torch.equal(plain, reduced))
    torch._dynamo.reset()
    out["bandwidth_after_gbs"] = bandwidth_gbs()
    out["prefill_300_s"] = prefill_s(model)

    # bf16 weights: half the bytes to read per token, but no native bf16 matmul on AVX2-only CPUs
    bf16_model, _ = load_base_model(BaseModelRef(dtype="bfloat16"))
    bf16_model.eval()
    out["bf16_tps"] = rate(bf16_model)
    out["bf16_prefill_300_s"] = prefill_s(bf16_model)
    out["bf16_identical"] = bool(torch.equal(plain, generate(n, bf16_model)[1]))

    out["bf16_bound_tps"] = 2 * out["bound_tps"]

    def share(key: str, bound: str = "bound_tps") -> str:
        return f"{out[key]:.1f} ({out[key] / out[bound]:.0%} of bound)"

    rows = [
        ("read bandwidth (GB/s)", f"{out['bandwidth_gbs']:.1f}", ""),
        ("bandwidth bound, fp32 (tok/s)", f"{out['bound_tps']:.1f}", ""),
        ("plain generate (tok/s)", share("plain_tps"), ">= 80%"),
        ("forward pass alone (tok/s)", share("forward_only_tps"), ""),
        ("static cache (tok/s)", share("static_tps"), ""),
        ("static + torch.compile (tok/s)", share("compiled_tps"), ""),
        ("torch.compile warm-up (s)", f"{out['compile_s']:.1f}", ""),
        ("compiled == plain output", str(out["identical"]), "True"),
        ("static + compile, matmuls as reductions (tok/s)", share("reduction_tps"), ">= 80%"),
        ("  its warm-up (s)", f"{out['reduction_compile_s']:.1f}", ""),
        ("  == plain output", str(out["reduction_identical"]), "True"),
        ("read bandwidth after the compiled runs (GB/s)", f"{out['bandwidth_after_gbs']:.1f}", ""),
        ("prefill, 300-token prompt (s)", f"{out['prefill_300_s']:.2f}", ""),
        ("bandwidth bound, bf16 weights (tok/s)", f"{out['bf16_bound_tps']:.1f}", ""),
        ("bf16 weights, plain generate (tok/s)", share("bf16_tps", "bf16_bound_tps"), ""),
        ("bf16 weights, prefill 300 tokens (s)", f"{out['bf16_prefill_300_s']:.2f}", ""),
        ("bf16 == fp32 output", str(out["bf16_identical"]), ""),
    ]
    report("decode", rows, out)


if __name__ == "__main__":
    main()
