#!/usr/bin/env bash
# PECN sampling and evaluation: predictions, [input | ground truth | prediction] grids and metrics
# beside the copy-the-input baseline. Set the variables below here or in the environment, e.g.
#   MODEL_DIR=outputs/instruct_pix2pix_128 NUM_SAMPLES=all PROGRESS=True bash scripts/sample_from_pix2pix.sh
# Extra arguments are passed on to sample_from_pix2pix.py (e.g. --device cpu, --lpips_weights DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_DIR=${MODEL_DIR:-outputs/instruct_pix2pix_128}           # trained InstructPix2Pix pipeline folder
FRAMES_DIR=${FRAMES_DIR:-data/sthv2/frames_128x128}
VAL_ANNOTATIONS=${VAL_ANNOTATIONS:-data/sthv2/annotations/val_filtered.json}
OUTPUT_DIR=${OUTPUT_DIR:-test_result/baseline}
INPUT_FRAME_IDX=${INPUT_FRAME_IDX:-20}                         # 0-based input frame N
TARGET_FRAME_IDX=${TARGET_FRAME_IDX:-21}                       # 0-based ground-truth frame N+T
NUM_SAMPLES=${NUM_SAMPLES:-3}                                  # a count, or "all" (or 0)
SEED=${SEED:-42}                                               # sample i uses SEED + i
NUM_INFERENCE_STEPS=${NUM_INFERENCE_STEPS:-20}
IMAGE_GUIDANCE_SCALE=${IMAGE_GUIDANCE_SCALE:-1.5}
GUIDANCE_SCALE=${GUIDANCE_SCALE:-7.5}
PROGRESS=${PROGRESS:-False}                                    # True if the model was trained with PROGRESS=True
OVERWRITE_OUTPUT_DIR=${OVERWRITE_OUTPUT_DIR:-False}            # True replaces an earlier run in OUTPUT_DIR once this one completes

args=(
  --model_dir="$MODEL_DIR"
  --frames_dir="$FRAMES_DIR"
  --val_annotations="$VAL_ANNOTATIONS"
  --output_dir="$OUTPUT_DIR"
  --input_frame_idx="$INPUT_FRAME_IDX" --target_frame_idx="$TARGET_FRAME_IDX"
  --num_samples="$NUM_SAMPLES"
  --seed="$SEED"
  --num_inference_steps="$NUM_INFERENCE_STEPS"
  --image_guidance_scale="$IMAGE_GUIDANCE_SCALE" --guidance_scale="$GUIDANCE_SCALE"
)
case "${PROGRESS,,}" in
  1|true|yes) args+=(--add_progress) ;;
  0|false|no) args+=(--no-add_progress) ;;
  *) echo "error: PROGRESS=$PROGRESS: expected True/False/1/0" >&2; exit 2 ;;
esac
case "${OVERWRITE_OUTPUT_DIR,,}" in
  1|true|yes) args+=(--overwrite_output_dir) ;;
  0|false|no) args+=(--no-overwrite_output_dir) ;;
  *) echo "error: OVERWRITE_OUTPUT_DIR=$OVERWRITE_OUTPUT_DIR: expected True/False/1/0" >&2; exit 2 ;;
esac

python sample_from_pix2pix.py "${args[@]}" "$@"
