#!/usr/bin/env bash
# Install what the tests need, then run the whole test suite (CPU, offline, a few minutes).
#   bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh requirements-test.txt
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
HF_HUB_OFFLINE=1 WANDB_MODE=offline "$PYTHON" -m pytest -q "$@"
