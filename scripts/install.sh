#!/usr/bin/env bash
# Install the project's Python requirements into the current environment.
# A torch that is already installed (CUDA or CPU build) is kept: torch is installed only when
# missing, at the version this repository was tested with, so no extra CUDA wheels are pulled.
#   bash scripts/install.sh [requirements file, default requirements.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  echo "Installing torch 2.13.0 (no torch found in $PYTHON's environment)"
  "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -r "${1:-requirements.txt}"
