"""Inference benchmark on the embedded default (SmolLM2-135M-Instruct): ours vs the honest alternatives.

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/inference.py [--tokens 16] [--skip-load]

Measures, side by side in one run: memory-bandwidth bound vs batch-1 decode; resident memory of the
base alone, of our four-stage stack (one base + four LoRA adapters) and of four HuggingFacePipeline
copies; batch(8) and 8 concurrent invokes vs 8 sequential invokes; the LangChain layers' share of
stack time; the stack vs the same four stages as four HuggingFacePipeline objects (outputs compared);
time-to-first-token of streaming; cold vs cached load of the GGUF default. Prints a table, writes
``benchmarks/results/inference.json``. Adapters are random LoRA weights (r=8 on q_proj/v_proj), the
size a trained one has.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import generate_calls, machine, param_bytes, random_lora, report, rss_mib  # noqa: E402

TARGETS = ["q_proj", "v_proj"]
STAGES = ["intent", "key_points", "draft", "answer"]
PROMPTS = [
    "Why is the sky blue?",
    "Give three tips for staying healthy.",
    "What is the capital of France?",
    "Explain what a CPU cache is.",
    "How do I boil an egg?",
    "Name two uses of copper.",
    "Why do cats purr?",
    "What is photosynthesis?",
]


def specs(tokens: int) -> list[Any]:
    from langchain_fslm.roles import four_stage_specs

    out = four_stage_specs(max_new_tokens=tokens)
    for spec in out:
        spec.adapter = spec.name
        spec.parse_retries = 0  # retries sample; keep every run greedy and comparable
        spec.on_parse_error = "pass_raw"
    return out


# ----------------------------------------------------------------------------- child processes
def child(kind: str, adapters: str, tokens: int) -> dict[str, Any]:
    """Run in a fresh process; returns what it measured."""
    from langchain_fslm.models import BaseModelRef, load_base_model

    if kind in ("load-cold", "load-cached"):
        start = time.perf_counter()
        import torch  # noqa: F401  (the libraries any process running a model imports anyway)
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

        imported = time.perf_counter()
        load_base_model(BaseModelRef())
        done = time.perf_counter()
        return {"seconds": done - imported, "import_s": imported - start, "total_s": done - start}
    from langchain_fslm import FSLMChain, GenerationConfig, GenerationRequest
    from langchain_fslm.engine.local import LocalEngine

    if kind == "memory-base":
        engine = LocalEngine.from_ref(BaseModelRef())
        engine.generate([GenerationRequest(prompt=PROMPTS[0], config=GenerationConfig(max_new_tokens=8))])
    elif kind == "memory-stack":
        engine = LocalEngine.from_ref(BaseModelRef())
        FSLMChain.from_specs(specs(8), engine=engine, adapter_root=adapters).invoke(PROMPTS[0])
    elif kind == "memory-pipelines":
        pipes = naive_pipelines(Path(adapters))
        for pipe in pipes:
            pipe.invoke("Hello", pipeline_kwargs={"max_new_tokens": 8})
    return {"rss_mib": rss_mib()}


def run_child(kind: str, adapters: Path, tokens: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--adapters", str(adapters), "--tokens", str(tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"child {kind} failed:\n{proc.stderr[-3000:]}")


# ----------------------------------------------------------------------------- the naive way
def naive_pipelines(adapters: Path) -> list[Any]:
    """Four HuggingFacePipeline objects, each its own base model copy with its stage's LoRA merged."""
    from langchain_huggingface import HuggingFacePipeline
    from peft import PeftModel
    from transformers import pipeline

    from langchain_fslm.models import BaseModelRef, load_base_model

    pipes = []
    for name in STAGES:
        model, tokenizer = load_base_model(BaseModelRef())
        model = PeftModel.from_pretrained(model, str(adapters / name)).merge_and_unload()
        pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
        pipes.append(HuggingFacePipeline(pipeline=pipe))
    return pipes


def run_naive(stack: Any, pipes: list[Any], prompt: str) -> str:
    """The stack's four stages, each through its own HuggingFacePipeline (same prompts, greedy)."""
    from langchain_fslm.engine.base import cut_at_stop

    engine = stack.stages[0].engine
    state: dict[str, Any] = {"input": prompt}
    text = ""
    for stage, pipe in zip(stack.stages, pipes, strict=True):
        rendered = engine.render(stage.render(state), stage.system)
        gen = stage.generation
        kwargs = {
            "max_new_tokens": gen.max_new_tokens,
            "do_sample": False,
            "repetition_penalty": gen.repetition_penalty,
            "return_full_text": False,
            "add_special_tokens": False,
        }
        if gen.stop:
            kwargs.update(stop_strings=gen.stop, tokenizer=pipe.pipeline.tokenizer)
        raw = pipe.invoke(rendered, pipeline_kwargs=kwargs).lstrip()
        raw, _ = cut_at_stop(raw, gen.stop)
        try:
            text = stage.parse(raw).as_text()
        except Exception:  # pass_raw, like the stack
            text = raw.strip()
        state[stage.name] = text
    return text


# ----------------------------------------------------------------------------- in-process figures
def bandwidth_gbs() -> float:
    """Read bandwidth of this machine: best of several full passes over a 512 MiB tensor."""
    import torch

    data = torch.ones(128 * 2**20, dtype=torch.float32)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best / 1e9


def decode_rate(engine: Any, adapter: str | None) -> float:
    """Batch-1 decode tokens/s of a stage: (64-token time - 1-token time) / 63 tokens."""
    from langchain_fslm import GenerationConfig, GenerationRequest

    def timed(n: int) -> tuple[float, int]:
        req = GenerationRequest(prompt=PROMPTS[1], adapter=adapter, config=GenerationConfig(max_new_tokens=n))
        best, tokens = float("inf"), 0
        for _ in range(2):
            start = time.perf_counter()
            tokens = engine.generate([req])[0].completion_tokens
            best = min(best, time.perf_counter() - start)
        return best, tokens

    t1, _ = timed(1)
    t64, n = timed(64)
    return (n - 1) / (t64 - t1)


def plain_decode_rate(tokens: int = 64) -> float:
    """The same measurement with plain ``model.generate`` on a bare model (no peft, no engine)."""
    import torch

    from langchain_fslm.models import BaseModelRef, load_base_model

    model, tok = load_base_model(BaseModelRef())
    ids = tok(PROMPTS[1], return_tensors="pt")

    def timed(n: int) -> float:
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            with torch.inference_mode():
                model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            best = min(best, time.perf_counter() - start)
        return best

    return (tokens - 1) / (timed(tokens) - timed(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16, help="max_new_tokens of every stage")
    parser.add_argument("--skip-load", action="store_true", help="skip the cold/cached load runs")
    parser.add_argument("--child")
    parser.add_argument("--adapters")
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.adapters, args.tokens)))
        return

    from langchain_fslm import FSLMChain
    from langchain_fslm.engine.local import LocalEngine
    from langchain_fslm.models import BaseModelRef, load_base_model

    info = machine()
    out: dict[str, Any] = {"machine": info, "tokens_per_stage": args.tokens}
    adapters = Path(tempfile.mkdtemp(prefix="fslm-bench-adapters-"))
    model, tokenizer = load_base_model(BaseModelRef())
    for i, name in enumerate(STAGES):
        random_lora(model, adapters / name, seed=i + 1, targets=TARGETS)
    engine = LocalEngine(model, tokenizer, base_ref=BaseModelRef())
    stack = FSLMChain.from_specs(specs(args.tokens), engine=engine, adapter_root=adapters)
    weight_bytes = param_bytes(model)

    # 1-2. memory (fresh processes) and bandwidth bound
    for kind in ("memory-base", "memory-stack", "memory-pipelines"):
        out[kind] = run_child(kind, adapters, args.tokens)["rss_mib"]
        print(f"{kind}: {out[kind]:.0f} MiB", flush=True)
    out["bandwidth_gbs"] = bandwidth_gbs()
    out["weight_bytes"] = weight_bytes
    out["bound_tps"] = out["bandwidth_gbs"] * 1e9 / weight_bytes
    out["decode_tps_stage"] = decode_rate(engine, stack.stages[2].adapter)
    out["decode_tps_plain"] = plain_decode_rate()
    print(f"bound {out['bound_tps']:.1f} tok/s, stage {out['decode_tps_stage']:.1f}", flush=True)

    # 3-4. batch vs sequential, LangChain share
    stack.invoke(PROMPTS[0])  # warm
    generate_time = [0.0]
    real_generate = engine.generate

    def timed_generate(requests: Any) -> Any:
        start = time.perf_counter()
        try:
            return real_generate(requests)
        finally:
            generate_time[0] += time.perf_counter() - start

    engine.generate = timed_generate  # type: ignore[method-assign]
    start = time.perf_counter()
    sequential = [stack.invoke(p) for p in PROMPTS]
    out["sequential_s"] = time.perf_counter() - start
    out["engine_share"] = generate_time[0] / out["sequential_s"]
    engine.generate = real_generate  # type: ignore[method-assign]
    start = time.perf_counter()
    batched = stack.batch(PROMPTS)
    out["batch_s"] = time.perf_counter() - start
    results: dict[int, str] = {}

    def call(i: int) -> None:
        results[i] = stack.invoke(PROMPTS[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS))]
    calls = generate_calls(engine)
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["concurrent_s"] = time.perf_counter() - start
    out["concurrent_generate_calls"] = generate_calls(engine) - calls
    out["batch_equals_sequential"] = batched == sequential
    out["concurrent_equals_sequential"] = [results[i] for i in range(len(PROMPTS))] == sequential
    print(f"sequential {out['sequential_s']:.1f}s batch {out['batch_s']:.1f}s", flush=True)

    # 5. vs four HuggingFacePipeline stages
    pipes = naive_pipelines(adapters)
    n_cmp = 3
    run_naive(stack, pipes, PROMPTS[0])  # warm
    start = time.perf_counter()
    naive = [run_naive(stack, pipes, p) for p in PROMPTS[:n_cmp]]
    out["naive_s"] = time.perf_counter() - start
    start = time.perf_counter()
    ours = [stack.invoke(p) for p in PROMPTS[:n_cmp]]
    out["ours_s"] = time.perf_counter() - start
    out["naive_identical"] = sum(a == b for a, b in zip(naive, ours, strict=True))
    out["naive_compared"] = n_cmp
    del pipes

    # 7. streaming: first token of the answer vs the moment the last stage starts generating
    real_stream = engine.stream
    started: list[float] = []

    def marked_stream(request: Any) -> Any:
        started.append(time.perf_counter())
        return real_stream(request)

    engine.stream = marked_stream  # type: ignore[method-assign]
    start = time.perf_counter()
    first = None
    for _ in stack.stream(PROMPTS[2]):
        first = first or time.perf_counter()
    engine.stream = real_stream  # type: ignore[method-assign]
    out["ttft_s"] = (first or start) - start
    out["ttft_after_last_stage_start_s"] = (first or start) - started[0]

    # 8. cold vs cached load of the GGUF default (fresh processes, empty cache first)
    if not args.skip_load:
        cache = tempfile.mkdtemp(prefix="fslm-bench-cache-")
        cold = run_child("load-cold", adapters, 0, {"FSLM_CACHE_DIR": cache})
        cached = run_child("load-cached", adapters, 0, {"FSLM_CACHE_DIR": cache})
        out["load_cold_s"], out["load_cached_s"] = cold["seconds"], cached["seconds"]
        out["import_s"], out["load_cached_total_s"] = cached["import_s"], cached["total_s"]

    base = out["memory-base"]
    rows = [
        ("RSS base alone (MiB)", f"{base:.0f}", ""),
        ("RSS stack, 1 base + 4 LoRA (MiB)", f"{out['memory-stack']:.0f}", ""),
        ("RSS 4 HuggingFacePipeline copies (MiB)", f"{out['memory-pipelines']:.0f}", ""),
        ("stack / base", f"{out['memory-stack'] / base:.3f}x", "<= 1.15x"),
        ("4 pipelines / base", f"{out['memory-pipelines'] / base:.2f}x", "(about 3x)"),
        ("read bandwidth (GB/s)", f"{out['bandwidth_gbs']:.1f}", ""),
        ("bandwidth bound, fp32 (tok/s)", f"{out['bound_tps']:.1f}", ""),
        ("batch-1 decode, stage w/ adapter (tok/s)", f"{out['decode_tps_stage']:.1f}", ""),
        ("batch-1 decode, plain generate (tok/s)", f"{out['decode_tps_plain']:.1f}", ""),
        ("stage decode / bound", f"{out['decode_tps_stage'] / out['bound_tps'] * 100:.0f}%", ">= 80%"),
        ("8 sequential invokes (s)", f"{out['sequential_s']:.2f}", ""),
        ("batch(8) (s)", f"{out['batch_s']:.2f}", ""),
        ("8 concurrent invokes, threads (s)", f"{out['concurrent_s']:.2f}", ""),
        ("batch speed-up", f"{out['sequential_s'] / out['batch_s']:.2f}x", ">= 3x"),
        ("concurrent speed-up", f"{out['sequential_s'] / out['concurrent_s']:.2f}x", ""),
        ("concurrent: generate calls (4 stages)", str(out["concurrent_generate_calls"]), "4"),
        (
            "batch / concurrent == sequential",
            f"{out['batch_equals_sequential']} / {out['concurrent_equals_sequential']}",
            "True",
        ),
        ("LangChain layers' share of stack time", f"{(1 - out['engine_share']) * 100:.1f}%", "< 3%"),
        (f"stack, {n_cmp} invokes (s)", f"{out['ours_s']:.2f}", ""),
        (f"4 HuggingFacePipelines, {n_cmp} runs (s)", f"{out['naive_s']:.2f}", ""),
        ("stack / pipelines latency", f"{out['ours_s'] / out['naive_s']:.2f}x", "<= 0.9x"),
        ("identical outputs", f"{out['naive_identical']}/{n_cmp}", f"{n_cmp}/{n_cmp}"),
        ("stream TTFT, whole stack (s)", f"{out['ttft_s']:.2f}", ""),
        ("TTFT after last stage starts (s)", f"{out['ttft_after_last_stage_start_s']:.3f}", "one prefill"),
    ]
    if "load_cold_s" in out:
        rows += [
            ("cold load, GGUF de-quantised (s)", f"{out['load_cold_s']:.1f}", "(about 15 s)"),
            ("cached load (s)", f"{out['load_cached_s']:.1f}", "<= 3 s"),
            ("  + importing torch/transformers first (s)", f"{out['import_s']:.1f}", ""),
            ("  = fresh process to loaded model (s)", f"{out['load_cached_total_s']:.1f}", ""),
        ]
    report("inference", rows, out)


if __name__ == "__main__":
    main()
