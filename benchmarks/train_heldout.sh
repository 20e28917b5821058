#!/usr/bin/env bash
# The measured training result of docs/results.md: distil -> train stack + single LoRA -> held-out scores.
# Usage: benchmarks/train_heldout.sh [RUNS_DIR]
#   env: LIMIT (training records), STEPS (steps per stage adapter), EVAL_N (held-out records scored),
#        STAGE_STEPS (per-stage overrides of STEPS, e.g. "intent=200 answer=1000"),
#        MODE (plain | hindsight: the teacher also sees the reference, key_points derived from it),
#        TEACHER (default hf:embedded), MAX_NEW (override every budget; empty: the stages' own),
#        SYSTEMS (scored, default "base single-lora fslm-stack"; the single LoRA is trained only if listed),
#        DATA, FSLM
# RUNS_DIR: where the handoffs, the two stacks and the held-out scores go; default $FSLM_RUNS, else runs/
# (relative to the working directory). Run from the repository root, with ../shared beside the checkout.
# Every step resumes: rerun the same line after a stop and finished work is kept.
# The single LoRA gets the same records and the stack's total steps (the sum over stages), stated in results.md.
set -euo pipefail
RUNS=${1:-${FSLM_RUNS:-runs}}
DATA=${DATA:-../shared/data/alpaca/alpaca_5000.json}
LIMIT=${LIMIT:-120}; STEPS=${STEPS:-30}; EVAL_N=${EVAL_N:-50}; MAX_NEW=${MAX_NEW:-}
MODE=${MODE:-plain}; TEACHER=${TEACHER:-hf:embedded}; STAGE_STEPS=${STAGE_STEPS:-}
FSLM=${FSLM:-"python -m langchain_fslm.cli"}
budget=(); [ -z "$MAX_NEW" ] || budget=(--max-new-tokens "$MAX_NEW")
mode=(); [ "$MODE" = plain ] || mode=(--hindsight --derive key_points)
per_stage=(); for s in $STAGE_STEPS; do per_stage+=(--stage-steps "$s"); done
mkdir -p "$RUNS"
python benchmarks/run_inputs.py "$RUNS" --data "$DATA" --teacher "$TEACHER" --mode "$MODE" \
  --limit "$LIMIT" --steps "$STEPS" --eval-n "$EVAL_N" --max-new "${MAX_NEW:-stage budgets}" \
  --stage-steps "$STAGE_STEPS"
$FSLM distill --data "$DATA" --teacher "$TEACHER" --out "$RUNS/handoffs.jsonl" \
  --heldout 200 --seed 0 --limit "$LIMIT" "${budget[@]}" --batch-size 8 "${mode[@]}"
$FSLM train --handoffs "$RUNS/handoffs.jsonl" --base embedded:smollm2-135m-instruct \
  --out "$RUNS/fslm-stack" --max-steps "$STEPS" "${per_stage[@]}" --batch-size 4 --save-steps 10
SYSTEMS=${SYSTEMS:-base single-lora fslm-stack}  # which systems to score (a run may reuse another's)
if [[ " $SYSTEMS " == *" single-lora "* ]]; then
  # the step count run_inputs.py recorded (the stack's total): what the manifest says is what runs
  single_steps=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['settings']['single_lora_steps'])" "$RUNS/inputs.json")
  $FSLM train --single --handoffs "$RUNS/handoffs.jsonl" --base embedded:smollm2-135m-instruct \
    --out "$RUNS/single-lora" --max-steps "$single_steps" --batch-size 4 --save-steps 40
fi
for sys in $SYSTEMS; do
  [ -f "$RUNS/heldout-$sys.json" ] && continue  # scored already (resume)
  stack=(); [ "$sys" = base ] || stack=(--stack "$RUNS/$sys")
  $FSLM heldout "${stack[@]}" --data "$DATA" --heldout 200 --seed 0 --limit "$EVAL_N" \
    "${budget[@]}" --out "$RUNS/heldout-$sys.json"
done
