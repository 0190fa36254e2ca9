"""Reliability of both training scripts under SIGKILL and non-finite losses, through tests/fault_injection.py.

A straight run of N steps and a run killed mid-step, resumed, killed again while writing a checkpoint
and resumed again must end with bit-identical trainable weights, EMA weights, optimizer, schedule and
random streams, and the same checkpoints kept by --checkpoints_total_limit.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import REPO_ROOT, run_or_dump_stacks

HARNESS = REPO_ROOT / "tests" / "fault_injection.py"
STEPS = 6


def harness_env(faults=None) -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT), **(faults or {}))


def start(script, args, faults=None, marker=None):
    env = harness_env(faults)
    if marker is not None:
        env["FAULT_MARKER"] = str(marker)
    return subprocess.Popen([sys.executable, str(HARNESS), script, *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_to_end(script, args, faults=None):
    result = run_or_dump_stacks([sys.executable, str(HARNESS), script, *args], REPO_ROOT, harness_env(faults), timeout=600)
    return result.returncode, result.stdout + result.stderr


def run_until_paused_then_kill(script, args, faults, marker):
    """Start a run that pauses at an injected point, and SIGKILL it there, as a pre-empted job is."""
    process = start(script, args, faults, marker)
    deadline = time.monotonic() + 600
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before reaching the injected pause:\n{process.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, "the run never reached the injected pause"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    marker.unlink()


def checkpoint_state(folder: Path) -> dict:
    """Everything a checkpoint holds that a resumed run continues from, as comparable tensors and values."""
    state = {f"weights/{k}": v for k, v in load_file(str(folder / "0_trainable_weights.safetensors")).items()}
    state |= {f"ema/{k}": v for k, v in load_file(str(folder / "ema_weights.safetensors")).items()}
    state |= {f"generator/{k}": v for k, v in load_file(str(folder / "generator_state_0.safetensors")).items()}
    optimizer = torch.load(folder / "optimizer.bin", weights_only=True)
    for index, param_state in optimizer["state"].items():
        state |= {f"optimizer/{index}/{k}": torch.as_tensor(v) for k, v in param_state.items()}
    scheduler = torch.load(folder / "scheduler.bin", weights_only=True)
    state["scheduler/last_epoch"] = torch.tensor(scheduler["last_epoch"])
    return state


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} of {len(a)} entries differ, e.g. {different[:3]}"


def checkpoint_names(output_dir: Path) -> list[str]:
    return sorted(p.name for p in output_dir.iterdir() if "checkpoint" in p.name)


@pytest.fixture(scope="module")
def pecn_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pecn_kill")
    data = root / "sthv2"
    for module, args in (
        ("pecn.synthetic", ["--output_dir", str(data), "--train_per_class", "2", "--val_per_class", "1"]),
        ("pecn.dataset", ["--data_root", str(data), "--train_per_task", "4", "--val_per_task", "1"]),
        ("pecn.video_loader", ["--data_root", str(data), "--sizes", "32x32", "--num_workers", "1"]),
        ("pecn.tiny", ["--kind", "instruct_pix2pix", "--output_dir", str(root / "model")]),
    ):
        subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, check=True, capture_output=True)
    common = [
        f"--pretrained_model_name_or_path={root / 'model'}", f"--data_root={data}", "--resolution=32", "--train_batch_size=2",
        "--learning_rate=1e-3", "--lr_warmup_steps=0", "--seed=7", "--report_to=tensorboard", "--num_validation_images=0",
    ]
    return {"root": root, "script": "train_instruct_pix2pix.py", "args": common}


@pytest.fixture(scope="module")
def genex_setup(tmp_path_factory):
    from genex.synthetic import render_forward_video
    from genex.tiny import save_tiny_svd_pipeline

    root = tmp_path_factory.mktemp("genex_kill")
    model = save_tiny_svd_pipeline(root / "model")
    for seed in range(3):
        folder = root / "frames" / "realistic" / f"video_{seed:05d}"
        folder.mkdir(parents=True)
        for i, frame in enumerate(render_forward_video(8, 64, 32, seed=seed), start=1):
            Image.fromarray(frame).save(folder / f"frame_{i:04d}.jpg")
    common = [
        f"--base_folder={root / 'frames'}", f"--pretrained_model_name_or_path={model}", "--num_frames=4", "--width=64",
        "--height=32", "--per_gpu_batch_size=1", "--num_workers=0", "--learning_rate=1e-3", "--lr_warmup_steps=0",
        "--seed=7", "--report_to=tensorboard", "--scl_loss", "--num_scl_samples=2",
    ]
    return {"root": root, "script": "train_world_explorer.py", "args": common}


@pytest.mark.parametrize("pipeline", ["pecn_setup", "genex_setup"])
def test_killed_twice_and_resumed_equals_the_straight_run(pipeline, request):
    setup = request.getfixturevalue(pipeline)
    run_args = [*setup["args"], f"--max_train_steps={STEPS}", "--gradient_accumulation_steps=2", "--checkpointing_steps=2",
                "--checkpoints_total_limit=2", "--use_ema", "--resume_from_checkpoint=latest"]
    if setup["script"] == "train_instruct_pix2pix.py":
        run_args.append("--random_flip")
    straight, killed = setup["root"] / "straight", setup["root"] / "killed"
    marker = setup["root"] / "paused"

    code, output = run_to_end(setup["script"], [*run_args, f"--output_dir={straight}"])
    assert code == 0, output[-3000:]
    assert "no checkpoint in" in output and "starting a fresh run" in output

    # Killed in the middle of step 3 (loss calls are micro-steps: 2 per optimizer step), after checkpoint-2.
    args = [*run_args, f"--output_dir={killed}"]
    run_until_paused_then_kill(setup["script"], args, {"FAULT_PAUSE_AT_LOSS_CALL": "5"}, marker)
    assert checkpoint_names(killed) == ["checkpoint-2"]

    # Resumed, then killed while checkpoint-4 is half written: checkpoint-2 must stay the one to resume from.
    run_until_paused_then_kill(setup["script"], args, {"FAULT_PAUSE_IN_SAVE": "4"}, marker)
    assert checkpoint_names(killed) == [".checkpoint-4.partial", "checkpoint-2"]
    assert not (killed / ".checkpoint-4.partial" / "training_state.json").exists()

    code, output = run_to_end(setup["script"], args)
    assert code == 0, output[-3000:]
    assert "Resumed from" in output and "checkpoint-2 at step 2" in output
    assert checkpoint_names(killed) == checkpoint_names(straight) == ["checkpoint-4", "checkpoint-6"]
    assert_bit_identical(checkpoint_state(straight / "checkpoint-6"), checkpoint_state(killed / "checkpoint-6"))
    assert_bit_identical(checkpoint_state(straight / "checkpoint-4"), checkpoint_state(killed / "checkpoint-4"))


@pytest.mark.parametrize("pipeline", ["pecn_setup", "genex_setup"])
def test_nonfinite_losses_update_nothing_and_stop_the_run(pipeline, request):
    setup = request.getfixturevalue(pipeline)
    output_dir = setup["root"] / "nonfinite"
    args = [*setup["args"], "--max_train_steps=10", "--checkpointing_steps=1", "--use_ema", "--max_nonfinite_steps=3", f"--output_dir={output_dir}"]

    # Steps 2, 3 and 4 see a NaN loss: each is skipped and counted; the third in a row stops the run.
    code, output = run_to_end(setup["script"], args, {"FAULT_NAN_LOSS_CALLS": "1,2,3"})
    assert code == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NaN or inf for 3 optimizer steps in a row" in errors[0] and "checkpoint-4" in errors[0], output[-3000:]
    assert "Traceback" not in output
    assert "(3 in a row, 3 in all)" in output
    assert checkpoint_names(output_dir) == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]
    good, after_skips = checkpoint_state(output_dir / "checkpoint-1"), checkpoint_state(output_dir / "checkpoint-4")
    for key in good:
        if key.split("/")[0] in ("weights", "ema", "optimizer"):
            assert torch.equal(good[key], after_skips[key]), key
