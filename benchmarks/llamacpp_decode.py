"""Batch-1 decode of the same weights on llama.cpp, against the bandwidth bound and ``compile_decode``.

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/llamacpp_decode.py \
        --converter SRC/vendor/llama.cpp/convert_hf_to_gguf.py [--tokens 64] [--rounds 5]

Needs the ``llamacpp`` extra (llama-cpp-python, built from source here; see docs/performance.md for
the build) and llama.cpp's converter script, which the llama-cpp-python sdist vendors with its ``gguf-py``
(``pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36``, then unpack) and which needs
``sentencepiece`` importable.

llama.cpp is the ecosystem's hand-tuned CPU engine, so it answers a question the other decode scripts
cannot: how close to the bandwidth bound an expert engine gets on this machine with these exact weights.
The embedded SmolLM2-135M-Instruct (fp32, as our engine runs it) is saved with ``save_pretrained`` and
converted to an fp32 GGUF once (kept in ``$FSLM_CACHE_DIR/gguf/``). In interleaved rounds, each after a
read-bandwidth reading, it times: llama.cpp on that fp32 GGUF (a bare greedy loop: one ``eval`` of one
token and an argmax per step, 2 threads, like ``aoti_step.py``'s loop), llama.cpp on the embedded Q4_1
GGUF (its bound counted from its own, smaller, bytes), and ``compile_decode``'s ``generate`` (as in
``decode.py``). Greedy texts of the fp32 runs are compared with plain ``generate``'s. Writes
``benchmarks/results/llamacpp_decode.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bandwidth_bound, interleaved_rounds, machine, param_bytes, report  # noqa: E402
from benchmarks.decode import generate_rate, timed_generate  # noqa: E402
from benchmarks.inference import PROMPTS, bandwidth_gbs  # noqa: E402


def fp32_gguf(model: Any, tokenizer: Any, converter: Path) -> Path:
    """The model as an fp32 GGUF, converted once by llama.cpp's own script and kept in the cache folder."""
    import tempfile

    from langchain_fslm.models import cache_dir

    target = cache_dir() / "gguf" / "smollm2-135m-instruct-f32.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)  # a standard folder: architectures named, tied head stored once
        tokenizer.save_pretrained(folder)
        paths = [str(converter.parent / "gguf-py"), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        partial = target.with_suffix(".partial")
        cmd = [sys.executable, str(converter), folder, "--outtype", "f32", "--outfile", str(partial)]
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        partial.replace(target)  # only a complete file gets the name
    return target


def gguf_bytes(path: Path) -> int:
    """Bytes of all tensors in a GGUF file: what one decoded token reads."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors)


def llamacpp_loop(llm: Any, prompt_ids: list[int], tokens: int) -> tuple[float, str]:
    """Greedy decode of ``tokens`` tokens after a prefill: (tokens/s of the loop alone, text).

    The prompt is given as token ids (the transformers tokenizer's, so both engines see the same
    prompt), and end-of-sequence is never picked, like ``min_new_tokens`` in ``timed_generate``.
    """
    import numpy as np

    llm.reset()
    llm.eval(prompt_ids)
    eos = llm.token_eos()
    out: list[int] = []
    start = time.perf_counter()
    for _ in range(tokens):
        scores = llm.scores[llm.n_tokens - 1].copy()
        scores[eos] = -np.inf
        token = int(np.argmax(scores))
        out.append(token)
        llm.eval([token])
    rate = tokens / (time.perf_counter() - start)
    return rate, llm.detokenize(out).decode(errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--converter", type=Path, required=True, help="llama.cpp's convert_hf_to_gguf.py")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch
    from llama_cpp import Llama

    from langchain_fslm.engine.compiled import CompiledDecode
    from langchain_fslm.models import BaseModelRef, embedded_default_gguf, load_base_model

    model, tokenizer = load_base_model(BaseModelRef())
    ids = tokenizer(PROMPTS[1], return_tensors="pt")
    n = args.tokens
    f32_path = fp32_gguf(model, tokenizer, args.converter)
    files = {"f32": f32_path, "q4_1": embedded_default_gguf()}
    threads = torch.get_num_threads()
    # logits_all: llama-cpp-python keeps the logits in ``scores`` only then (one 49,152-float row per step)
    engines = {
        k: Llama(model_path=str(p), n_threads=threads, n_ctx=512, logits_all=True, verbose=False)
        for k, p in files.items()
    }
    nbytes = {k: gguf_bytes(p) for k, p in files.items()}
    torch_bytes = param_bytes(model)

    out: dict[str, Any] = {"machine": machine(), "tokens": n, "threads": threads, "gguf_bytes": nbytes}
    out["torch_weight_bytes"] = torch_bytes
    plain_text = tokenizer.decode(timed_generate(model, ids, n)[1][0, ids["input_ids"].shape[1] :])
    decode = CompiledDecode()
    kwargs = decode.generate_kwargs(ids["input_ids"].shape[1] + n, model.config.max_position_embeddings)
    with decode.call(model, None):
        start = time.perf_counter()
        timed_generate(model, ids, 8, **kwargs)  # compiles
        out["compile_s"] = time.perf_counter() - start

    texts: dict[str, str] = {}

    def llamacpp_rate(key: str) -> float:
        rate, texts[key] = llamacpp_loop(engines[key], ids["input_ids"][0].tolist(), n)
        return rate

    def compile_decode_rate() -> float:
        with decode.call(model, None):
            return generate_rate(model, ids, n, **kwargs)

    variants = {
        "f32": lambda: llamacpp_rate("f32"),
        "q4_1": lambda: llamacpp_rate("q4_1"),
        "compile_decode": compile_decode_rate,
    }
    readings = [bandwidth_gbs()]
    rounds = interleaved_rounds(out, variants, args.rounds, readings)
    readings.append(bandwidth_gbs())
    bandwidth_row = bandwidth_bound(out, readings, torch_bytes)
    q4_bound = out["bandwidth_gbs"] * 1e9 / nbytes["q4_1"]
    out["q4_1_bound_tps"] = q4_bound
    ratios = [a / b for a, b in zip(rounds["f32"], rounds["compile_decode"], strict=True)]
    out["f32_vs_compile_decode"] = statistics.median(ratios)
    out["f32_text_equals_plain_generate"] = texts["f32"].strip() == plain_text.strip()
    out["texts"] = {"plain_generate": plain_text, **texts}

    def share(key: str, bound: float) -> str:
        return f"{out[key]:.1f} ({out[key] / bound:.0%} of bound)"

    rows = [
        bandwidth_row,
        ("bandwidth bound, fp32 weights (tok/s)", f"{out['bound_tps']:.1f}", ""),
        (f"(median of {args.rounds} interleaved rounds)", "", ""),
        ("compile_decode, generate (tok/s)", share("compile_decode_tps", out["bound_tps"]), ">= 80%"),
        ("llama.cpp, fp32 GGUF, bare greedy loop (tok/s)", share("f32_tps", out["bound_tps"]), ""),
        ("  llama.cpp fp32 / compile_decode, per round", f"{out['f32_vs_compile_decode']:.2f}x", ""),
        ("  llama.cpp fp32 text == plain generate", str(out["f32_text_equals_plain_generate"]), ""),
        ("bandwidth bound, Q4_1 GGUF weights (tok/s)", f"{q4_bound:.1f}", ""),
        ("llama.cpp, Q4_1 GGUF (embedded file) (tok/s)", share("q4_1_tps", q4_bound), ""),
        ("compile_decode's compile (s)", f"{out['compile_s']:.1f}", ""),
    ]
    report("llamacpp_decode", rows, out)


if __name__ == "__main__":
    main()
