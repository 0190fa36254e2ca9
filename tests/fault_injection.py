"""Run a training script with faults injected, for the reliability tests (never used by the scripts themselves).

    python tests/fault_injection.py train_instruct_pix2pix.py --flags...

Environment variables choose the faults:
  FAULT_NAN_LOSS_CALLS=3,4   the loss of these training loss calls (0-based, one per micro-step) is NaN
  FAULT_PAUSE_AT_LOSS_CALL=5 at this loss call, write FAULT_MARKER and wait there to be killed
  FAULT_PAUSE_IN_SAVE=4      while writing checkpoint 4 (files partly written), write FAULT_MARKER and wait to be killed
"""

import os
import runpy
import sys
import time
from pathlib import Path

from conftest import REPO_ROOT  # also puts the repository on sys.path, for the scripts run here


def call_numbers(name: str) -> set[int]:
    return {int(part) for part in os.environ.get(name, "").split(",") if part.strip()}


def wait_to_be_killed() -> None:
    Path(os.environ["FAULT_MARKER"]).write_text(str(os.getpid()))
    while True:
        time.sleep(1)


def faulty_loss(loss_fn):
    """`loss_fn` whose result is NaN on the chosen calls (keeping the graph, so backward runs as usual)."""
    nan_calls, pause_call = call_numbers("FAULT_NAN_LOSS_CALLS"), call_numbers("FAULT_PAUSE_AT_LOSS_CALL")
    calls = iter(range(sys.maxsize))

    def loss(*args, **kwargs):
        value = loss_fn(*args, **kwargs)
        number = next(calls)
        if number in pause_call:
            wait_to_be_killed()
        return value * float("nan") if number in nan_calls else value

    return loss


def install_faults(script: str) -> None:
    import common.checkpoints as checkpoints

    if script == "train_instruct_pix2pix.py":
        import torch.nn.functional

        torch.nn.functional.mse_loss = faulty_loss(torch.nn.functional.mse_loss)
    else:
        # genex.spherical keeps its own reference to edm_loss: only the training loss of the script is faulted.
        import genex.edm
        import genex.spherical  # noqa: F401

        genex.edm.edm_loss = faulty_loss(genex.edm.edm_loss)

    pause_step = os.environ.get("FAULT_PAUSE_IN_SAVE")
    if pause_step:
        save_file = checkpoints.save_file

        def save_file_then_pause(tensors, path, *args, **kwargs):
            save_file(tensors, path, *args, **kwargs)
            if f".checkpoint-{pause_step}." in str(path):
                wait_to_be_killed()

        checkpoints.save_file = save_file_then_pause


if __name__ == "__main__":
    script = sys.argv[1]
    install_faults(Path(script).name)
    sys.argv = sys.argv[1:]
    runpy.run_path(str(REPO_ROOT / script), run_name="__main__")
