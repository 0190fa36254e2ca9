"""The tiny SVD pipeline saves, loads with from_pretrained and generates; its weights depend only on the seed."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline
from PIL import Image

from conftest import REPO_ROOT
from genex.models import resolution_multiple
from genex.tiny import build_tiny_svd_pipeline, main


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_svd")
    subprocess.run([sys.executable, "-m", "genex.tiny", "--output_dir", str(folder), "--seed", "3"], cwd=REPO_ROOT, check=True, capture_output=True)
    return folder


def test_saved_folder_loads_and_generates(saved_folder):
    assert (saved_folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    pipe = StableVideoDiffusionPipeline.from_pretrained(saved_folder)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8))
    frames = pipe(
        image, height=64, width=128, num_frames=3, num_inference_steps=2, decode_chunk_size=2,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).frames
    assert frames.shape == (1, 3, 64, 128, 3)
    assert np.isfinite(frames).all() and frames.min() >= 0.0 and frames.max() <= 1.0


def test_loaded_weights_are_the_seeds_weights(saved_folder):
    loaded = StableVideoDiffusionPipeline.from_pretrained(saved_folder)
    same, other = build_tiny_svd_pipeline(seed=3), build_tiny_svd_pipeline(seed=4)
    for name in ("unet", "vae", "image_encoder"):
        loaded_state = getattr(loaded, name).state_dict()
        for key, value in getattr(same, name).state_dict().items():
            assert torch.equal(loaded_state[key], value), f"{name}.{key}"
    assert not torch.equal(same.unet.conv_in.weight, other.unet.conv_in.weight)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.scheduler.config.timestep_type == "continuous"


def test_temporal_blocks_are_a_proper_subset_of_the_unet():
    unet = build_tiny_svd_pipeline().unet
    total = sum(p.numel() for p in unet.parameters())
    temporal = sum(p.numel() for name, p in unet.named_parameters() if "temporal_transformer_block" in name)
    assert 0 < temporal < total
    assert unet.config.in_channels == 8 and unet.config.out_channels == 4


def test_a_one_block_vae_does_not_downsample_and_the_folder_generates_at_32x16(tmp_path):
    """The demo's --vae_block_out_channels 32: latents the size of the frames, so a 32x16 video has the UNet's 32x16 latents."""
    main(["--output_dir", str(tmp_path / "svd"), "--vae_block_out_channels", "32"])
    pipe = StableVideoDiffusionPipeline.from_pretrained(tmp_path / "svd")
    assert tuple(pipe.vae.config.block_out_channels) == (32,) and resolution_multiple(pipe.vae, pipe.unet) == 8
    pixels = torch.zeros(1, 3, 16, 32)
    assert pipe.vae.encode(pixels).latent_dist.mode().shape == (1, 4, 16, 32)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 32, 3), dtype=np.uint8))
    frames = pipe(image, height=16, width=32, num_frames=2, num_inference_steps=1, decode_chunk_size=2,
                  generator=torch.Generator().manual_seed(0), output_type="np").frames
    assert frames.shape == (1, 2, 16, 32, 3) and np.isfinite(frames).all()


def test_vae_widths_that_the_norm_groups_cannot_split_are_one_error_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "genex.tiny", "--output_dir", str(tmp_path / "svd"), "--vae_block_out_channels", "16", "32"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    # The last line: without torchvision, transformers warns about CLIPImageProcessor's backend first.
    assert result.stderr.strip().splitlines()[-1] == ("error: --vae_block_out_channels: each width must be a positive multiple of 32 (the VAE's 32 norm groups), "
                                     "got 16 32")
    assert not (tmp_path / "svd").exists()


@pytest.mark.parametrize("steps", ["12O", "0", "-5", "1e3"])
def test_demo_refuses_a_bad_step_count_before_it_writes_anything(tmp_path, steps):
    """GENEX_TRAIN_STEPS is checked first: a typo costs no data preparation or fitting, and leaves no folder."""
    environment = {"PATH": "/usr/bin:/bin", "DEMO_DIR": str(tmp_path / "demo"), "GENEX_TRAIN_STEPS": steps}
    result = subprocess.run(["bash", "scripts/demo_genex.sh"], cwd=REPO_ROOT, env=environment, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: GENEX_TRAIN_STEPS={steps}: give a positive whole number of fine-tuning steps"]
    assert not (tmp_path / "demo").exists()
