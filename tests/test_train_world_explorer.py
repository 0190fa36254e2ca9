"""train_world_explorer.py end to end through `accelerate launch`, on a tiny SVD and synthetic frames."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import train_world_explorer
from bad_inputs_support import unset_accelerate_state
from common.files import new_file_mode
from conftest import REPO_ROOT, accelerate_launch, one_line_error
from genex.synthetic import render_forward_video, write_validation_panoramas
from genex.tiny import save_tiny_svd_pipeline

WIDTH, HEIGHT, NUM_FRAMES = 64, 32, 4


def train(script_args, num_processes=1, script=REPO_ROOT / "train_world_explorer.py", **launch):
    """Run the training script through `accelerate launch`, the way users do; returns the combined output (fails the test on error)."""
    result = accelerate_launch([script, *script_args], num_processes, **launch)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def train_here(script_args):
    """Run the training script's main in this process, as a fresh process starts it (Accelerate's state unset): for runs compared
    with each other, where `accelerate launch` would only add an interpreter start (~9 s) per run."""
    unset_accelerate_state()
    train_world_explorer.main(script_args)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("genex_train")
    model = save_tiny_svd_pipeline(root / "tiny_svd")
    for scene, seeds in (("realistic", (0, 1)), ("anime", (2,))):
        for seed in seeds:
            folder = root / "frames" / scene / f"video_{seed:05d}"
            folder.mkdir(parents=True)
            for i, frame in enumerate(render_forward_video(8, WIDTH, HEIGHT, seed=seed), start=1):
                Image.fromarray(frame).save(folder / f"frame_{i:04d}.jpg")
    panoramas = write_validation_panoramas(root / "validation", count=2, width=WIDTH, height=HEIGHT)
    return {"root": root, "model": model, "frames": root / "frames", "validation": panoramas[0].parent}


def base_args(setup, output_dir, max_train_steps, *extra):
    return [
        f"--base_folder={setup['frames']}", f"--pretrained_model_name_or_path={setup['model']}",
        f"--num_frames={NUM_FRAMES}", f"--width={WIDTH}", f"--height={HEIGHT}", f"--output_dir={output_dir}",
        "--per_gpu_batch_size=1", f"--max_train_steps={max_train_steps}", "--learning_rate=1e-3",
        "--lr_warmup_steps=0", "--seed=123", "--num_workers=0", "--report_to=tensorboard", *extra,
    ]


@pytest.fixture(scope="module")
def trained(setup):
    """4 steps with SCL, EMA, accumulation, checkpoint rotation, validation and the fixed-draw loss at step 2 and the end."""
    output_dir = setup["root"] / "run"
    log = train(base_args(
        setup, output_dir, 4, "--gradient_accumulation_steps=2", "--checkpointing_steps=2", "--checkpoints_total_limit=1",
        "--validation_steps=2", f"--validation_images_folder={setup['validation']}", "--num_validation_images=1",
        "--validation_num_inference_steps=2", "--scl_loss", "--num_scl_samples=2", "--use_ema", "--max_grad_norm=1.0",
        "--gradient_checkpointing", "--fixed_draw_loss_steps=2", "--fixed_draw_loss_clips=2",
    ))
    return output_dir, log


def test_checkpoints_rotate_and_hold_only_trainable_weights(trained):
    output_dir, _ = trained
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-4"]
    assert not list(output_dir.glob(".checkpoint-*"))
    weights = load_file(str(output_dir / "checkpoint-4" / "0_trainable_weights.safetensors"))
    assert weights and all("temporal_transformer_block" in name for name in weights)
    assert (output_dir / "checkpoint-4" / "ema_weights.safetensors").is_file()


def test_validation_videos_are_playable_mp4(trained):
    output_dir, _ = trained
    for step in (2, 4):
        videos = list((output_dir / "validation" / f"step_{step}").glob("*.mp4"))
        assert len(videos) == 1
        with av.open(str(videos[0])) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == NUM_FRAMES and frames[0].shape == (HEIGHT, WIDTH, 3)


def test_tensorboard_holds_the_loss(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, _ = trained
    events = [EventAccumulator(str(p.parent)).Reload() for p in (output_dir / "logs").rglob("events.out.tfevents.*")]
    scalars = {tag: acc.Scalars(tag) for acc in events for tag in acc.Tags()["scalars"]}
    assert [s.step for s in scalars["loss"]] == [1, 2, 3, 4]
    assert all(np.isfinite(s.value) for s in scalars["loss"])
    assert {"loss_edm", "loss_scl", "scl_beta", "lr", "grad_norm"} <= set(scalars)
    # The fixed-draw loss before the first step, then every 2 steps.
    assert [s.step for s in scalars["loss_edm_fixed_draws"]] == [0, 2, 4]
    assert all(np.isfinite(s.value) for s in scalars["loss_edm_fixed_draws"])
    images = {tag for acc in events for tag in acc.Tags()["images"]}
    assert any(tag.startswith("validation/") for tag in images)


def test_train_log_has_every_optimizer_step_and_validation_says_it_starts(trained):
    output_dir, log = trained
    steps = [line for line in (output_dir / "train.log").read_text().splitlines() if " - train.steps - " in line]
    assert [line.split("step ", 1)[1].split(":")[0] for line in steps] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(f" {name} " in line for line in steps for name in ("loss", "loss_edm", "loss_scl", "scl_beta", "lr", "grad_norm"))
    assert log.count("Validation at step 2: 1 video(s)") == 1 and "Validation at step 4" in log
    fixed = [line for line in (output_dir / "train.log").read_text().splitlines() if "loss_edm_fixed_draws" in line]
    assert [line.split("step ", 1)[1].split(":")[0] for line in fixed] == ["0", "2", "4"]
    assert all("(2 clips, the same draws at every evaluation)" in line for line in fixed)


def test_final_folder_is_an_svd_pipeline_with_frozen_weights_unchanged(trained, setup):
    from diffusers import StableVideoDiffusionPipeline

    output_dir, _ = trained
    trained_unet = load_file(str(output_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    base_unet = load_file(str(Path(setup["model"]) / "unet" / "diffusion_pytorch_model.safetensors"))
    assert trained_unet.keys() == base_unet.keys()
    frozen = [k for k in base_unet if "temporal_transformer_block" not in k]
    temporal = [k for k in base_unet if "temporal_transformer_block" in k]
    assert all(torch.equal(trained_unet[k], base_unet[k]) for k in frozen)
    assert any(not torch.equal(trained_unet[k], base_unet[k]) for k in temporal)
    # The saved temporal blocks are the EMA weights of the last checkpoint.
    ema = load_file(str(output_dir / "checkpoint-4" / "ema_weights.safetensors"))
    assert all(torch.equal(trained_unet[k], ema[k]) for k in temporal)
    for component in ("vae", "image_encoder"):
        for name in os.listdir(Path(setup["model"]) / component):
            if name.endswith(".safetensors"):
                a, b = load_file(str(Path(setup["model"]) / component / name)), load_file(str(output_dir / component / name))
                assert all(torch.equal(a[k], b[k]) for k in a)

    # What the sampler takes as its defaults, and files a teammate may read as the umask allows (safetensors alone writes 0600).
    assert json.loads((output_dir / "trained_settings.json").read_text()) == {
        "width": WIDTH, "height": HEIGHT, "num_frames": NUM_FRAMES, "fps": 7, "motion_bucket_id": 127, "pretrained_model_name_or_path": str(setup["model"])}
    weights = [*output_dir.glob("*/*.safetensors"), *output_dir.glob("checkpoint-*/*.safetensors")]
    assert weights and {stat.S_IMODE(p.stat().st_mode) for p in weights} == {new_file_mode()}

    pipeline = StableVideoDiffusionPipeline.from_pretrained(output_dir)
    frames = pipeline(Image.new("RGB", (WIDTH, HEIGHT), "gray"), height=HEIGHT, width=WIDTH, num_frames=3,
                      num_inference_steps=2, decode_chunk_size=3, output_type="np").frames
    assert frames.shape == (1, 3, HEIGHT, WIDTH, 3)


@pytest.fixture(scope="module")
def straight(setup):
    """4 plain steps from the frames."""
    output_dir = setup["root"] / "straight"
    train_here(base_args(setup, output_dir, 4, "--checkpointing_steps=2"))
    return output_dir


def scalars(output_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(p.parent)).Reload() for p in (output_dir / "logs").rglob("events.out.tfevents.*")]
    return [(s.step, s.value) for acc in events if tag in acc.Tags()["scalars"] for s in acc.Scalars(tag)]


def test_resume_from_latest_continues_the_run(setup, straight):
    """A 2-step run resumed to 4 steps ends bit for bit where a straight 4-step run ends."""
    resumed = setup["root"] / "resumed"
    train_here(base_args(setup, resumed, 2, "--checkpointing_steps=2"))
    train_here(base_args(setup, resumed, 4, "--checkpointing_steps=2", "--resume_from_checkpoint=latest"))
    log = (resumed / "train.log").read_text()
    assert "Resumed from" in log and "checkpoint-2 at step 2" in log
    a = load_file(str(straight / "checkpoint-4" / "0_trainable_weights.safetensors"))
    b = load_file(str(resumed / "checkpoint-4" / "0_trainable_weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_fixed_draw_loss_leaves_the_training_as_it_was(setup, straight):
    """Its draws come from a generator of their own: the run's losses and weights are those of the run without it, bit for bit."""
    output_dir = setup["root"] / "fixed_draws"
    train_here(base_args(setup, output_dir, 4, "--checkpointing_steps=2", "--fixed_draw_loss_steps=3"))
    assert scalars(output_dir, "loss") == scalars(straight, "loss")
    assert [step for step, _ in scalars(output_dir, "loss_edm_fixed_draws")] == [0, 3, 4]
    a = load_file(str(straight / "checkpoint-4" / "0_trainable_weights.safetensors"))
    b = load_file(str(output_dir / "checkpoint-4" / "0_trainable_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def build_cache(setup, cache_dir, num_processes=1) -> str:
    """python -m genex.cache_latents over the frames: as one plain process, or through accelerate launch; returns its output."""
    command = ["-m", "genex.cache_latents", f"--pretrained_model_name_or_path={setup['model']}", f"--base_folder={setup['frames']}",
               f"--cache_dir={cache_dir}", f"--width={WIDTH}", f"--height={HEIGHT}"]
    if num_processes > 1:
        result = accelerate_launch(command, num_processes)
    else:
        result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT)),
                                capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def cached_run(setup):
    """2 steps from the latent cache that one process built; returns (cache folder, output folder)."""
    cache_dir, output_dir = setup["root"] / "latent_cache", setup["root"] / "cached"
    build_cache(setup, cache_dir)
    train_here(base_args(setup, output_dir, 2, "--checkpointing_steps=100", f"--latents_cache_dir={cache_dir}"))
    return cache_dir, output_dir


def test_cached_latents_make_the_same_draws_as_the_frames(setup, straight, cached_run, capsys):
    """With --latents_cache_dir the run draws the same z0 and noise as from the frames: equal losses up to fp16 rounding."""
    cache_dir, output_dir = cached_run
    cached, frames = scalars(output_dir, "loss_edm"), scalars(straight, "loss_edm")[:2]
    assert [step for step, _ in cached] == [step for step, _ in frames] == [1, 2]
    for (_, a), (_, b) in zip(cached, frames):
        assert a == pytest.approx(b, rel=1e-2) and a != b  # fp16 statistics: close, not bit-equal

    # The cache does not fit another resolution: refused in one line that says how to rebuild it.
    unset_accelerate_state()
    refused = one_line_error(train_world_explorer.main, [*base_args(setup, setup["root"] / "cached_refused", 1), f"--latents_cache_dir={cache_dir}",
                                                         f"--width={2 * WIDTH}"], capsys)
    assert "this run needs" in refused and "python -m genex.cache_latents" in refused


def test_a_cache_built_by_two_processes_trains_as_the_one_process_cache(setup, cached_run):
    """The cache of a 2-process accelerate launch gives the training of the 1-process cache: same losses, same weights, bit for bit."""
    one_cache, one_run = cached_run
    two_cache, two_run = setup["root"] / "latent_cache_two_processes", setup["root"] / "cached_two_processes"
    assert "by 2 process(es)" in build_cache(setup, two_cache, num_processes=2)
    train_here(base_args(setup, two_run, 2, "--checkpointing_steps=100", f"--latents_cache_dir={two_cache}"))
    for tag in ("loss", "loss_edm"):
        assert scalars(two_run, tag) == scalars(one_run, tag) and len(scalars(one_run, tag)) == 2
    weights = [load_file(str(run / "unet" / "diffusion_pytorch_model.safetensors")) for run in (one_run, two_run)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.fixture(scope="module")
def ddp_run(setup):
    """4 steps on two CPU processes over gloo, a checkpoint every 2 and the fixed-draw loss (main process) every 2; returns (output folder, log)."""
    output_dir = setup["root"] / "ddp"
    return output_dir, train(base_args(setup, output_dir, 4, "--checkpointing_steps=2", "--fixed_draw_loss_steps=2"), num_processes=2)


def test_two_processes_keep_weights_in_sync(ddp_run):
    output_dir, log = ddp_run
    assert "MULTI_CPU" in log and "Num processes: 2" in log
    checksums = re.search(r"trainable weight checksum per process: \[([^\]]+)\]", log).group(1).split(",")
    assert len(checksums) == 2 and float(checksums[0]) == float(checksums[1])
    assert (output_dir / "model_index.json").is_file()
    # Each log line once, from the main process; train.log has the loss of every optimizer step.
    assert log.count("optimizer steps, batch 1 x 2 processes") == 1 and log.count("Saved the trained pipeline") == 1
    steps = [line for line in (output_dir / "train.log").read_text().splitlines() if " - train.steps - " in line]
    assert [line.split("step ", 1)[1].split(":")[0] for line in steps] == ["1/4", "2/4", "3/4", "4/4"] and all(" loss " in line for line in steps)
    fixed = [line for line in (output_dir / "train.log").read_text().splitlines() if "loss_edm_fixed_draws" in line]
    assert [line.split("step ", 1)[1].split(":")[0] for line in fixed] == ["0", "2", "4"]


def checkpoint_files(folder: Path) -> dict:
    """What a resumed run continues from, per file: weights and each process's generator (safetensors), optimizer and schedule."""
    state = {name: load_file(str(folder / name)) for name in ("0_trainable_weights.safetensors", "generator_state_0.safetensors",
                                                               "generator_state_1.safetensors")}
    state |= {name: torch.load(folder / name, weights_only=True) for name in ("optimizer.bin", "scheduler.bin")}
    return state


def test_two_processes_resume_from_the_shared_output_folder(setup, ddp_run):
    """Resumed from the 2-process run's checkpoint-2, two processes reach its checkpoint-4 bit for bit."""
    output_dir, _ = ddp_run
    resumed = setup["root"] / "ddp_resumed"
    log = train(base_args(setup, resumed, 4, "--checkpointing_steps=2", f"--resume_from_checkpoint={output_dir / 'checkpoint-2'}"), num_processes=2)
    assert "checkpoint-2 at step 2" in log
    straight, again = checkpoint_files(output_dir / "checkpoint-4"), checkpoint_files(resumed / "checkpoint-4")
    for name in ("0_trainable_weights.safetensors", "generator_state_0.safetensors", "generator_state_1.safetensors"):
        assert straight[name].keys() == again[name].keys() and all(torch.equal(straight[name][k], again[name][k]) for k in straight[name]), name
    assert straight["scheduler.bin"]["last_epoch"] == again["scheduler.bin"]["last_epoch"]
    for index, param_state in straight["optimizer.bin"]["state"].items():
        assert all(torch.equal(torch.as_tensor(value), torch.as_tensor(again["optimizer.bin"]["state"][index][key])) for key, value in param_state.items())


def test_a_checkpoint_another_process_cannot_see_stops_every_process_in_one_line(setup, ddp_run):
    """Process 1 works in another folder (tests/fault_injection.py), so the relative --output_dir that holds the main process's
    checkpoints is, for it, an empty folder: as on a second machine whose disk is not shared."""
    output_dir, _ = ddp_run
    shared, elsewhere = setup["root"] / "blind" / "main_machine", setup["root"] / "blind" / "other_machine"
    shutil.copytree(output_dir, shared / "ddp")
    elsewhere.mkdir(parents=True)
    args = base_args(setup, "ddp", 6, "--checkpointing_steps=2", "--resume_from_checkpoint=latest")
    result = accelerate_launch([REPO_ROOT / "tests" / "fault_injection.py", "train_world_explorer.py", *args], num_processes=2, cwd=shared,
                               env={"FAULT_CWD_OF_RANK_1": str(elsewhere)})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # Every process stops with the same line (accelerate's launcher then reports the failed processes in its own words). The two
    # processes write to one pipe at the same moment, so their lines may run together: count the message, not the lines.
    message = ("error: ddp/checkpoint-4: the main process resumes from it, but process(es) 1 of 2 do not see it (or see another "
               "checkpoint) in their --output_dir ddp; checkpoints are written by the main process only: put --output_dir on a "
               'filesystem every machine shares (README, "Scaling out")')
    assert output.count("error: ") == 2 and output.count(message) == 2, output[-4000:]
    assert f'File "{REPO_ROOT}' not in output  # no traceback from the script's processes
    assert not (elsewhere / "ddp").exists() or not list((elsewhere / "ddp").glob("checkpoint-*"))
    assert sorted(p.name for p in (shared / "ddp").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def checkpoint_tensors(folder: Path) -> dict:
    """The trainable weights and the generator of a 1-process checkpoint."""
    return {f"{name}/{key}": value for name in ("0_trainable_weights", "generator_state_0")
            for key, value in load_file(str(folder / f"{name}.safetensors")).items()}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_scl_num_frames_equal_to_the_clip_reproduces_the_default_run_and_fewer_frames_resume_exactly(setup):
    scl = ["--scl_loss", "--num_scl_samples=1", "--checkpointing_steps=2"]
    runs = {name: setup["root"] / f"scl_frames_{name}" for name in ("default", "all", "two", "two_resumed")}
    train_here(base_args(setup, runs["default"], 2, *scl))
    train_here(base_args(setup, runs["all"], 2, *scl, f"--scl_num_frames={NUM_FRAMES}"))
    train_here(base_args(setup, runs["two"], 4, *scl, "--scl_num_frames=2"))
    train_here(base_args(setup, runs["two_resumed"], 4, *scl, "--scl_num_frames=2", f"--resume_from_checkpoint={runs['two'] / 'checkpoint-2'}"))
    assert "checkpoint-2 at step 2" in (runs["two_resumed"] / "train.log").read_text()
    default, every = (checkpoint_tensors(runs[name] / "checkpoint-2") for name in ("default", "all"))
    assert same_tensors(default, every)
    assert scalars(runs["default"], "loss") == scalars(runs["all"], "loss")
    # Two of the four frames: other draws (the frames come from the run's generator), another loss, and a resume that
    # continues those draws bit for bit.
    two = checkpoint_tensors(runs["two"] / "checkpoint-2")
    assert not torch.equal(two["generator_state_0/state"], default["generator_state_0/state"])
    assert scalars(runs["two"], "loss_scl")[0] != scalars(runs["default"], "loss_scl")[0]
    assert same_tensors(checkpoint_tensors(runs["two"] / "checkpoint-4"), checkpoint_tensors(runs["two_resumed"] / "checkpoint-4"))


def test_sampler_writes_video_at_the_panorama_aspect(trained, setup, tmp_path):
    output_dir, _ = trained
    panorama = tmp_path / "pano.png"
    Image.fromarray(render_forward_video(1, 2 * WIDTH, WIDTH, seed=5)[0]).save(panorama)
    out = tmp_path / "walk.mp4"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "sample_world_explorer.py"), "--model_dir", str(output_dir), "--panorama", str(panorama),
         "--output", str(out), "--width", str(WIDTH), "--height", str(HEIGHT), "--num_frames", "3",
         "--num_inference_steps", "2", "--decode_chunk_size", "3", "--yaw", "90", "--device", "cpu"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (WIDTH // 2, WIDTH, 3)


@pytest.mark.parametrize("flags, message", [
    (["--validation_images_folder=/nonexistent/panoramas"], "validation images folder does not exist"),
    (["--num_scl_samples=0"], "--num_scl_samples"),
    ([f"--scl_num_frames={NUM_FRAMES + 1}", "--scl_loss"], f"--scl_num_frames {NUM_FRAMES + 1} must be between 1 and --num_frames {NUM_FRAMES}"),
    (["--scl_num_frames=2"], "--scl_num_frames chooses the frames of the spherical contrastive loss: add --scl_loss"),
    (["--pretrained_model_name_or_path=./missing/svd"], "folder does not exist"),
    (["--width=66"], "must be multiples of"),
    (["--fixed_draw_loss_steps=-1"], "--fixed_draw_loss_steps must be at least 0, got -1"),
    (["--fixed_draw_loss_clips=0"], "--fixed_draw_loss_clips must be at least 1, got 0"),
])
def test_bad_flags_are_one_line_errors(setup, tmp_path, flags, message, capsys, monkeypatch):
    # In this process, as a fresh one starts: the script's main through run_cli, Accelerate's state unset.
    monkeypatch.chdir(REPO_ROOT)
    unset_accelerate_state()
    assert message in one_line_error(train_world_explorer.main, [*base_args(setup, tmp_path / "x", 1), *flags], capsys)


def test_xformers_requested_but_missing_is_a_clear_error(setup, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed here")
    unset_accelerate_state()
    message = one_line_error(train_world_explorer.main, [*base_args(setup, tmp_path / "x", 1), "--enable_xformers_memory_efficient_attention"], capsys)
    assert "xformers is not installed" in message


def test_bf16_mixed_precision_keeps_frozen_weights_exact(setup):
    """Frozen modules are held in bf16 during training; the saved model still has the base's fp32 values."""
    output_dir = setup["root"] / "bf16"
    train_here(base_args(setup, output_dir, 1, "--checkpointing_steps=100", "--scl_loss", "--num_scl_samples=1",
                                f"--validation_images_folder={setup['validation']}", "--validation_num_inference_steps=2")
                      + ["--mixed_precision=bf16"])
    trained_unet = load_file(str(output_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    base_unet = load_file(str(Path(setup["model"]) / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(trained_unet[k].dtype == torch.float32 for k in trained_unet)
    assert all(torch.equal(trained_unet[k], base_unet[k]) for k in base_unet if "temporal_transformer_block" not in k)
    assert list((output_dir / "validation" / "step_1").glob("*.mp4"))


def test_compile_is_in_place_so_checkpoints_and_the_final_save_see_plain_names(setup, tmp_path):
    """--compile compiles the UNet in place (compiling itself takes minutes on CPU, so it is not run here)."""
    from accelerate.utils import extract_model_from_parallel
    from diffusers import UNetSpatioTemporalConditionModel

    from genex.models import select_temporal_blocks
    from train_world_explorer import parse_args

    assert parse_args(base_args(setup, tmp_path, 1, "--compile")).compile
    assert not parse_args(base_args(setup, tmp_path, 1)).compile
    unet = UNetSpatioTemporalConditionModel.from_pretrained(setup["model"], subfolder="unet")
    names = [name for name, _ in select_temporal_blocks(unet)]
    unet.compile()
    assert extract_model_from_parallel(unet) is unet  # what accelerator.unwrap_model returns
    assert [name for name, p in unet.named_parameters() if p.requires_grad] == names
