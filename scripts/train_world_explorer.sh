#!/usr/bin/env bash
# GenEx-Explorer training, the README's command; every value can be overridden by an environment
# variable, e.g.  BASE_FOLDER=./Genex-DB/realistic MAX_TRAIN_STEPS=2000 bash scripts/train_world_explorer.sh
# Extra arguments are passed on to the script, e.g. --use_ema --gradient_checkpointing.
# LATENTS_CACHE_DIR=<dir> first caches the VAE posteriors and CLIP embeddings of the frames there
# (python -m genex.cache_latents under the same accelerate launch, the videos split between the GPUs;
# a rerun encodes only what changed) and trains from them.
# COMPILE=1 adds --compile (torch.compile of the UNet).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG_FILE=${CONFIG_FILE:-accelerate_config.yaml}
BASE_FOLDER=${BASE_FOLDER:-./Genex-DB}
MODEL_NAME=${MODEL_NAME:-stabilityai/stable-video-diffusion-img2vid-xt-1-1}
OUTPUT_DIR=${OUTPUT_DIR:-./models/genex_explorer}
NUM_FRAMES=${NUM_FRAMES:-25}
WIDTH=${WIDTH:-1024}
HEIGHT=${HEIGHT:-576}
BATCH_SIZE=${BATCH_SIZE:-1}
GRAD_ACCUM=${GRAD_ACCUM:-4}
MAX_TRAIN_STEPS=${MAX_TRAIN_STEPS:-5000}
CHECKPOINTING_STEPS=${CHECKPOINTING_STEPS:-500}
CHECKPOINTS_TOTAL_LIMIT=${CHECKPOINTS_TOTAL_LIMIT:-3}
LEARNING_RATE=${LEARNING_RATE:-5e-5}
LR_WARMUP_STEPS=${LR_WARMUP_STEPS:-100}
LR_SCHEDULER=${LR_SCHEDULER:-constant}
SEED=${SEED:-42}
MIXED_PRECISION=${MIXED_PRECISION:-fp16}
VALIDATION_STEPS=${VALIDATION_STEPS:-200}
VALIDATION_IMAGES_FOLDER=${VALIDATION_IMAGES_FOLDER:-./evaluation/demo_images}
NUM_VALIDATION_IMAGES=${NUM_VALIDATION_IMAGES:-2}
REPORT_TO=${REPORT_TO:-tensorboard}
SCL_LOSS=${SCL_LOSS:-1}
NUM_SCL_SAMPLES=${NUM_SCL_SAMPLES:-3}
NUM_WORKERS=${NUM_WORKERS:-4}
LATENTS_CACHE_DIR=${LATENTS_CACHE_DIR:-}
COMPILE=${COMPILE:-0}

args=(
  --base_folder="$BASE_FOLDER"
  --pretrained_model_name_or_path="$MODEL_NAME"
  --num_frames="$NUM_FRAMES" --width="$WIDTH" --height="$HEIGHT"
  --output_dir="$OUTPUT_DIR"
  --per_gpu_batch_size="$BATCH_SIZE" --gradient_accumulation_steps="$GRAD_ACCUM"
  --max_train_steps="$MAX_TRAIN_STEPS"
  --checkpointing_steps="$CHECKPOINTING_STEPS" --checkpoints_total_limit="$CHECKPOINTS_TOTAL_LIMIT"
  --learning_rate="$LEARNING_RATE" --lr_warmup_steps="$LR_WARMUP_STEPS" --lr_scheduler="$LR_SCHEDULER"
  --seed="$SEED" --mixed_precision="$MIXED_PRECISION"
  --validation_steps="$VALIDATION_STEPS" --num_validation_images="$NUM_VALIDATION_IMAGES"
  --report_to="$REPORT_TO" --num_workers="$NUM_WORKERS"
  --resume_from_checkpoint=latest
)
[ -d "$VALIDATION_IMAGES_FOLDER" ] && args+=(--validation_images_folder="$VALIDATION_IMAGES_FOLDER")
case "$SCL_LOSS" in 1|true|True) args+=(--scl_loss --num_scl_samples="$NUM_SCL_SAMPLES");; esac
case "$COMPILE" in 1|true|True) args+=(--compile);; esac
if [ -n "$LATENTS_CACHE_DIR" ]; then
  accelerate launch --config_file "$CONFIG_FILE" -m genex.cache_latents --pretrained_model_name_or_path="$MODEL_NAME" --base_folder="$BASE_FOLDER" \
    --cache_dir="$LATENTS_CACHE_DIR" --width="$WIDTH" --height="$HEIGHT" --mixed_precision="$MIXED_PRECISION"
  args+=(--latents_cache_dir="$LATENTS_CACHE_DIR")
fi

accelerate launch --config_file "$CONFIG_FILE" train_world_explorer.py "${args[@]}" "$@"
