"""The matmul kernels' ceiling for batch-1 decode: how fast PyTorch reads the model's weights.

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/gemv.py

Batch-1 decoding multiplies one activation row by every weight matrix of the model, so it cannot be
faster than the time these matrix-vector products take on their own, with nothing else of the model
around them. This script runs exactly that, over the embedded SmolLM2-135M-Instruct's real weights (all
210 projection matrices plus the tied 49152x576 output head, about 540 MB in fp32, far more than the
CPU caches hold), and reports the bytes read per second against the machine's read bandwidth
(a ``sum`` over 512 MiB, as in ``inference.py``):

- fp32 as stored (``F.linear``, what transformers runs),
- fp32 stored input-major (``x @ W.T`` with ``W.T`` contiguous: the same products, another BLAS kernel),
- fp32 through oneDNN (``torch.ops.mkldnn._linear_pointwise``, the kernel ``torch.compile`` uses),
- bf16 and fp16 weights (``F.linear``; half the bytes),
- fp32 compiled by inductor as its own reduction kernels (``gemv_as_reduction``, what
  ``LocalEngine(compile_decode=True)`` runs; all products in one compiled function, compiled again for
  each thread count, since inductor fixes the thread count in the code it generates; one row only:
  the compiled path takes single-row calls, and ``batch()``'s eight rows stay BLAS matmuls),

each for one row (batch-1 decode) and eight rows (a ``batch()`` of 8), and for one row again on a single
thread, which shows whether a kernel uses the second core's bandwidth at all. The "ceiling" rows turn
the one-row time into tokens/s: the best any decode loop on these kernels could do. Writes
``benchmarks/results/gemv.json``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, report  # noqa: E402
from benchmarks.inference import bandwidth_gbs  # noqa: E402

if TYPE_CHECKING:
    import torch


def best_time(run: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``run`` after one warm-up call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def linear_weights(model: Any) -> list[torch.Tensor]:
    """The weight of every ``nn.Linear`` in ``model``, each storage once (a tied output head counts once)."""
    import torch

    weights = {
        m.weight.data_ptr(): m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)
    }
    return list(weights.values())


def compiled_products(weights: list[torch.Tensor]) -> Callable[[dict[int, torch.Tensor]], object]:
    """All one-row products in one function, compiled afresh with one-row matmuls as reductions."""
    import torch
    import torch.nn.functional as F

    from langchain_fslm.engine.compiled import gemv_as_reduction

    def products(x: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        return [F.linear(x[w.shape[1]], w) for w in weights]

    torch._dynamo.reset()
    compiled = torch.compile(products, dynamic=False)

    def run(x: dict[int, torch.Tensor]) -> object:
        with gemv_as_reduction():  # compiles on the first call
            return compiled(x)

    return run


def main() -> None:
    import torch
    import torch.nn.functional as F

    from langchain_fslm.models import BaseModelRef, load_base_model

    model, _ = load_base_model(BaseModelRef())
    stored = linear_weights(model)
    variants = {
        "fp32 as stored": [(w, "linear") for w in stored],
        "fp32 input-major": [(w.t().contiguous(), "input-major") for w in stored],
        "fp32 via oneDNN": [(w, "onednn") for w in stored],
        "bf16 weights": [(w.to(torch.bfloat16), "linear") for w in stored],
        "fp16 weights": [(w.to(torch.float16), "linear") for w in stored],
        "fp32 inductor reductions": [(w, "inductor") for w in stored],
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one_core_gbs = bandwidth_gbs()
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"machine": machine(), "bandwidth_gbs": bandwidth_gbs(), "matrices": len(stored)}
    fp32_bytes = sum(w.numel() * 4 for w in stored)
    out["bound_tps"] = out["bandwidth_gbs"] * 1e9 / fp32_bytes
    out["bandwidth_1_thread_gbs"] = one_core_gbs
    rows = [
        ("read bandwidth (GB/s)", f"{out['bandwidth_gbs']:.1f}", ""),
        ("read bandwidth, 1 thread (GB/s)", f"{one_core_gbs:.1f}", ""),
        ("bound, fp32 weights (tok/s)", f"{out['bound_tps']:.1f}", ""),
    ]
    with torch.inference_mode():
        for name, mats in variants.items():
            nbytes = sum(w.numel() * w.element_size() for w, _ in mats)
            for rows_in, n_threads in ((1, threads), (8, threads), (1, 1)):
                inductor = mats[0][1] == "inductor"
                if inductor and rows_in > 1:
                    continue
                torch.set_num_threads(n_threads)
                inputs = {n: torch.randn(rows_in, n, dtype=mats[0][0].dtype) for n in {576, 1536}}
                products = compiled_products([w for w, _ in mats]) if inductor else None

                def run(
                    mats: list[tuple[torch.Tensor, str]] = mats, x: Any = inputs, fn: Any = products
                ) -> None:
                    if fn is not None:
                        fn(x)
                        return
                    for w, kind in mats:
                        if kind == "input-major":
                            _ = x[w.shape[0]] @ w
                        elif kind == "onednn":  # the kernel inductor's CPU linear calls
                            _ = torch.ops.mkldnn._linear_pointwise(x[w.shape[1]], w, None, "none", [], "")
                        else:
                            _ = F.linear(x[w.shape[1]], w)

                seconds = best_time(run)
                torch.set_num_threads(threads)
                gbs = nbytes / seconds / 1e9
                key = f"{name}, {rows_in} row{'s' if rows_in > 1 else ''}"
                if n_threads != threads:
                    key += f", {n_threads} thread"
                of = gbs / (out["bandwidth_gbs"] if n_threads == threads else one_core_gbs)
                out[key] = {"seconds": seconds, "gbs": gbs, "of_bandwidth": of}
                rows.append((f"{key} (GB/s read)", f"{gbs:.1f} ({of:.0%})", ""))
                if rows_in == 1 and n_threads == threads:
                    ceiling = 1 / seconds
                    out[key]["ceiling_tps"] = ceiling
                    share = f"{ceiling:.1f} ({ceiling / out['bound_tps']:.0%} of fp32 bound)"
                    rows.append((f"  ceiling, {name} (tok/s)", share, ""))
    report("gemv", rows, out)


if __name__ == "__main__":
    main()
