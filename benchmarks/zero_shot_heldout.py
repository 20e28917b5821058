"""The zero-shot default stack vs its own base model on the held-out Alpaca records (issue 25's floor).

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/zero_shot_heldout.py [RUNS_DIR] [--limit 200]
    python benchmarks/heldout_table.py RUNS_DIR        # the paired intervals

Both systems answer on the default engine (llama.cpp on the embedded GGUF) with the shipped budgets, greedy;
the reference likelihoods are scored on torch (``evaluate_chain(scorer=...)``, as ``fslm heldout`` does).
Writes ``RUNS_DIR/heldout-base.json`` and ``RUNS_DIR/heldout-zero-shot.json`` (every record's scores, for
the paired table), default ``runs/zero-shot``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="?", default=Path("runs/zero-shot"))
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()

    from langchain_fslm import FSLMChain
    from langchain_fslm.files import write_text
    from langchain_fslm.models import shared_dir
    from langchain_fslm.training.data import load_alpaca, split_heldout
    from langchain_fslm.training.heldout import base_chain, evaluate_chain

    rows = split_heldout(load_alpaca(shared_dir() / "data" / "alpaca" / "alpaca_5000.json"), 200, 0)[1]
    rows = rows[: args.limit]
    args.runs.mkdir(parents=True, exist_ok=True)
    systems = {
        "base": (base_chain(), base_chain(engine="torch")),
        "zero-shot": (FSLMChain.default(), FSLMChain.default(engine="torch")),
    }
    for name, (chain, scorer) in systems.items():
        result = evaluate_chain(chain, rows, name, scorer=scorer)
        engine = type(chain.stages[0].engine).__name__
        data = {**result.model_dump(), "answer_engine": engine}
        write_text(args.runs / f"heldout-{name}.json", json.dumps(data, indent=2) + "\n")
        print(
            f"{name}: ROUGE-L {result.rouge_l:.3f}, loglik/token {result.loglik_per_token:.3f}, "
            f"{result.wall_s:.0f} s on {engine}, {result.failed} failed",
            flush=True,
        )


if __name__ == "__main__":
    main()
