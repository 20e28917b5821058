"""Batch-1 decode against the bandwidth bound: where the time of one token goes, and what compiling buys.

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/decode.py [--tokens 64] [--rounds 5]

On the embedded SmolLM2-135M-Instruct (fp32), side by side in one run: the machine's read bandwidth (read
at the start, before each round below and at the end, since it moves within minutes on a shared host)
and the bound its median puts on batch-1 decoding (weights read once per token); plain ``model.generate``; the
same with a static KV cache; static cache plus ``torch.compile`` (transformers' ``CompileConfig``,
compile time reported separately); the same again with one-row matmuls compiled as inductor's own
reduction kernels (``gemv_as_reduction``); that plus the attention of each step as plain products over
the grouped key/value heads (``decode_attention``; the two together are what
``LocalEngine(compile_decode=True)`` runs, in ``CompiledDecode.call``; these two with the engine's
static cache size, timed in interleaved rounds, as they are close); and the time of a bare forward
pass of one token (no ``generate`` loop around it); then the same model with bf16 weights (half the
bytes per token). Prefill of a 300-token prompt is timed for fp32 and bf16. Greedy outputs of the
variants are compared. Writes ``benchmarks/results/decode.json``. ``gemv.py`` measures the matmul
kernels' own ceiling.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bandwidth_bound, interleaved_rounds, machine, param_bytes, report  # noqa: E402
from benchmarks.inference import PROMPTS, bandwidth_gbs  # noqa: E402


def timed_generate(model: Any, inputs: Any, tokens: int, **kwargs: Any) -> tuple[float, Any]:
    """Greedy ``generate`` of exactly ``tokens`` new tokens (EOS suppressed): (seconds, output ids)."""
    import torch

    with torch.inference_mode():
        start = time.perf_counter()
        greedy = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
        out = model.generate(**inputs, **greedy, **kwargs)
        return time.perf_counter() - start, out


def generate_rate(model: Any, inputs: Any, tokens: int, **kwargs: Any) -> float:
    """Decode tokens/s without the prefill: (n-token time - 1-token time) / (n - 1), best of 2."""
    t1 = min(timed_generate(model, inputs, 1, **kwargs)[0] for _ in range(2))
    tn = min(timed_generate(model, inputs, tokens, **kwargs)[0] for _ in range(2))
    return (tokens - 1) / (tn - t1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the last two variants")
    args = parser.parse_args()

    import torch
    from transformers import CompileConfig, DynamicCache

    from langchain_fslm.engine.compiled import CompiledDecode, gemv_as_reduction
    from langchain_fslm.models import BaseModelRef, load_base_model

    model, tokenizer = load_base_model(BaseModelRef())
    model.eval()
    ids = tokenizer(PROMPTS[1], return_tensors="pt")
    long_ids = tokenizer(" ".join(["The quick brown fox jumps over the lazy dog."] * 25), return_tensors="pt")
    n = args.tokens

    def generate(tokens: int, model: Any = model, inputs: Any = ids, **kwargs: Any) -> tuple[float, Any]:
        return timed_generate(model, inputs, tokens, **kwargs)

    def rate(model: Any = model, **kwargs: Any) -> float:
        return generate_rate(model, ids, n, **kwargs)

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
    readings = [bandwidth_gbs()]  # more in the rounds below and one at the end; the bound uses their median
    weight_bytes = param_bytes(model)
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
    # the same, with one-row matmuls compiled as inductor's own reductions (SDPA attention), and
    # what compile_decode runs: that plus decode_attention (the CompiledDecode.call scope); both with
    # the engine's static cache (512 tokens here), compiled once, then timed in interleaved rounds
    decode = CompiledDecode()
    engine_kwargs = decode.generate_kwargs(
        ids["input_ids"].shape[1] + n, model.config.max_position_embeddings
    )
    scopes = {"reduction": gemv_as_reduction, "packed": lambda: decode.call(model, None)}
    torch._dynamo.reset()  # dynamo keeps both graphs: they differ in the attention implementation
    for key, scope in scopes.items():
        with scope():
            start = time.perf_counter()
            generate(8, **engine_kwargs)
            out[f"{key}_compile_s"] = time.perf_counter() - start
            out[f"{key}_identical"] = bool(torch.equal(plain, generate(n, **engine_kwargs)[1]))

    def scoped_rate(key: str) -> float:
        with scopes[key]():
            return rate(**engine_kwargs)

    variants = {key: lambda key=key: scoped_rate(key) for key in scopes}
    rounds = interleaved_rounds(out, variants, args.rounds, readings)
    gains = [p / r for p, r in zip(rounds["packed"], rounds["reduction"], strict=True)]
    out["packed_vs_reduction"] = statistics.median(gains)
    own_bound = [
        tps * weight_bytes / (gbs * 1e9) for tps, gbs in zip(rounds["packed"], readings[1:], strict=True)
    ]
    out["packed_of_round_bound"] = statistics.median(own_bound)
    torch._dynamo.reset()
    readings.append(bandwidth_gbs())
    bandwidth_row = bandwidth_bound(out, readings, weight_bytes)
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
        bandwidth_row,
        ("bandwidth bound, fp32 (tok/s)", f"{out['bound_tps']:.1f}", ""),
        ("plain generate (tok/s)", share("plain_tps"), ">= 80%"),
        ("forward pass alone (tok/s)", share("forward_only_tps"), ""),
        ("static cache (tok/s)", share("static_tps"), ""),
        ("static + torch.compile (tok/s)", share("compiled_tps"), ""),
        ("torch.compile warm-up (s)", f"{out['compile_s']:.1f}", ""),
        ("compiled == plain output", str(out["identical"]), "True"),
        (f"(next two: engine's cache size, median of {args.rounds} interleaved rounds)", "", ""),
        ("static + compile, matmuls as reductions (tok/s)", share("reduction_tps"), ""),
        ("  its warm-up (s)", f"{out['reduction_compile_s']:.1f}", ""),
        ("  == plain output", str(out["reduction_identical"]), "True"),
        ("  + decode_attention: compile_decode (tok/s)", share("packed_tps"), ">= 80%"),
        ("  its warm-up (s)", f"{out['packed_compile_s']:.1f}", ""),
        ("  == plain output", str(out["packed_identical"]), "True"),
        ("  decode_attention / reductions alone, per round", f"{out['packed_vs_reduction']:.2f}x", ""),
        (
            "  compile_decode vs the bound of its own round, median",
            f"{out['packed_of_round_bound']:.0%}",
            ">= 80%",
        ),
        ("prefill, 300-token prompt (s)", f"{out['prefill_300_s']:.2f}", ""),
        ("bandwidth bound, bf16 weights (tok/s)", f"{out['bf16_bound_tps']:.1f}", ""),
        ("bf16 weights, plain generate (tok/s)", share("bf16_tps", "bf16_bound_tps"), ""),
        ("bf16 weights, prefill 300 tokens (s)", f"{out['bf16_prefill_300_s']:.2f}", ""),
        ("bf16 == fp32 output", str(out["bf16_identical"]), ""),
    ]
    report("decode", rows, out)


if __name__ == "__main__":
    main()
