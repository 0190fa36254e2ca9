#!/usr/bin/env bash
# Install what the tests need, then run the whole test suite (CPU, offline, a few minutes).
#   bash scripts/test.sh [extra pytest arguments]
# TEST_WORKERS (default 2) pytest-xdist processes share the files out, each test file whole on one worker (its
# fixtures built once), each worker on one OpenMP thread: most of the suite waits on single-threaded interpreter
# starts and tiny models, so two workers use two cores where one process used one. TEST_WORKERS=0: one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh requirements-test.txt
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
TEST_WORKERS=${TEST_WORKERS:-2}
workers=()
if [ "$TEST_WORKERS" != 0 ]; then
  workers=(-n "$TEST_WORKERS" --dist loadfile)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
HF_HUB_OFFLINE=1 WANDB_MODE=offline "$PYTHON" -m pytest -q "${workers[@]}" "$@"
