"""llama.cpp engine vs torch engine on the embedded default (SmolLM2-135M-Instruct, the shipped Q4_1 GGUF).

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/llamacpp.py [--tokens 64] [--stage-tokens 32] [--rounds 3]

Everything issue 24 asks for, in one run, greedy, four random LoRA adapters (r=8 on q/k/v/o, the size a
trained one has):

1. Resident memory of a four-stage stack (one base, four adapters, one invoke) on each engine, each in a
   fresh process, so neither engine's libraries count against the other; on llama.cpp also with one
   server slot (``n_parallel=1``: a quarter of the KV cache).
2. The Q4_1 weight-bandwidth bound: bytes of the GGUF's tensors read per decoded token, the machine's
   read bandwidth, and the rate that allows.
3. Batch-1 decode tokens/s (``--tokens``-token call minus 1-token call, so the prompt does not count) of the
   torch engine eager and with ``compile_decode``, of the llama.cpp engine with and without an adapter,
   and of bare xllamacpp (no engine around it, no adapter loaded); the median of ``--rounds`` rounds,
   each engine's calls as a block (torch's OpenMP threads spin after a call and slow llama.cpp's).
4. The four-stage stack on each engine: one invoke, 8 sequential invokes, ``batch(8)`` (best of two
   rounds), and whether the batch gives the sequential texts.

Prints a table, writes ``benchmarks/results/llamacpp.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, random_lora, report, rss_mib  # noqa: E402
from benchmarks.inference import PROMPTS, STAGES, bandwidth_gbs, specs  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROMPT = "Write a long story about a lighthouse keeper and a storm."


# ----------------------------------------------------------------------------- child processes
def child(kind: str, adapters: Path, stage_tokens: int) -> dict[str, Any]:
    """A four-stage stack on one engine, invoked once, in this fresh process: its resident memory."""
    from langchain_fslm import FSLMChain

    engine: Any = kind
    if kind == "llamacpp-1slot":  # the memory a user who needs no parallel requests can save
        from langchain_fslm.engine.llamacpp import LlamaCppEngine

        engine = LlamaCppEngine(n_parallel=1)
    stack = FSLMChain.from_specs(specs(stage_tokens), engine=engine, adapter_root=adapters)
    stack.invoke(PROMPTS[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rss_mib": rss_mib(), "peak_rss_mib": peak, "torch_imported": "torch" in sys.modules}


def run_child(kind: str, adapters: Path, stage_tokens: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--adapters", str(adapters)]
    cmd += ["--stage-tokens", str(stage_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"child {kind} failed:\n{proc.stderr[-3000:]}")


# ----------------------------------------------------------------------------- weights read per token
def gguf_bytes_per_token(path: Path) -> dict[str, Any]:
    """Bytes of the GGUF's tensors that one decoded token reads.

    Every weight matrix is read once per token; the token embedding only one row, unless the model has no
    ``output.weight`` (tied head, as SmolLM2): then the head reads the whole embedding matrix.
    """
    import gguf

    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    total = sum(int(t.n_bytes) for t in tensors.values())
    tied = "output.weight" not in tensors
    if not tied:  # the input embedding is a lookup of one row
        embd = tensors["token_embd.weight"]
        total -= int(embd.n_bytes) - int(embd.n_bytes) // int(embd.shape[-1])
    return {"bytes": total, "tied_head": tied, "file_bytes": path.stat().st_size}


# ----------------------------------------------------------------------------- decode rates
def differential(call: Any, tokens: int, rounds: int) -> dict[str, Any]:
    """Decode tokens/s: (``tokens``-token call - 1-token call) per extra token, medians over rounds."""
    long_runs = [call(tokens) for _ in range(rounds)]
    short_runs = [call(1) for _ in range(rounds)]
    t_long = statistics.median(w for w, _ in long_runs)
    t_short = statistics.median(w for w, _ in short_runs)
    n_long = statistics.median(n for _, n in long_runs)
    return {
        "tokens_per_s": (n_long - 1) / (t_long - t_short),
        "wall_64_s": t_long,  # the key of the stored result (--tokens 64)
        "wall_1_s": t_short,
        "tokens": n_long,
    }


def engine_call(engine: Any, adapter: str | None) -> Any:
    from langchain_fslm.engine.base import GenerationConfig, GenerationRequest

    def call(n: int) -> tuple[float, int]:
        cfg = GenerationConfig(max_new_tokens=n)
        req = GenerationRequest(prompt=PROMPT, adapter=adapter, config=cfg)
        start = time.perf_counter()
        out = engine.generate([req])
        return time.perf_counter() - start, out[0].completion_tokens

    return call


def bare_call(gguf_path: Path, threads: int, ids: list[int]) -> Any:
    """xllamacpp alone: a server with no adapter list and no engine around it."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path)
    params.n_ctx = 2048
    params.cache_ram_mib = 0
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.warmup = False
    params.verbosity = 0
    server = xllamacpp.Server(params)

    def call(n: int) -> tuple[float, int]:
        body = {"prompt": ids, "n_predict": n, "temperature": 0, "cache_prompt": False}
        start = time.perf_counter()
        reply = server.handle_completions(body)
        return time.perf_counter() - start, int(reply["usage"]["completion_tokens"])

    return call


# ----------------------------------------------------------------------------- the stack
def stack_times(stack: Any) -> dict[str, Any]:
    stack.invoke(PROMPTS[0])  # warm (llama.cpp: the server starts with its adapters)
    start = time.perf_counter()
    stack.invoke(PROMPTS[1])
    one = time.perf_counter() - start
    best_seq, best_batch, same = float("inf"), float("inf"), True
    for _ in range(2):
        start = time.perf_counter()
        sequential = [stack.invoke(p) for p in PROMPTS]
        best_seq = min(best_seq, time.perf_counter() - start)
        start = time.perf_counter()
        batched = stack.batch(PROMPTS)
        best_batch = min(best_batch, time.perf_counter() - start)
        same = same and batched == sequential
    return {
        "invoke_s": one,
        "sequential8_s": best_seq,
        "batch8_s": best_batch,
        "batch_speedup": best_seq / best_batch,
        "batch_equals_sequential": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens of the batch-1 decode calls")
    parser.add_argument("--stage-tokens", type=int, default=32, help="every stage's budget in the stack runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="both engines (default: one per core)")
    parser.add_argument("--child")
    parser.add_argument("--adapters")
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, Path(args.adapters), args.stage_tokens)))
        return

    import torch

    from langchain_fslm import FSLMChain
    from langchain_fslm.engine.llamacpp import LlamaCppEngine
    from langchain_fslm.engine.local import LocalEngine
    from langchain_fslm.models import embedded_default_gguf

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"machine": machine(), "tokens": args.tokens, "stage_tokens": args.stage_tokens}
    eager = LocalEngine.from_ref(None, batch_window_ms=None)
    adapters = Path(tempfile.mkdtemp(prefix="fslm-bench-llamacpp-"))
    for i, name in enumerate(STAGES):
        random_lora(eager.model, adapters / name, seed=i + 1, targets=TARGETS)

    # 1. memory, each stack in its own process
    for kind in ("torch", "llamacpp", "llamacpp-1slot"):
        out[f"memory_{kind}"] = run_child(kind, adapters, args.stage_tokens)
        print(f"memory {kind}: {out[f'memory_{kind}']}", flush=True)

    # 2. the bound
    gguf_path = embedded_default_gguf()
    out["weights"] = gguf_bytes_per_token(gguf_path)
    out["bandwidth_gbs"] = bandwidth_gbs()
    out["bound_tps"] = out["bandwidth_gbs"] * 1e9 / out["weights"]["bytes"]

    # 3. batch-1 decode
    compiled = LocalEngine.from_ref(None, batch_window_ms=None, compile_decode=True)
    llama = LlamaCppEngine(n_threads=args.threads)
    for engine in (eager, compiled, llama):
        engine.load_adapter("intent", adapters / "intent")
    calls = {
        "torch eager, adapter": engine_call(eager, "intent"),
        "torch compile_decode, adapter": engine_call(compiled, "intent"),
        "llama.cpp engine, adapter": engine_call(llama, "intent"),
        "llama.cpp engine, base": engine_call(llama, None),
    }
    start = time.perf_counter()
    calls["torch compile_decode, adapter"](args.tokens)  # compiles
    out["compile_first_call_s"] = time.perf_counter() - start
    for call in calls.values():
        call(args.tokens)  # warm
    ids = llama.token_ids(llama.render(PROMPT))
    calls["bare xllamacpp, base"] = bare_call(gguf_path, llama.n_threads, ids)
    calls["bare xllamacpp, base"](args.tokens)
    decode = {name: differential(call, args.tokens, args.rounds) for name, call in calls.items()}
    out["decode"] = decode
    for name, d in decode.items():
        print(f"{name}: {d['tokens_per_s']:.1f} tok/s", flush=True)
    del compiled

    # 4. the stack on each engine
    for kind, engine in (("llamacpp", llama), ("torch", eager)):
        stack = FSLMChain.from_specs(specs(args.stage_tokens), engine=engine, adapter_root=adapters)
        out[f"stack_{kind}"] = stack_times(stack)
        print(f"stack {kind}: {out[f'stack_{kind}']}", flush=True)
    llama.release()

    rate = {name: d["tokens_per_s"] for name, d in decode.items()}
    ll, bare = rate["llama.cpp engine, adapter"], rate["bare xllamacpp, base"]
    out["decode_vs_torch_eager"] = ll / rate["torch eager, adapter"]
    out["decode_vs_bare"] = ll / bare
    mib = out["weights"]["bytes"] / 2**20
    rows = [
        (f"RSS stack on {k} (MiB, peak)", f"{m['rss_mib']:.0f} ({m['peak_rss_mib']:.0f})", t)
        for k, m, t in (
            ("llama.cpp", out["memory_llamacpp"], "<= 350"),
            ("llama.cpp, n_parallel=1", out["memory_llamacpp-1slot"], ""),
            ("torch", out["memory_torch"], ""),
        )
    ]
    rows += [
        (
            "Q4_1 weights read per token (MiB)",
            f"{mib:.1f}",
            "tied head" if out["weights"]["tied_head"] else "",
        ),
        ("read bandwidth (GB/s)", f"{out['bandwidth_gbs']:.1f}", ""),
        ("weight-bandwidth bound (tok/s)", f"{out['bound_tps']:.0f}", ""),
    ]
    rows += [(f"decode tok/s: {name}", f"{r:.1f}", "") for name, r in rate.items()]
    rows += [
        ("llama.cpp engine / bound", f"{ll / out['bound_tps'] * 100:.0f}%", ""),
        ("llama.cpp w/ adapter / torch eager", f"{out['decode_vs_torch_eager']:.1f}x", ">= 4x"),
        ("llama.cpp w/ adapter / bare xllamacpp", f"{out['decode_vs_bare']:.2f}", ">= 0.9"),
        ("compile_decode first call (s)", f"{out['compile_first_call_s']:.1f}", ""),
    ]
    for kind in ("llamacpp", "torch"):
        s = out[f"stack_{kind}"]
        rows += [
            (f"stack on {kind}: 1 invoke (s)", f"{s['invoke_s']:.2f}", ""),
            (
                f"stack on {kind}: 8 sequential / batch(8) (s)",
                f"{s['sequential8_s']:.1f} / {s['batch8_s']:.1f}",
                "",
            ),
            (f"stack on {kind}: batch(8) speed-up", f"{s['batch_speedup']:.2f}x", ">= 3x"),
            (f"stack on {kind}: batch == sequential", str(s["batch_equals_sequential"]), "True"),
        ]
    speed = out["stack_torch"]["invoke_s"] / out["stack_llamacpp"]["invoke_s"]
    rows.append(("stack invoke: torch / llama.cpp", f"{speed:.1f}x", ""))
    report("llamacpp", rows, out)


if __name__ == "__main__":
    main()
