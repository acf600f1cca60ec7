#!/usr/bin/env bash
# The pipeline sanity run (seed 000's ppo_pipeline_sanity.sh) on the embedded default, offline, on CPU:
#   0. build the embedded default (tiny pretrained Llama, offline tokenizer, toy data) if not cached
#   1. SFT with LoRA (sft.py)            2. merge the SFT adapter (merge_peft_adapter.py)
#   3. reward model with LoRA (reward_modeling.py)   4. merge the reward adapter
#   5. PPO from the merged SFT model against the merged reward model (ppo.py)
#   6. generation sanity check on the PPO policy (run_generation.py)
# The base-vs-PPO comparison joins when its script lands. Unlike seed 000's step 4, the reward
# adapter is merged into the model it was trained on (the SFT-merged model), not the raw base.
#
# Every stage logs to the terminal and to ppo_pipeline_sanity.log. A stage that finished writes
# <workdir>/<stage>/.stage_done last; a rerun skips finished stages (--force reruns all).
# Knobs (environment): WORKDIR (default ./runs/sanity), MODEL (default: the embedded model), DATASET
# (default: the embedded toy data), DEVICE (auto|cpu|cuda|hpu), SFT_STEPS, RM_EPOCHS, PPO_STEPS, PYTHON.
set -euo pipefail
cd "$(dirname "$0")"

FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "error: unknown option $arg (use --force or --help)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python}
WORKDIR=${WORKDIR:-runs/sanity}
DEVICE=${DEVICE:-auto}
SFT_STEPS=${SFT_STEPS:-300}
RM_EPOCHS=${RM_EPOCHS:-2}
PPO_STEPS=${PPO_STEPS:-30}
LOG=${LOG:-ppo_pipeline_sanity.log}
mkdir -p "$WORKDIR"
: > "$LOG"

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

# run_stage NAME OUTPUT_DIR COMMAND...: skip when OUTPUT_DIR/.stage_done exists, else run, then mark done.
run_stage() {
  local name=$1 out=$2; shift 2
  if [ "$FORCE" = 0 ] && [ -f "$out/.stage_done" ]; then
    log "stage $name: already done ($out), skipping"
    return 0
  fi
  if [ "$FORCE" = 1 ] || [ -e "$out" ]; then
    rm -rf "$out"
  fi
  log "stage $name: $*"
  local start=$SECONDS
  if ! "$@" 2>&1 | tee -a "$LOG"; then
    log "stage $name FAILED after $((SECONDS - start))s; last lines of its log:"
    tail -n 20 "$LOG" >&2
    exit 1
  fi
  date -u +%FT%TZ > "$out/.stage_done.tmp" && mv "$out/.stage_done.tmp" "$out/.stage_done"
  log "stage $name: done in $((SECONDS - start))s"
}

if [ -z "${MODEL:-}" ] || [ -z "${DATASET:-}" ]; then
  log "stage default: the embedded default (built once, then cached)"
  paths=$("$PYTHON" -m rlhfkit.embedded 2>>"$LOG")
  MODEL=${MODEL:-$(echo "$paths" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["model"])')}
  DATASET=${DATASET:-$(echo "$paths" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["dataset"])')}
fi
log "model: $MODEL; dataset: $DATASET; device: $DEVICE; work dir: $WORKDIR"

run_stage sft "$WORKDIR/sft" "$PYTHON" sft.py \
  --model_name_or_path "$MODEL" --dataset_name "$DATASET" --output_dir "$WORKDIR/sft" \
  --device "$DEVICE" --do_train --max_steps "$SFT_STEPS" --per_device_train_batch_size 16 \
  --gradient_accumulation_steps 1 --learning_rate 2e-3 --lora_target_modules q_proj k_proj v_proj o_proj \
  --logging_steps 25 --save_strategy no --disable_tqdm True

run_stage merge_sft "$WORKDIR/sft_merged" "$PYTHON" merge_peft_adapter.py \
  --base_model_name "$MODEL" --adapter_model_name "$WORKDIR/sft" --output_name "$WORKDIR/sft_merged"

run_stage reward_model "$WORKDIR/rm" "$PYTHON" reward_modeling.py \
  --model_name_or_path "$WORKDIR/sft_merged" --dataset_name "$DATASET" --output_dir "$WORKDIR/rm" \
  --device "$DEVICE" --optim adamw_torch --per_device_train_batch_size 32 --gradient_accumulation_steps 1 \
  --num_train_epochs "$RM_EPOCHS" --learning_rate 5e-3 --lora_r 32 --lora_alpha 64 --max_length 128 \
  --logging_steps 50 --save_strategy no --disable_tqdm True

run_stage merge_rm "$WORKDIR/rm_merged" "$PYTHON" merge_peft_adapter.py \
  --base_model_name "$WORKDIR/sft_merged" --adapter_model_name "$WORKDIR/rm" --output_name "$WORKDIR/rm_merged"

run_stage ppo "$WORKDIR/ppo" "$PYTHON" ppo.py \
  --model_name_or_path "$WORKDIR/sft_merged" --reward_model_name "$WORKDIR/rm_merged" --dataset_name "$DATASET" \
  --output_dir "$WORKDIR/ppo" --device "$DEVICE" --steps "$PPO_STEPS" --batch_size 32 --mini_batch_size 8 \
  --learning_rate 5e-4 --kl_coef 0.3 --output_max_length 48 --sample_every 10 --logging_steps 5

run_stage generation "$WORKDIR/generation" "$PYTHON" run_generation.py \
  --model_name_or_path "$WORKDIR/ppo" --device "$DEVICE" --use_kv_cache --max_new_tokens 48 \
  --batch_size 4 --prompt "Describe the red bicycle." --prompt "What do you think of the pizza?" \
  --prompt "What is the currency of the USA?" --output_file "$WORKDIR/generation/generations.jsonl"

log "pipeline finished: outputs in $WORKDIR, log in $LOG"
