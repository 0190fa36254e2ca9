#!/usr/bin/env bash
# PECN full training (InstructPix2Pix at 128x128). Set the variables below here or in the
# environment, e.g.  PROGRESS=True bash scripts/train_instruct_pix2pix.sh
# Extra arguments are passed on to train_instruct_pix2pix.py.
set -euo pipefail
cd "$(dirname "$0")/.."

PROGRESS=${PROGRESS:-False}                 # True: "... And 60% of the action has been completed."
INPUT_FRAME_IDX=${INPUT_FRAME_IDX:-20}      # 0-based input frame N
TARGET_FRAME_IDX=${TARGET_FRAME_IDX:-21}    # 0-based frame to predict, N+T
RESOLUTION=${RESOLUTION:-128}
MODEL_NAME=${MODEL_NAME:-timbrooks/instruct-pix2pix}
DATA_ROOT=${DATA_ROOT:-data/sthv2}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/instruct_pix2pix_${RESOLUTION}}
BATCH_SIZE=${BATCH_SIZE:-16}
GRAD_ACCUM=${GRAD_ACCUM:-2}
LEARNING_RATE=${LEARNING_RATE:-5e-6}
EPOCHS=${EPOCHS:-20}
MIXED_PRECISION=${MIXED_PRECISION:-fp16}
NUM_PROCESSES=${NUM_PROCESSES:-1}
REPORT_TO=${REPORT_TO:-tensorboard}
SEED=${SEED:-42}

args=(
  --pretrained_model_name_or_path="$MODEL_NAME"
  --data_root="$DATA_ROOT"
  --frames_dir="$DATA_ROOT/frames_${RESOLUTION}x${RESOLUTION}"
  --input_frame_idx="$INPUT_FRAME_IDX" --target_frame_idx="$TARGET_FRAME_IDX"
  --resolution="$RESOLUTION"
  --output_dir="$OUTPUT_DIR"
  --train_batch_size="$BATCH_SIZE" --gradient_accumulation_steps="$GRAD_ACCUM"
  --num_train_epochs="$EPOCHS"
  --learning_rate="$LEARNING_RATE" --lr_warmup_steps=0 --lr_scheduler=constant
  --conditioning_dropout_prob=0.05
  --mixed_precision="$MIXED_PRECISION"
  --checkpointing_steps=500 --checkpoints_total_limit=2
  --validation_epochs=1 --num_validation_images=4
  --report_to="$REPORT_TO" --seed="$SEED"
  --resume_from_checkpoint=latest
)
case "$PROGRESS" in 1|true|True|TRUE) args+=(--add_progress);; esac

accelerate launch --num_processes "$NUM_PROCESSES" --num_machines 1 --dynamo_backend no \
  train_instruct_pix2pix.py "${args[@]}" "$@"
echo "Model: $OUTPUT_DIR   Log: $OUTPUT_DIR/train.log   TensorBoard: tensorboard --logdir $OUTPUT_DIR"
