"""Latency and tokens per request of each held-out system, one request at a time, in one process.

    HF_HUB_OFFLINE=1 python benchmarks/heldout_latency.py [--n 10] [--stack NAME=FOLDER ...]

The base model, the zero-shot default stack, the zero-shot four-stage layout (the default until 2026-12)
and every ``--stack`` (trained folders, e.g.
``single-lora=runs/hindsight/single-lora``) answer the first N held-out Alpaca requests (seed 0) with
``invoke``, one after another, on the default engine (llama.cpp on the embedded GGUF), greedy, the
shipped budgets. Per system: mean seconds per request, and prompt and generated tokens per request summed
over its stages (from the ``fslm_handoff`` events). The first request of each system is a warm-up, not
counted (the adapters' conversion and load). Run it on a quiet machine: it times wall clock.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, report  # noqa: E402


def measure(chain: Any, requests: list[str]) -> dict[str, float]:
    from langchain_core.callbacks import BaseCallbackHandler

    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.prompt = self.completion = 0

        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            if name == "fslm_handoff":
                self.prompt += int(data["prompt_tokens"])
                self.completion += int(data["completion_tokens"])

    chain.invoke(requests[0])  # warm-up
    counter, started = Tokens(), time.perf_counter()
    for request in requests[1:]:
        chain.invoke(request, config={"callbacks": [counter]})
    n = len(requests) - 1
    return {
        "s_per_request": (time.perf_counter() - started) / n,
        "prompt_tokens": counter.prompt / n,
        "generated_tokens": counter.completion / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="requests timed per system (plus one warm-up)")
    parser.add_argument("--stack", action="append", default=[], help="NAME=FOLDER of a trained stack")
    args = parser.parse_args()

    from langchain_fslm import FSLMChain
    from langchain_fslm.models import shared_dir
    from langchain_fslm.roles import four_stage_specs
    from langchain_fslm.training.data import load_alpaca, request_text, split_heldout
    from langchain_fslm.training.heldout import base_chain

    rows = split_heldout(load_alpaca(shared_dir() / "data" / "alpaca" / "alpaca_5000.json"), 200, 0)[1]
    requests = [request_text(r) for r in rows[: args.n + 1]]
    systems: dict[str, Any] = {
        "base": base_chain,
        "zero-shot": lambda: FSLMChain.default(trained=False),
        "zero-shot-four-stage": lambda: FSLMChain.from_specs(four_stage_specs()),  # the old default
    }
    for item in args.stack:
        name, _, folder = item.partition("=")
        systems[name] = lambda folder=folder: FSLMChain.from_pretrained(folder)
    results: dict[str, dict[str, float]] = {}
    rows_out: list[tuple[str, str, str]] = []
    for name, build in systems.items():
        chain = build()
        results[name] = measure(chain, requests)
        chain.release()
        r = results[name]
        rows_out.append(
            (
                name,
                f"{r['s_per_request']:.2f} s, {r['prompt_tokens']:.0f}+{r['generated_tokens']:.0f} tok",
                "",
            )
        )
    report("heldout_latency", rows_out, {"n": args.n, "machine": machine(), "systems": results})


if __name__ == "__main__":
    main()
