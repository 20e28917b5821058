"""Do the torch and llama.cpp engines slow each other down in one process? (docs/engines.md)

    HF_HUB_OFFLINE=1 python benchmarks/engine_sharing.py [--threads 2]

Greedy 64 tokens on the embedded SmolLM2 GGUF with llama.cpp alone, after a torch generation, and while a
torch engine generates in another thread; then 48 torch tokens alone and beside an idle llama.cpp server.
Also the vocabulary bound of constrained-decoding.md (longest token, and longest of capitals only).
Prints one JSON object (seconds per call); wall times depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from langchain_fslm.engine.base import GenerationConfig, GenerationRequest
from langchain_fslm.engine.llamacpp import LlamaCppEngine
from langchain_fslm.engine.local import LocalEngine


def timed(engine, requests) -> float:
    start = time.perf_counter()
    engine.generate(requests)
    return round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    args = parser.parse_args()
    cfg = GenerationConfig(max_new_tokens=64, temperature=0.0)
    story = [GenerationRequest(prompt="Write a short story about a robot who learns to paint.", config=cfg)]
    short = [GenerationRequest(prompt="Hello there", config=GenerationConfig(max_new_tokens=8))]
    torch_req = [
        GenerationRequest(
            prompt="Write a short story about a robot.", config=GenerationConfig(max_new_tokens=48)
        )
    ]
    out: dict[str, float | int | None] = {}

    torch_engine = LocalEngine.from_ref()
    timed(torch_engine, torch_req)  # warm-up
    out["torch_alone_s"] = timed(torch_engine, torch_req)
    llama = LlamaCppEngine(n_threads=args.threads)
    timed(llama, story)  # warm-up: the server starts
    out["torch_beside_idle_llamacpp_s"] = timed(torch_engine, torch_req)
    out["llamacpp_alone_s"] = timed(llama, story)
    timed(torch_engine, short)
    out["llamacpp_after_torch_s"] = timed(llama, story)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            torch_engine.generate(short)

    worker = threading.Thread(target=busy)
    worker.start()
    out["llamacpp_beside_busy_torch_s"] = timed(llama, story)
    stop.set()
    worker.join()
    out["longest_token_chars"] = llama.longest_token_chars()
    out["longest_capitals_token_chars"] = llama.longest_token_chars(frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
