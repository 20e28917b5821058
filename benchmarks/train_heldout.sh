#!/usr/bin/env bash
# The measured training result of docs/results.md: distil -> train stack + single LoRA -> held-out scores.
# Usage: benchmarks/train_heldout.sh [RUNS_DIR]   (env: LIMIT, STEPS, EVAL_N, MAX_NEW, DATA, FSLM)
# RUNS_DIR: where the handoffs, the two stacks and the held-out scores go; default $FSLM_RUNS, else runs/
# (relative to the working directory). Run from the repository root, with ../shared beside the checkout.
set -euo pipefail
RUNS=${1:-${FSLM_RUNS:-runs}}
DATA=${DATA:-../shared/data/alpaca/alpaca_5000.json}
LIMIT=${LIMIT:-120}; STEPS=${STEPS:-30}; EVAL_N=${EVAL_N:-50}; MAX_NEW=${MAX_NEW:-48}
FSLM=${FSLM:-"python -m langchain_fslm.cli"}
mkdir -p "$RUNS"
$FSLM distill --data "$DATA" --teacher hf:embedded --out "$RUNS/handoffs.jsonl" \
  --heldout 200 --seed 0 --limit "$LIMIT" --max-new-tokens "$MAX_NEW" --batch-size 8
$FSLM train --handoffs "$RUNS/handoffs.jsonl" --base embedded:smollm2-135m-instruct \
  --out "$RUNS/fslm-stack" --max-steps "$STEPS" --batch-size 4 --save-steps 10
$FSLM train --single --handoffs "$RUNS/handoffs.jsonl" --base embedded:smollm2-135m-instruct \
  --out "$RUNS/single-lora" --max-steps "$STEPS" --batch-size 4 --save-steps 10
for sys in base single-lora fslm-stack; do
  stack=(); [ "$sys" = base ] || stack=(--stack "$RUNS/$sys")
  $FSLM heldout "${stack[@]}" --data "$DATA" --heldout 200 --seed 0 --limit "$EVAL_N" \
    --max-new-tokens "$MAX_NEW" --out "$RUNS/heldout-$sys.json"
done
