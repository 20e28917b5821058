"""Zero-shot stage layouts vs the bare base model on held-out Alpaca: the evidence behind the default.

    HF_HUB_OFFLINE=1 python benchmarks/zero_shot_layouts.py [RUNS_DIR] [--limit 200] [--layout NAME ...]
    python benchmarks/heldout_table.py RUNS_DIR [--with-input]     # the paired intervals

Every layout answers the first N held-out records (seed 0) zero-shot on the default engine (llama.cpp on the
embedded GGUF), greedy, with the shipped budgets; the reference likelihoods are scored on torch. Writes
``RUNS_DIR/heldout-<layout>.json`` (default ``runs/layouts``; ``base`` is the bare base model), which
``heldout_table.py`` pairs record by record. docs/stack.md reads the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def layouts() -> dict[str, list[Any]]:
    """The layouts tried: the default, the paper-shaped four stages, and plans with key points."""
    from langchain_fslm import roles

    intent, key_points, _, rewrite = roles.four_stage_specs()
    request_only = key_points.model_copy(
        update={"prompt": roles.KEY_POINTS_PROMPT.replace("What is asked: {intent}\n", "")}
    )
    notes_first = rewrite.model_copy(update={"prompt": "Points to cover:\n{key_points}\n\n{input}"})
    request_first = rewrite.model_copy(
        update={
            "prompt": "Request: {input}\nKey points:\n{key_points}\n\n"
            "Answer the request, covering the key points. Reply with the answer only."
        }
    )
    return {
        "intent-answer": roles.default_stage_specs(),
        "four-stage": roles.four_stage_specs(),
        "key_points-answer": [request_only, notes_first],
        "intent-key_points-answer": [intent, key_points, notes_first],
        "intent-key_points-answer-request-first": [intent, key_points, request_first],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="?", default=Path("runs/layouts"))
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--layout", action="append", help="base or a layout name (default: all)")
    args = parser.parse_args()

    from langchain_fslm import FSLMChain
    from langchain_fslm.files import write_text
    from langchain_fslm.models import shared_dir
    from langchain_fslm.training.data import load_alpaca, split_heldout
    from langchain_fslm.training.heldout import base_chain, evaluate_chain

    rows = split_heldout(load_alpaca(shared_dir() / "data" / "alpaca" / "alpaca_5000.json"), 200, 0)[1]
    rows = rows[: args.limit]
    known = layouts()
    names = args.layout or ["base", *known]
    unknown = sorted(set(names) - {"base", *known})
    if unknown:
        parser.error(f"unknown layout(s) {unknown}; known: base, {', '.join(known)}")
    args.runs.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (args.runs / f"heldout-{name}.json").exists():
            continue  # scored already (resume)
        if name == "base":
            chain, scorer = base_chain(), base_chain(engine="torch")
        else:
            chain, scorer = (
                FSLMChain.from_specs(known[name]),
                FSLMChain.from_specs(known[name], engine="torch"),
            )
        result = evaluate_chain(chain, rows, name, scorer=scorer)
        data = {**result.model_dump(), "stages": [s.name for s in chain.stages]}
        write_text(args.runs / f"heldout-{name}.json", json.dumps(data, indent=2) + "\n")
        print(f"{name}: ROUGE-L {result.rouge_l:.3f}, loglik/token {result.loglik_per_token:.3f}", flush=True)


if __name__ == "__main__":
    main()
