#!/usr/bin/env bash
# The main job on the embedded default, on any machine with Python and pip (CPU is enough, no
# downloads): installs the requirements, then runs both pipelines end to end on tiny models (their
# VAEs fitted to the demo's frames) and synthetic data that the project makes itself. Outputs go to $DEMO_DIR (demo_output/).
# GENEX_TRAIN_STEPS (default 40) sets GenEx-Explorer's fine-tuning steps: 1200 is the longer run the README reports (its GenEx part took 12 min here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export DEMO_DIR=${DEMO_DIR:-demo_output}
# A rerun of the demo replaces its own earlier results folders (the samplers refuse them otherwise).
export OVERWRITE_OUTPUT_DIR=${OVERWRITE_OUTPUT_DIR:-True}
bash scripts/demo_genex.sh
bash scripts/demo_pecn.sh
# Both evaluations side by side: tiny models on synthetic data, beside the baselines that give them a meaning.
echo
echo "== GenEx-Explorer evaluation ($DEMO_DIR/genex/evaluation/results.md)"
cat "$DEMO_DIR/genex/evaluation/results.md"
echo
echo "== GenEx-Explorer before any UNet training: a random UNet, the same fitted VAE ($DEMO_DIR/genex/evaluation_untrained/results.md)"
grep -m 1 "^| model" "$DEMO_DIR/genex/evaluation_untrained/results.md"
echo
echo "== PECN evaluation ($DEMO_DIR/pecn/test_result/results.md)"
cat "$DEMO_DIR/pecn/test_result/results.md"
echo
echo "== PECN before training: the tiny pipeline's random UNet, the same fitted VAE ($DEMO_DIR/pecn/test_result_untrained/results.md)"
grep -m 1 "overall" "$DEMO_DIR/pecn/test_result_untrained/results.md"
echo
echo "Demo finished. GenEx-Explorer: $DEMO_DIR/genex   PECN: $DEMO_DIR/pecn"
echo "TensorBoard: tensorboard --logdir $DEMO_DIR"
