"""train_world_explorer.py end to end through `accelerate launch`, on a tiny SVD and synthetic frames."""

import os
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import REPO_ROOT
from genex.synthetic import render_forward_video, write_validation_panoramas
from genex.tiny import save_tiny_svd_pipeline

WIDTH, HEIGHT, NUM_FRAMES = 64, 32, 4


def accelerate_launch(script_args, num_processes=1, timeout=600):
    """Run the training script the way users do; returns the combined output (fails the test on error)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    if num_processes > 1:
        env["ACCELERATE_USE_CPU"] = "true"
        launch = ["--multi_gpu", "--num_processes", str(num_processes)]
    else:
        launch = ["--cpu", "--num_processes", "1"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", str(REPO_ROOT / "train_world_explorer.py"), *script_args]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


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
    """4 steps with SCL, EMA, accumulation, checkpoint rotation and validation at step 2 and the end."""
    output_dir = setup["root"] / "run"
    log = accelerate_launch(base_args(
        setup, output_dir, 4, "--gradient_accumulation_steps=2", "--checkpointing_steps=2", "--checkpoints_total_limit=1",
        "--validation_steps=2", f"--validation_images_folder={setup['validation']}", "--num_validation_images=1",
        "--validation_num_inference_steps=2", "--scl_loss", "--num_scl_samples=2", "--use_ema", "--max_grad_norm=1.0",
        "--gradient_checkpointing",
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
    images = {tag for acc in events for tag in acc.Tags()["images"]}
    assert any(tag.startswith("validation/") for tag in images)


def test_train_log_has_every_optimizer_step_and_validation_says_it_starts(trained):
    output_dir, log = trained
    steps = [line for line in (output_dir / "train.log").read_text().splitlines() if " - train.steps - " in line]
    assert [line.split("step ", 1)[1].split(":")[0] for line in steps] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(f" {name} " in line for line in steps for name in ("loss", "loss_edm", "loss_scl", "scl_beta", "lr", "grad_norm"))
    assert log.count("Validation at step 2: 1 video(s)") == 1 and "Validation at step 4" in log


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

    pipeline = StableVideoDiffusionPipeline.from_pretrained(output_dir)
    frames = pipeline(Image.new("RGB", (WIDTH, HEIGHT), "gray"), height=HEIGHT, width=WIDTH, num_frames=3,
                      num_inference_steps=2, decode_chunk_size=3, output_type="np").frames
    assert frames.shape == (1, 3, HEIGHT, WIDTH, 3)


@pytest.fixture(scope="module")
def straight(setup):
    """4 plain steps from the frames."""
    output_dir = setup["root"] / "straight"
    accelerate_launch(base_args(setup, output_dir, 4, "--checkpointing_steps=2"))
    return output_dir


def scalars(output_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(p.parent)).Reload() for p in (output_dir / "logs").rglob("events.out.tfevents.*")]
    return [(s.step, s.value) for acc in events if tag in acc.Tags()["scalars"] for s in acc.Scalars(tag)]


def test_resume_from_latest_continues_the_run(setup, straight):
    """A 2-step run resumed to 4 steps ends bit for bit where a straight 4-step run ends."""
    resumed = setup["root"] / "resumed"
    accelerate_launch(base_args(setup, resumed, 2, "--checkpointing_steps=2"))
    log = accelerate_launch(base_args(setup, resumed, 4, "--checkpointing_steps=2", "--resume_from_checkpoint=latest"))
    assert "Resumed from" in log and "checkpoint-2 at step 2" in log
    a = load_file(str(straight / "checkpoint-4" / "0_trainable_weights.safetensors"))
    b = load_file(str(resumed / "checkpoint-4" / "0_trainable_weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cached_latents_make_the_same_draws_as_the_frames(setup, straight):
    """With --latents_cache_dir the run draws the same z0 and noise as from the frames: equal losses up to fp16 rounding."""
    cache_dir = setup["root"] / "latent_cache"
    result = subprocess.run([sys.executable, "-m", "genex.cache_latents", f"--pretrained_model_name_or_path={setup['model']}",
                             f"--base_folder={setup['frames']}", f"--cache_dir={cache_dir}", f"--width={WIDTH}", f"--height={HEIGHT}"],
                            cwd=REPO_ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    output_dir = setup["root"] / "cached"
    accelerate_launch(base_args(setup, output_dir, 2, "--checkpointing_steps=100", f"--latents_cache_dir={cache_dir}"))
    cached, frames = scalars(output_dir, "loss_edm"), scalars(straight, "loss_edm")[:2]
    assert [step for step, _ in cached] == [step for step, _ in frames] == [1, 2]
    for (_, a), (_, b) in zip(cached, frames):
        assert a == pytest.approx(b, rel=1e-2) and a != b  # fp16 statistics: close, not bit-equal

    # The cache does not fit another resolution: refused in one line that says how to rebuild it.
    refused = subprocess.run([sys.executable, str(REPO_ROOT / "train_world_explorer.py"), *base_args(setup, output_dir, 1),
                              f"--latents_cache_dir={cache_dir}", f"--width={2 * WIDTH}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "this run needs" in refused.stderr and "python -m genex.cache_latents" in refused.stderr


def test_two_processes_keep_weights_in_sync(setup):
    output_dir = setup["root"] / "ddp"
    log = accelerate_launch(base_args(setup, output_dir, 2, "--checkpointing_steps=100"), num_processes=2)
    assert "MULTI_CPU" in log and "Num processes: 2" in log
    checksums = re.search(r"trainable weight checksum per process: \[([^\]]+)\]", log).group(1).split(",")
    assert len(checksums) == 2 and float(checksums[0]) == float(checksums[1])
    assert (output_dir / "model_index.json").is_file()
    # Each log line once, from the main process; train.log has the loss of every optimizer step.
    assert log.count("optimizer steps, batch 1 x 2 processes") == 1 and log.count("Saved the trained pipeline") == 1
    steps = [line for line in (output_dir / "train.log").read_text().splitlines() if " - train.steps - " in line]
    assert [line.split("step ", 1)[1].split(":")[0] for line in steps] == ["1/2", "2/2"] and all(" loss " in line for line in steps)


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
    (["--pretrained_model_name_or_path=./missing/svd"], "folder does not exist"),
    (["--width=66"], "must be multiples of"),
])
def test_bad_flags_are_one_line_errors(setup, tmp_path, flags, message):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "train_world_explorer.py"), *base_args(setup, tmp_path / "x", 1), *flags],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_xformers_requested_but_missing_is_a_clear_error(setup, tmp_path):
    import importlib.util

    if importlib.util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed here")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "train_world_explorer.py"), *base_args(setup, tmp_path / "x", 1),
                             "--enable_xformers_memory_efficient_attention"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "xformers is not installed" in result.stderr


def test_bf16_mixed_precision_keeps_frozen_weights_exact(setup):
    """Frozen modules are held in bf16 during training; the saved model still has the base's fp32 values."""
    output_dir = setup["root"] / "bf16"
    accelerate_launch(base_args(setup, output_dir, 1, "--checkpointing_steps=100", "--scl_loss", "--num_scl_samples=1",
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
