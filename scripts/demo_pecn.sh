#!/usr/bin/env bash
# PECN on the embedded default: synthetic SSv2 (webm + JSON), filtering, frame extraction, a tiny
# InstructPix2Pix pipeline whose VAE is fitted to the training frames, progress-enhanced training with
# validation, then sampling with the results table. Rerunnable: the data steps skip what is done, and training
# passes --overwrite_output_dir, so a rerun replaces the demo's earlier model in $OUT/instruct_pix2pix_64.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_DIR:-demo_output}/pecn
export HF_HUB_OFFLINE=1

echo "== PECN: synthetic SSv2 in $OUT"
python -m pecn.synthetic --output_dir "$OUT/sthv2"

echo "== python -m pecn.dataset / python -m pecn.video_loader"
python -m pecn.dataset --data_root "$OUT/sthv2" --train_per_task 8 --val_per_task 2
python -m pecn.video_loader --data_root "$OUT/sthv2" --sizes 64x64 --num_workers 2

echo "== tiny InstructPix2Pix pipeline (a 4x-downsampling VAE, a v-prediction UNet), the VAE fitted to the training videos' frames (a random VAE decodes only noise)"
# The VAE is the ceiling of every prediction: 1000 steps of 4 frames at 5e-4 reach 31.4 dB on the validation pairs, where 1500
# steps of 2 at 2e-3 (about the same time) reached 29.1. v-prediction (as SD 2.x): the random UNet learns in minutes what to predict at
# t = 999, where sampling starts; with epsilon its error reaches the estimated target 15 times larger (300 steps under the earlier VAE: 23.6 dB, v: 28.4).
python -m pecn.tiny --kind instruct_pix2pix --output_dir "$OUT/tiny_instruct_pix2pix" --vae_block_out_channels 16 32 64 --prediction_type v_prediction \
  --fit_vae_frames "$OUT/sthv2/frames_64x64" --fit_vae_annotations "$OUT/sthv2/annotations/train_filtered.json" \
  --fit_vae_steps 1000 --fit_vae_batch_size 4 --fit_vae_learning_rate 5e-4

echo "== train_instruct_pix2pix.py (600 steps, progress prompts, checkpoint at step 300, validation grids at epochs 60 and 120, the end;"
echo "   --overwrite_output_dir: a rerun of the demo replaces its earlier run in $OUT/instruct_pix2pix_64)"
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no train_instruct_pix2pix.py \
  --pretrained_model_name_or_path="$OUT/tiny_instruct_pix2pix" --data_root="$OUT/sthv2" --resolution=64 \
  --input_frame_idx=20 --target_frame_idx=21 --add_progress --output_dir="$OUT/instruct_pix2pix_64" \
  --train_batch_size=4 --max_train_steps=600 --checkpointing_steps=300 --checkpoints_total_limit=1 \
  --learning_rate=1e-3 --lr_warmup_steps=0 --validation_epochs=60 --num_validation_images=2 \
  --validation_num_inference_steps=10 --mixed_precision=no --report_to=tensorboard --seed=42 --overwrite_output_dir

# The trained model, then the tiny pipeline before training (the same fitted VAE, a random UNet): the row it improves on.
for run in "instruct_pix2pix_64 test_result" "tiny_instruct_pix2pix test_result_untrained"; do
  read -r model results <<< "$run"
  echo "== sample_from_pix2pix.sh ($OUT/$model)"
  MODEL_DIR="$OUT/$model" FRAMES_DIR="$OUT/sthv2/frames_64x64" \
  VAL_ANNOTATIONS="$OUT/sthv2/annotations/val_filtered.json" OUTPUT_DIR="$OUT/$results" \
  PROGRESS=True NUM_SAMPLES=all NUM_INFERENCE_STEPS=10 bash scripts/sample_from_pix2pix.sh
done

# Where the model loses against the ceiling: its one-step estimate of the target at each noise level (sampling starts at t = 999).
echo "== python -m pecn.denoising ($OUT/instruct_pix2pix_64)"
# Written beside, then renamed: a run that fails leaves the earlier table whole.
python -m pecn.denoising --model_dir "$OUT/instruct_pix2pix_64" --frames_dir "$OUT/sthv2/frames_64x64" \
  --val_annotations "$OUT/sthv2/annotations/val_filtered.json" --resolution 64 --add_progress > "$OUT/denoising.md.partial"
mv "$OUT/denoising.md.partial" "$OUT/denoising.md"
cat "$OUT/denoising.md"
