"""llama.cpp engine vs torch engine on the embedded default (SmolLM2-135M-Instruct, the shipped Q4_1 GGUF).

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/llamacpp.py [--tokens 64] [--rounds 3] [--threads N]

Measures in one run, same prompt, greedy: batch-1 tokens/s (generated tokens over the call's wall,
prompt included) and wall of the torch engine
(transformers, fp32 de-quantised, eager) and of the llama.cpp engine (xllamacpp, Q4_1 as in the file), each
without and with a LoRA adapter (random r=8 on q/k/v/o, the size a trained one has), next to bare
xllamacpp with no adapter loaded; then a batch of 4 stage requests with 4 different adapters on each
engine. The median of ``--rounds`` interleaved rounds (each engine's calls run as a block: torch's OpenMP
threads spin after a call and slow llama.cpp's). Prints a table, writes ``benchmarks/results/llamacpp.json``.
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

from benchmarks.common import machine, random_lora, report  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROMPT = "Write a long story about a lighthouse keeper and a storm."
STAGE_PROMPTS = [
    "Say what the user wants: Why is the sky blue?",
    "List the key points of: Why is the sky blue?",
    "Draft an answer: Why is the sky blue?",
    "Answer briefly: Why is the sky blue?",
]


def timed(engine: Any, requests: list[Any]) -> tuple[float, int]:
    start = time.perf_counter()
    out = engine.generate(requests)
    return time.perf_counter() - start, sum(g.completion_tokens for g in out)


def bare_xllamacpp(gguf: Path, threads: int) -> Any:
    """xllamacpp alone: a server with no adapter list and no engine around it."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.n_ctx = 2048
    params.cache_ram_mib = 0
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.warmup = False
    params.verbosity = 0
    return xllamacpp.Server(params)


def timed_bare(server: Any, ids: list[int], tokens: int) -> tuple[float, int]:
    body = {"prompt": ids, "n_predict": tokens, "temperature": 0, "cache_prompt": False}
    start = time.perf_counter()
    reply = server.handle_completions(body)
    return time.perf_counter() - start, int(reply["usage"]["completion_tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="both engines (default: one per core)")
    args = parser.parse_args()

    import torch

    from langchain_fslm.engine.base import GenerationConfig, GenerationRequest
    from langchain_fslm.engine.llamacpp import LlamaCppEngine
    from langchain_fslm.engine.local import LocalEngine
    from langchain_fslm.models import embedded_default_gguf

    if args.threads:
        torch.set_num_threads(args.threads)
    torch_engine = LocalEngine.from_ref(None, batch_window_ms=None)
    llama = LlamaCppEngine(n_threads=args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="fslm-bench-llamacpp-"))
    names = [f"s{i}" for i in range(4)]
    folders = [
        random_lora(torch_engine.model, tmp / n, seed=i + 1, targets=TARGETS) for i, n in enumerate(names)
    ]
    for name, folder in zip(names, folders, strict=True):
        torch_engine.load_adapter(name, folder)
        llama.load_adapter(name, folder)

    config = GenerationConfig(max_new_tokens=args.tokens)
    one = {ad: [GenerationRequest(prompt=PROMPT, adapter=ad, config=config)] for ad in (None, "s0")}
    batch = [
        GenerationRequest(prompt=p, adapter=n, config=config)
        for p, n in zip(STAGE_PROMPTS, names, strict=True)
    ]
    engines = {"torch": torch_engine, "llamacpp": llama}
    for engine in engines.values():  # warm up (llama.cpp starts its server with the 4 adapters here)
        engine.generate(one["s0"])
    ids = llama.token_ids(llama.render(PROMPT))
    bare = bare_xllamacpp(embedded_default_gguf(), llama.n_threads)
    timed_bare(bare, ids, args.tokens)
    runs: dict[str, list[tuple[float, int]]] = {}
    for _ in range(args.rounds):
        for kind, engine in engines.items():
            for ad, reqs in one.items():
                runs.setdefault(f"{kind} {'adapter' if ad else 'base'}", []).append(timed(engine, reqs))
            runs.setdefault(f"{kind} batch4", []).append(timed(engine, batch))
        runs.setdefault("bare xllamacpp base", []).append(timed_bare(bare, ids, args.tokens))

    out: dict[str, Any] = {"machine": machine(), "tokens": args.tokens, "rounds": args.rounds}
    out["llamacpp_threads"] = llama.n_threads
    rows: list[tuple[str, str, str]] = []
    for key, values in runs.items():
        wall = statistics.median(w for w, _ in values)
        rate = statistics.median(n / w for w, n in values)
        out[key.replace(" ", "_")] = {"wall_s": wall, "tokens_per_s": rate, "runs": values}
        rows.append((f"{key}: wall s / tokens/s", f"{wall:.2f} / {rate:.1f}", ""))
    bare_rate = out["bare_xllamacpp_base"]["tokens_per_s"]
    ratio = out["llamacpp_adapter"]["tokens_per_s"] / out["torch_adapter"]["tokens_per_s"]
    out["decode_ratio_with_adapter"] = ratio
    rows.append(("llama.cpp / torch decode, with adapter", f"{ratio:.1f}x", ">= 4x"))
    vs_bare = out["llamacpp_adapter"]["tokens_per_s"] / bare_rate
    out["llamacpp_adapter_vs_bare"] = vs_bare
    rows.append(("llama.cpp engine with adapter / bare xllamacpp", f"{vs_bare:.2f}", ">= 0.9"))
    batch_ratio = out["torch_batch4"]["wall_s"] / out["llamacpp_batch4"]["wall_s"]
    out["batch4_speedup"] = batch_ratio
    rows.append(("batch of 4 stages: torch wall / llama.cpp wall", f"{batch_ratio:.1f}x", ""))
    report("llamacpp", rows, out)
    llama.release()


if __name__ == "__main__":
    main()
