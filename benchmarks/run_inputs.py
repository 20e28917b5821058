"""The manifest of a training run's inputs: what `train_heldout.sh` was given, hashed, with the commit.

    python benchmarks/run_inputs.py RUNS_DIR --data FILE --teacher SPEC --mode MODE --limit N ...

Writes ``RUNS_DIR/inputs.json`` (beside the run's bulky artifacts, which stay out of the repository) and
``benchmarks/results/run_inputs.json`` (each run folder's latest inputs, by name, in the repository), so a
published result names the exact data file, base model file, teacher, settings and code it came from. A
rerun into the same folder with other inputs is refused: a resumed run must not mix two configurations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "run_inputs.json"


def commit() -> str:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    # uncommitted tracked changes: the run's code is not the commit's, and the record must say so
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root, check=False).returncode != 0
    return (out.stdout.strip() or "unknown") + ("+uncommitted" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    for flag in ("--data", "--teacher", "--mode", "--max-new"):
        parser.add_argument(flag, required=True)
    for flag in ("--limit", "--steps", "--eval-n"):
        parser.add_argument(flag, type=int, required=True)
    parser.add_argument("--stage-steps", default="", help="'intent=80 answer=240': per-stage overrides")
    args = parser.parse_args()

    from langchain_fslm.files import sha256_file
    from langchain_fslm.models.refs import embedded_default_gguf
    from langchain_fslm.roles import default_stage_specs
    from langchain_fslm.training.config import parse_stage_steps

    stages = [s.name for s in default_stage_specs()]
    try:
        overrides = {k: int(v) for k, v in parse_stage_steps(args.stage_steps.split()).items()}
    except ValueError as err:  # ConfigError is one; so is a step count that is not a number
        sys.exit(str(err))
    if set(overrides) - set(stages):  # refused before the manifest fixes a wrong single-LoRA budget
        sys.exit(f"--stage-steps names {sorted(set(overrides) - set(stages))}; the stages are {stages}")

    gguf = embedded_default_gguf()
    settings = {
        "teacher": args.teacher,
        "mode": args.mode,
        "derive": ["key_points"] if args.mode == "hindsight" else [],
        "limit": args.limit,
        "stages": stages,
        "steps_per_stage": args.steps,
        **({"stage_steps": overrides} if overrides else {}),  # absent: every stage takes steps_per_stage
        "single_lora_steps": sum(overrides.get(s, args.steps) for s in stages),
        "eval_n": args.eval_n,
        "max_new_tokens": args.max_new,
        "heldout": 200,
        "seed": 0,
        "data": {"file": Path(args.data).name, "sha256": sha256_file(Path(args.data))},
        "base_model": {"file": gguf.name, "sha256": sha256_file(gguf)},
    }
    manifest = args.runs / "inputs.json"
    if manifest.exists():  # a resumed run: the first start's record (and commit) stays
        record = json.loads(manifest.read_text())
        if record["settings"] != settings:
            sys.exit(f"{manifest}: this run folder holds a run with other inputs; use another folder")
    else:
        record = {
            "settings": settings,
            "commit": commit(),
            "versions": {p: version(p) for p in ("torch", "transformers", "peft", "xllamacpp")},
        }
        args.runs.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(record, indent=2) + "\n")
    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs[args.runs.name] = record  # one entry per run folder: the latest run there
    RESULTS.write_text(json.dumps(runs, indent=2, sort_keys=True) + "\n")
    print(f"inputs: {manifest}")  # noqa: T201


if __name__ == "__main__":
    main()
