"""Batch-1 decode with the step compiled ahead of time (AOTInductor): how much of the gap is Python.

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/aoti_step.py [--tokens 64] [--rounds 4]

An experiment, not an engine path. ``LocalEngine(compile_decode=True)`` runs each decode step
through dynamo's guards, inductor's Python wrapper and transformers' ``generate`` loop. Here the same
step (same scope: ``gemv_as_reduction``, ``decode_attention``, the engine's 512-token static cache) is
exported with ``torch.export`` and compiled by AOTInductor into a shared library with a C++ wrapper.
The weights are left out of the library and pointed at the model's own tensors
(``load_constants(user_managed=True)``: no second copy), the key/value cache is passed in as tensors
the step writes into, and a plain greedy loop in Python calls it (EOS suppressed, like
``min_new_tokens``). On the embedded SmolLM2-135M-Instruct (fp32), side by side in interleaved
rounds: compile_decode's ``generate``; the AOTInductor step in that loop; the AOTInductor step alone,
called repeatedly on one position (the step's own time, no loop); the step's matrix products alone
(``gemv.py``'s compiled reductions over the same weights, nothing else of the model: the step's time
if the rest of its kernels cost nothing); the bound from the median of bandwidth readings taken at
the start, before each round and at the end. Greedy outputs are compared with plain ``generate``.
The AOTInductor compile takes two to three minutes on two cores (reported). Writes
``benchmarks/results/aoti_step.json``.
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

from benchmarks.common import bandwidth_bound, interleaved_rounds, machine, param_bytes, report  # noqa: E402
from benchmarks.decode import generate_rate, timed_generate  # noqa: E402
from benchmarks.gemv import compiled_products, linear_weights  # noqa: E402
from benchmarks.inference import PROMPTS, bandwidth_gbs  # noqa: E402


def exportable_step(model: Any, cache: Any) -> Any:
    """One decode step of ``model`` as a module: (token, position, keys, values) -> next-token logits."""
    import torch

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, position: Any, keys: list[Any], values: list[Any]) -> Any:
            for layer, k, v in zip(cache.layers, keys, values, strict=True):
                layer.keys, layer.values = k, v
                # each layer advances its own counter in place: a shared tensor would move per layer
                layer.cumulative_length = position.clone()
            logits = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1).logits
            return logits[:, -1]

    return Step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    import torch
    from transformers import StaticCache

    from langchain_fslm.engine.compiled import CompiledDecode
    from langchain_fslm.models import BaseModelRef, load_base_model

    model, tokenizer = load_base_model(BaseModelRef())
    model.eval()
    n = args.tokens
    inputs = tokenizer(PROMPTS[1], return_tensors="pt")
    prompt = inputs["input_ids"]
    length = prompt.shape[1]
    eos = model.generation_config.eos_token_id
    eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos or []))
    out: dict[str, Any] = {"machine": machine(), "tokens": n}
    readings = [bandwidth_gbs()]

    decode = CompiledDecode()
    engine_kwargs = decode.generate_kwargs(length + n, model.config.max_position_embeddings)
    config = model.config
    cache = StaticCache(max_cache_len=engine_kwargs["max_cache_len"], config=config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache.early_initialization(1, config.num_key_value_heads, head_dim, model.dtype, model.device)
    keys = [layer.keys for layer in cache.layers]
    values = [layer.values for layer in cache.layers]
    step = exportable_step(model, cache)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, torch.no_grad(), decode.call(model, None):
        example = {"input_ids": prompt[:, :1], "position": torch.tensor(0), "keys": keys, "values": values}
        program = torch.export.export(step, args=(), kwargs=example, strict=False)
        package = torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(Path(folder) / "step.pt2"),
            inductor_configs={"aot_inductor.package_constants_in_so": False},
        )
        compiled = torch._inductor.aoti_load_package(package)
    out["aoti_compile_s"] = time.perf_counter() - start
    tensors = {
        **dict(step.named_parameters(remove_duplicate=False)),
        **dict(step.named_buffers(remove_duplicate=False)),
    }
    constants = {name: tensors[name] for name in compiled.get_constant_fqns()}
    compiled.load_constants(constants, check_full_update=True, user_managed=True)

    def run_step(token: Any, position: int) -> Any:
        return compiled.loader.boxed_run([token, torch.tensor(position), *keys, *values])[0]

    def aoti_decode() -> tuple[float, list[int]]:
        """Eager prefill, then ``n`` greedy tokens (``n - 1`` compiled steps): (tokens/s, tokens)."""
        with torch.inference_mode():
            # the export left its traced tensors in the cache object: point it at ours again, empty
            for layer, k, v in zip(cache.layers, keys, values, strict=True):
                layer.keys, layer.values, layer.cumulative_length = k, v, torch.tensor(0)
            logits = model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            tokens = [prompt[0].tolist()]
            start = time.perf_counter()
            for i in range(n):
                logits[:, eos_ids] = float("-inf")
                token = logits.argmax(-1, keepdim=True)
                tokens.append([int(token)])
                if i < n - 1:
                    logits = run_step(token, length + i)
            # n tokens chosen, n - 1 steps run (the first token comes from the prefill)
            return (n - 1) / (time.perf_counter() - start), sum(tokens, [])

    def step_alone(calls: int = 30) -> float:
        with torch.inference_mode():
            token = prompt[:, :1]
            start = time.perf_counter()
            for _ in range(calls):
                run_step(token, length)
            return calls / (time.perf_counter() - start)

    def compile_decode_rate() -> float:
        """compile_decode's decode tokens/s, measured as ``decode.py`` measures it."""
        with decode.call(model, None):
            return generate_rate(model, inputs, n, **engine_kwargs)

    # the products alone, compiled first: compiled_products resets dynamo, which would drop the
    # compile_decode graph compiled below
    weights = linear_weights(model)
    products = compiled_products(weights)
    rows_in = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    with torch.inference_mode():
        products(rows_in)

    def products_alone(calls: int = 30) -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(calls):
                products(rows_in)
            return calls / (time.perf_counter() - start)

    plain = timed_generate(model, inputs, n)[1][0].tolist()
    out["aoti_identical"] = aoti_decode()[1] == plain
    start = time.perf_counter()
    with decode.call(model, None):
        out["compile_decode_identical"] = (
            timed_generate(model, inputs, n, **engine_kwargs)[1][0].tolist() == plain
        )
    out["compile_decode_compile_s"] = time.perf_counter() - start

    variants = {
        "compile_decode": compile_decode_rate,
        "aoti_loop": lambda: aoti_decode()[0],
        "aoti_step": step_alone,
        "products": products_alone,
    }
    rounds = interleaved_rounds(out, variants, args.rounds, readings)
    readings.append(bandwidth_gbs())
    bandwidth_row = bandwidth_bound(out, readings, param_bytes(model))
    out["aoti_vs_compile_decode"] = statistics.median(
        a / c for a, c in zip(rounds["aoti_loop"], rounds["compile_decode"], strict=True)
    )
    out["step_vs_products"] = statistics.median(
        a / p for a, p in zip(rounds["aoti_step"], rounds["products"], strict=True)
    )

    def share(key: str) -> str:
        return f"{out[key]:.1f} ({out[key] / out['bound_tps']:.0%} of bound)"

    rows = [
        bandwidth_row,
        ("bandwidth bound, fp32 (tok/s)", f"{out['bound_tps']:.1f}", ""),
        (f"(median of {args.rounds} interleaved rounds)", "", ""),
        ("compile_decode, generate (tok/s)", share("compile_decode_tps"), ">= 80%"),
        ("AOTInductor step, greedy loop (tok/s)", share("aoti_loop_tps"), ">= 80%"),
        ("AOTInductor step alone, no loop (steps/s)", share("aoti_step_tps"), ""),
        ("its matrix products alone (runs/s)", share("products_tps"), ""),
        ("AOTInductor loop / compile_decode, per round", f"{out['aoti_vs_compile_decode']:.2f}x", ""),
        ("AOTInductor step alone / its products alone, per round", f"{out['step_vs_products']:.2f}x", ""),
        ("AOTInductor compile (s)", f"{out['aoti_compile_s']:.0f}", ""),
        ("AOTInductor == plain output", str(out["aoti_identical"]), "True"),
        ("compile_decode == plain output", str(out["compile_decode_identical"]), "True"),
    ]
    report("aoti_step", rows, out)


if __name__ == "__main__":
    main()
