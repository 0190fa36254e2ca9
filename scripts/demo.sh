#!/usr/bin/env bash
# The main job on the embedded default, on any machine with Python and pip (CPU is enough, no
# downloads): installs the requirements, then runs both pipelines end to end on tiny random
# models and synthetic data that the project makes itself. Outputs go to $DEMO_DIR (demo_output/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export DEMO_DIR=${DEMO_DIR:-demo_output}
# A rerun of the demo replaces its own earlier results folders (the samplers refuse them otherwise).
export OVERWRITE_OUTPUT_DIR=${OVERWRITE_OUTPUT_DIR:-True}
bash scripts/demo_genex.sh
bash scripts/demo_pecn.sh
echo
echo "Demo finished. GenEx-Explorer: $DEMO_DIR/genex   PECN: $DEMO_DIR/pecn"
echo "TensorBoard: tensorboard --logdir $DEMO_DIR"
