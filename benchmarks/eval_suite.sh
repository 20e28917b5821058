#!/usr/bin/env bash
# The 100-item suite numbers of docs/results.md: base zero-shot, single LoRA and FSLM stack, scored by
# `fslm eval` on the six log-likelihood tasks (seeded 100-item samples, seed 1234).
# Usage: benchmarks/eval_suite.sh [RUNS_DIR] [OUT_DIR]   (RUNS_DIR as written by train_heldout.sh)
# RUNS_DIR: default $FSLM_RUNS, else runs/ (relative to the working directory); OUT_DIR: default
# RUNS_DIR/suite100. Each system's results.json (every item's scores), results.md and results.png go to
# OUT_DIR/<system>/; `python benchmarks/suite_table.py OUT_DIR` prints the table and writes OUT_DIR/table.json.
# env: LIMIT (items per task, default: the whole 100-item sample), SYSTEMS (which runs, in order),
#      TASKS (comma-separated, default: fslm eval's six log-likelihood tasks; e.g. TASKS=gsm8k)
set -euo pipefail
RUNS=${1:-${FSLM_RUNS:-runs}}
OUT=${2:-$RUNS/suite100}
FSLM=${FSLM:-"python -m langchain_fslm.cli"}
SYSTEMS=${SYSTEMS:-"base-raw single-lora-chat fslm-stack base-chat fslm-stack-answer-raw single-lora-raw"}
limit=(); [ -z "${LIMIT:-}" ] || limit=(--limit "$LIMIT")
tasks=(); [ -z "${TASKS:-}" ] || tasks=(--tasks "$TASKS")
mkdir -p "$OUT"

# The bare base model behind the single LoRA's own one-stage prompt (chat template, no adapter).
base_chat="$RUNS/base-chat"
if [ ! -f "$base_chat/fslm_stack.json" ]; then
  mkdir -p "$base_chat"
  python - "$RUNS/single-lora/fslm_stack.json" "$base_chat/fslm_stack.json" <<'PY'
import json, sys
manifest = json.load(open(sys.argv[1]))
manifest["name"] = "base-chat"
manifest["description"] = "The single LoRA's one-stage prompt with no adapter (bare base model)."
for stage in manifest["stages"]:
    stage["adapter"] = None
json.dump(manifest, open(sys.argv[2], "w"), indent=2)
PY
fi

for sys in $SYSTEMS; do
  case $sys in
    base-raw)              args=(--base embedded:smollm2-135m-instruct --scoring last_stage) ;;  # lm-eval style, raw text; a --base: zero-shot, no shipped adapter
    base-chat)             args=(--stack "$base_chat" --scoring stack) ;;         # chat template, no adapter
    single-lora-chat)      args=(--stack "$RUNS/single-lora" --scoring stack) ;;  # as trained: chat template
    single-lora-raw)       args=(--stack "$RUNS/single-lora" --scoring last_stage) ;;
    fslm-stack)            args=(--stack "$RUNS/fslm-stack" --scoring stack --upstream-max-new-tokens 32) ;;
    fslm-stack-answer-raw) args=(--stack "$RUNS/fslm-stack" --scoring last_stage) ;;
    *) echo "unknown system $sys" >&2; exit 2 ;;
  esac
  [ -f "$OUT/$sys/results.json" ] && { echo "skip $sys (done)"; continue; }
  start=$(date +%s)
  $FSLM eval "${args[@]}" "${tasks[@]}" "${limit[@]}" --out "$OUT/$sys"
  echo "$sys: $(( $(date +%s) - start )) s" | tee -a "$OUT/wall_times.txt"
done
