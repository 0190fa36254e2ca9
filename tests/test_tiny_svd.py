"""The tiny SVD pipeline saves, loads with from_pretrained and generates; its weights depend only on the seed."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline
from PIL import Image

from conftest import REPO_ROOT
from genex.tiny import build_tiny_svd_pipeline


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
