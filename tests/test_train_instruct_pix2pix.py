"""train_instruct_pix2pix.py end to end through `accelerate launch`, on tiny pipelines and a synthetic SSv2."""

import os
import re
import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image
from safetensors.torch import load_file

import train_instruct_pix2pix
from bad_inputs_support import unset_accelerate_state
from conftest import REPO_ROOT, one_line_error

RESOLUTION = 32


def run(command, env=None, timeout=600):
    result = subprocess.run(command, cwd=REPO_ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT), **(env or {})),
                            capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def accelerate_launch(script_args):
    return run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO_ROOT / "train_instruct_pix2pix.py"), *script_args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pecn_train")
    data = root / "sthv2"
    run([sys.executable, "-m", "pecn.synthetic", "--output_dir", str(data), "--train_per_class", "2", "--val_per_class", "1"])
    run([sys.executable, "-m", "pecn.dataset", "--data_root", str(data), "--train_per_task", "4", "--val_per_task", "2"])
    run([sys.executable, "-m", "pecn.video_loader", "--data_root", str(data), "--sizes", f"{RESOLUTION}x{RESOLUTION}", "--num_workers", "1"])
    for kind in ("instruct_pix2pix", "text_to_image"):
        run([sys.executable, "-m", "pecn.tiny", "--kind", kind, "--output_dir", str(root / kind)])
    run([sys.executable, "-m", "pecn.tiny", "--output_dir", str(root / "instruct_pix2pix_v"), "--prediction_type", "v_prediction"])
    return {"root": root, "data": data}


def base_args(setup, output_dir, max_train_steps, model="instruct_pix2pix", *extra):
    return [
        f"--pretrained_model_name_or_path={setup['root'] / model}", f"--data_root={setup['data']}",
        f"--resolution={RESOLUTION}", f"--output_dir={output_dir}", "--train_batch_size=2",
        f"--max_train_steps={max_train_steps}", "--learning_rate=1e-3", "--lr_warmup_steps=0", "--seed=42",
        "--report_to=tensorboard", "--num_validation_images=2", "--validation_num_inference_steps=2", *extra,
    ]


@pytest.fixture(scope="module")
def trained(setup):
    output_dir = setup["root"] / "run"
    log = accelerate_launch(base_args(setup, output_dir, 4, "instruct_pix2pix", "--add_progress", "--checkpointing_steps=2",
                                      "--checkpoints_total_limit=1", "--use_ema", "--gradient_accumulation_steps=2"))
    return output_dir, log


def test_checkpoints_rotate(trained):
    output_dir, _ = trained
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-4"]
    assert (output_dir / "checkpoint-4" / "ema_weights.safetensors").is_file()


def test_validation_grids_and_logs(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, _ = trained
    grids = sorted((output_dir / "validation").rglob("*.png"))
    assert len(grids) >= 2
    assert Image.open(grids[0]).size == (3 * RESOLUTION, RESOLUTION)
    # The left third of a grid is the input frame, as extracted.
    events = [EventAccumulator(str(p.parent)).Reload() for p in (output_dir / "logs").rglob("events.out.tfevents.*")]
    scalars = {tag: acc.Scalars(tag) for acc in events for tag in acc.Tags()["scalars"]}
    assert [s.step for s in scalars["loss"]] == [1, 2, 3, 4] and [s.step for s in scalars["grad_norm"]] == [1, 2, 3, 4]
    assert any(tag.startswith("validation/") for acc in events for tag in acc.Tags()["images"])
    assert "Resumed" not in (output_dir / "train.log").read_text() and "pairs" in (output_dir / "train.log").read_text()


def test_train_log_has_a_line_per_optimizer_step_with_the_logged_values(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, log = trained
    lines = [line for line in (output_dir / "train.log").read_text().splitlines() if " - train.steps - " in line]
    assert [line.split("step ", 1)[1].split(":")[0] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    events = [EventAccumulator(str(p.parent)).Reload() for p in (output_dir / "logs").rglob("events.out.tfevents.*")]
    losses = [s.value for acc in events if "loss" in acc.Tags()["scalars"] for s in acc.Scalars("loss")]
    for line, loss in zip(lines, losses):
        fields = line.split(": ", 1)[1].split()
        values = dict(zip(fields[::2], map(float, fields[1::2])))
        assert {"loss", "lr", "grad_norm", "nonfinite_steps"} <= set(values) and values["loss"] == pytest.approx(loss, rel=1e-5)
    # Validation says when it starts; the console shows the progress bar, not the per-step lines.
    assert "Validation after epoch" in log and " - train.steps - " not in log


def test_final_folder_loads_in_diffusers(trained):
    output_dir, _ = trained
    pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(output_dir)
    image = pipeline("Generate a future frame of this action: pushing cup from left to right", image=Image.new("RGB", (RESOLUTION, RESOLUTION)),
                     num_inference_steps=2, output_type="np").images
    assert image.shape == (1, RESOLUTION, RESOLUTION, 3)
    ema = load_file(str(output_dir / "checkpoint-4" / "ema_weights.safetensors"))
    saved = load_file(str(output_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(saved[k], ema[k]) for k in ema)


def test_resume_from_latest_continues_the_run(setup):
    straight, resumed = setup["root"] / "straight", setup["root"] / "resumed"
    # In this process, as fresh processes start (Accelerate's state unset): runs compared with each other need no launcher;
    # the README's accelerate launch of a resume is tests/test_kill_resume.py's.
    for output_dir, steps, resume in ((straight, 4, []), (resumed, 2, []), (resumed, 4, ["--resume_from_checkpoint=latest"])):
        unset_accelerate_state()
        train_instruct_pix2pix.main(base_args(setup, output_dir, steps, "instruct_pix2pix", "--checkpointing_steps=2", "--num_validation_images=0", *resume))
    assert "checkpoint-2 at step 2" in (resumed / "train.log").read_text()
    a = load_file(str(straight / "checkpoint-4" / "0_trainable_weights.safetensors"))
    b = load_file(str(resumed / "checkpoint-4" / "0_trainable_weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_v_prediction_base_trains_on_v_and_keeps_it(setup):
    # The same weights (seed 0) and draws: only the regression target differs, so the first step's loss must too.
    first_losses = {}
    for model in ("instruct_pix2pix", "instruct_pix2pix_v"):
        output_dir = setup["root"] / f"one_step_{model}"
        unset_accelerate_state()
        train_instruct_pix2pix.main(base_args(setup, output_dir, 1, model, "--checkpointing_steps=100", "--num_validation_images=0"))
        first_losses[model] = re.search(r"step 1/1: loss (\S+)", (output_dir / "train.log").read_text()).group(1)
    assert first_losses["instruct_pix2pix"] != first_losses["instruct_pix2pix_v"]
    pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(setup["root"] / "one_step_instruct_pix2pix_v")
    assert pipeline.scheduler.config.prediction_type == "v_prediction"


def test_text_to_image_base_grows_conv_in(setup):
    output_dir = setup["root"] / "from_t2i"
    unset_accelerate_state()
    train_instruct_pix2pix.main(base_args(setup, output_dir, 1, "text_to_image", "--checkpointing_steps=100", "--num_validation_images=1"))
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(output_dir, subfolder="unet")
    assert unet.config.in_channels == 8 and unet.conv_in.weight.shape[1] == 8


def test_quick_test_script_runs_the_whole_path(tmp_path):
    log = run(["bash", "scripts/test_train_instruct_pix2pix.sh"],
              env={"DATA_ROOT": str(tmp_path / "none"), "WORK_DIR": str(tmp_path / "work"), "RESOLUTION": str(RESOLUTION),
                   "OUTPUT_DIR": str(tmp_path / "out"), "MAX_TRAIN_STEPS": "2", "PROGRESS": "True"})
    assert "Log:" in log and str(tmp_path / "out") in log
    assert (tmp_path / "out" / "train.log").is_file() and (tmp_path / "out" / "model_index.json").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--input_frame_idx=21", "--target_frame_idx=20"], "--target_frame_idx"),
    (["--target_frame_idx=500"], "no pair of frames 20 -> 500"),
    (["--pretrained_model_name_or_path=./missing/model"], "folder does not exist"),
])
def test_bad_input_is_a_one_line_error(setup, tmp_path, flags, message, capsys, monkeypatch):
    # In this process, as a fresh one starts: the script's main through run_cli, Accelerate's state unset.
    monkeypatch.chdir(REPO_ROOT)
    unset_accelerate_state()
    assert message in one_line_error(train_instruct_pix2pix.main, [*base_args(setup, tmp_path / "x", 1), *flags], capsys)


def test_mirror_prompt_swaps_left_and_right():
    from pecn.pairs import mirror_prompt

    assert mirror_prompt("pushing cup from left to right") == "pushing cup from right to left"
    assert mirror_prompt("moving cup up") == "moving cup up"
    assert mirror_prompt("Pulling pen from right to left. And 60% of the action has been completed.") == (
        "Pulling pen from left to right. And 60% of the action has been completed.")
    assert mirror_prompt("Left, right.") == "Right, left."
