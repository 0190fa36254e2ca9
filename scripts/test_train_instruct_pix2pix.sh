#!/usr/bin/env bash
# PECN quick test: the whole path (pairs, training with checkpoint and validation, saving) on a
# handful of samples in a few minutes. Uses the prepared SSv2 under DATA_ROOT when it is there;
# otherwise builds the embedded synthetic SSv2 and a tiny InstructPix2Pix pipeline (no download).
# Each run starts over: it passes --overwrite_output_dir, replacing the previous quick test in OUTPUT_DIR
# (only what training wrote there). Point OUTPUT_DIR at a folder of its own, never at a real run.
set -euo pipefail
cd "$(dirname "$0")/.."

PROGRESS=${PROGRESS:-False}
INPUT_FRAME_IDX=${INPUT_FRAME_IDX:-20}
TARGET_FRAME_IDX=${TARGET_FRAME_IDX:-21}
RESOLUTION=${RESOLUTION:-128}
DATA_ROOT=${DATA_ROOT:-data/sthv2}
OUTPUT_DIR=${OUTPUT_DIR:-test_output/instruct_pix2pix_test}
MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES:-16}
MAX_TRAIN_STEPS=${MAX_TRAIN_STEPS:-6}
WORK_DIR=${WORK_DIR:-test_output}         # where the embedded data and tiny pipeline go when needed

if [ -f "$DATA_ROOT/annotations/train_filtered.json" ] && [ -d "$DATA_ROOT/frames_${RESOLUTION}x${RESOLUTION}" ]; then
  MODEL_NAME=${MODEL_NAME:-timbrooks/instruct-pix2pix}
else
  echo "No prepared SSv2 under $DATA_ROOT: using the embedded synthetic SSv2 and a tiny pipeline."
  DATA_ROOT=$WORK_DIR/synthetic_sthv2
  if [ ! -f "$DATA_ROOT/annotations/val_filtered.json" ]; then
    python -m pecn.synthetic --output_dir "$DATA_ROOT"
    python -m pecn.dataset --data_root "$DATA_ROOT" --train_per_task 8 --val_per_task 2
    python -m pecn.video_loader --data_root "$DATA_ROOT" --sizes "${RESOLUTION}x${RESOLUTION}" --num_workers 2
  fi
  if [ -z "${MODEL_NAME:-}" ]; then
    MODEL_NAME=$WORK_DIR/tiny_instruct_pix2pix
    [ -f "$MODEL_NAME/model_index.json" ] || python -m pecn.tiny --kind instruct_pix2pix --output_dir "$MODEL_NAME"
  fi
fi

args=(
  --pretrained_model_name_or_path="$MODEL_NAME"
  --data_root="$DATA_ROOT"
  --input_frame_idx="$INPUT_FRAME_IDX" --target_frame_idx="$TARGET_FRAME_IDX"
  --resolution="$RESOLUTION" --output_dir="$OUTPUT_DIR"
  --max_train_samples="$MAX_TRAIN_SAMPLES" --train_batch_size=4
  --max_train_steps="$MAX_TRAIN_STEPS" --checkpointing_steps=3 --checkpoints_total_limit=1
  --learning_rate=5e-5 --lr_warmup_steps=0 --conditioning_dropout_prob=0.05
  --validation_epochs=1 --num_validation_images=2 --validation_num_inference_steps=4
  --mixed_precision=no --report_to=tensorboard --seed=42
  --overwrite_output_dir
)
case "$PROGRESS" in 1|true|True|TRUE) args+=(--add_progress);; esac

accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  train_instruct_pix2pix.py "${args[@]}" "$@"
echo "Quick test done. Model: $OUTPUT_DIR   Log: $OUTPUT_DIR/train.log   Validation grids: $OUTPUT_DIR/validation/"
echo "TensorBoard: tensorboard --logdir=$OUTPUT_DIR"
