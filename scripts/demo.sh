#!/usr/bin/env bash
# The main job on the embedded default, on any machine with Python and pip (CPU is enough, no
# downloads): installs the requirements, then runs both pipelines end to end, side by side, on tiny models (their
# VAEs fitted to the demo's frames) and synthetic data that the project makes itself. Outputs go to $DEMO_DIR (demo_output/).
# GENEX_TRAIN_STEPS (default 40) sets GenEx-Explorer's fine-tuning steps: 1200 is the longer run the README reports (its GenEx part took 12 min here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export DEMO_DIR=${DEMO_DIR:-demo_output}
# A rerun of the demo replaces its own earlier results folders (the samplers refuse them otherwise).
export OVERWRITE_OUTPUT_DIR=${OVERWRITE_OUTPUT_DIR:-True}
source scripts/demo_genex_steps.sh
# The two pipelines run side by side, one OpenMP thread each: their tiny models gain little from a second thread (PECN's VAE
# fit ran 11.4 steps/s on one, 12.3 on two), so the demo takes about the longer part's time instead of the sum of both.
# PECN writes to a log; set -m gives it its own process group, so that a failure or Ctrl-C here stops all of it.
mkdir -p "$DEMO_DIR"
PECN_LOG=$DEMO_DIR/demo_pecn.log
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
set -m
bash scripts/demo_pecn.sh > "$PECN_LOG" 2>&1 &
pecn=$!
set +m
trap 'kill -- -$pecn 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM
echo "== PECN runs alongside GenEx-Explorer, its output in $PECN_LOG (tail -f it to follow)"
bash scripts/demo_genex.sh
echo "== GenEx-Explorer done; waiting for PECN ($PECN_LOG)"
wait $pecn || { status=$?; echo "error: the PECN part failed (exit $status); the end of $PECN_LOG:" >&2; tail -n 15 "$PECN_LOG" >&2; exit $status; }
trap - EXIT
# Both evaluations side by side: tiny models on synthetic data, beside the baselines that give them a meaning.
echo
echo "== GenEx-Explorer evaluation ($DEMO_DIR/genex/evaluation/results.md)"
cat "$DEMO_DIR/genex/evaluation/results.md"
echo
echo "== GenEx-Explorer before any UNet training: a random UNet, the same fitted VAE ($DEMO_DIR/genex/evaluation_untrained/results.md)"
grep -m 1 "^| model" "$DEMO_DIR/genex/evaluation_untrained/results.md"
echo
echo "== GenEx-Explorer's EDM loss on fixed draws, by step ($DEMO_DIR/genex/genex_explorer/train.log: the step losses swing with the sigma drawn)"
grep -o "step [0-9]*: loss_edm_fixed_draws [0-9.e+-]*" "$DEMO_DIR/genex/genex_explorer/train.log" | awk '{printf "%s%.4f   ", $2, $4}' | fold -s -w 110
echo
echo
echo "== PECN evaluation ($DEMO_DIR/pecn/test_result/results.md)"
cat "$DEMO_DIR/pecn/test_result/results.md"
echo
echo "== PECN before training: the tiny pipeline's random UNet, the same fitted VAE ($DEMO_DIR/pecn/test_result_untrained/results.md)"
grep -m 1 "overall" "$DEMO_DIR/pecn/test_result_untrained/results.md"
echo
echo "== PECN: the model's one-step estimates of the target by noise level, against the VAE ($DEMO_DIR/pecn/denoising.md)"
tail -n +3 "$DEMO_DIR/pecn/denoising.md"
echo
echo "Demo finished. GenEx-Explorer: $DEMO_DIR/genex   PECN: $DEMO_DIR/pecn"
echo "TensorBoard: tensorboard --logdir $DEMO_DIR"
