#!/usr/bin/env bash
# The GPU measurements the training-step issue asks for, on the full-size architectures with random weights
# (no download): SVD-xt at 1024x576x25, bf16, temporal blocks only, batch 1, PyTorch SDPA attention, with and
# without gradient checkpointing, SCL (3 samples, on all 25 frames and on 4) against none, cached latents against live encoding, 8-bit
# Adam, the 16 GiB recipe; InstructPix2Pix at 128x128, batch 16. A run that fails (out of memory, a missing
# package) is reported and the others go on.
#
#   bash bench/run_gpu.sh [output folder]      # default bench_results/train_step_gpu
#
# Each run writes <name>.txt (table and JSON line) and <name>.err; results.jsonl gathers the JSON lines.
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-bench_results/train_step_gpu}
mkdir -p "$OUT_DIR"
SVD=(--pipeline genex --full --width 1024 --height 576 --num_frames 25 --batch_size 1 --mixed_precision bf16 --steps 3 --warmup 1)

run() {
    local name=$1
    shift
    echo "== $name: python -m bench.train_step $*"
    python -m bench.train_step "$@" 2>"$OUT_DIR/$name.err" | tee "$OUT_DIR/$name.txt"
    local status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ]; then
        echo "== $name failed (exit $status); the end of $OUT_DIR/$name.err:"
        tail -n 3 "$OUT_DIR/$name.err"
    fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
run svd_no_checkpointing "${SVD[@]}"
run svd_checkpointing "${SVD[@]}" --gradient_checkpointing
run svd_scl3_vs_none "${SVD[@]}" --gradient_checkpointing --compare scl --num_scl_samples 3
run svd_scl3_4_frames_vs_none "${SVD[@]}" --gradient_checkpointing --compare scl --num_scl_samples 3 --scl_num_frames 4
run svd_cached_vs_live "${SVD[@]}" --gradient_checkpointing --compare cache
# The 16 GiB recipe: checkpointing, 8-bit Adam, cached latents (the image encoder stays off the GPU); fits_16gib says whether it holds.
if python -c "import bitsandbytes" 2>/dev/null; then
    run svd_8bit_adam "${SVD[@]}" --gradient_checkpointing --use_8bit_adam
    run svd_16gib_recipe "${SVD[@]}" --gradient_checkpointing --use_8bit_adam --cached_latents
else
    echo "== bitsandbytes is not installed (pip install bitsandbytes): the recipe runs with 32-bit AdamW instead; 8-bit Adam saves 6 bytes per trainable parameter"
    run svd_16gib_recipe_adamw32 "${SVD[@]}" --gradient_checkpointing --cached_latents
fi
run pecn_128_b16 --pipeline pecn --full --width 128 --batch_size 16 --mixed_precision fp16 --steps 5 --warmup 2
run svd_checkpointing_compiled "${SVD[@]}" --gradient_checkpointing --compile
cat "$OUT_DIR"/*.txt | grep '^{' > "$OUT_DIR/results.jsonl"
echo "== results in $OUT_DIR (results.jsonl: one JSON line per run)"
