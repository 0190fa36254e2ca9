"""Generating an exploration video from one panorama, for validation and for the sampler."""

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def list_images(folder, limit=None) -> list[Path]:
    """Image files of a folder, sorted by name, at most `limit`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: validation images folder does not exist")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the validation images folder")
    return images[:limit]


def load_rgb(path) -> Image.Image:
    """An image as 8-bit RGB, converted as training frames are (16-bit scaled, alpha over white)."""
    from common.images import to_rgb

    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except OSError as error:
        raise ValueError(f"{path}: cannot read image ({error})") from None


def resolution_multiple(vae, unet) -> int:
    """Width and height must be multiples of this: the VAE's and the UNet's downsampling, and the SVD pipeline's own 8."""
    downsampling = 2 ** (len(vae.config.block_out_channels) - 1) * 2 ** (len(unet.config.block_out_channels) - 1)
    return math.lcm(8, downsampling)


def check_svd_fits(vae, unet, folder, width: int, height: int) -> None:
    """Refuse, before training or generating, a UNet that cannot take SVD's inputs or a size the model cannot generate."""
    latent_channels, in_channels = vae.config.latent_channels, unet.config.in_channels
    if in_channels != 2 * latent_channels:
        raise ValueError(f"{folder}: unet takes {in_channels} input channels, SVD needs 2 x {latent_channels} (noisy + conditioning latents)")
    multiple = resolution_multiple(vae, unet)
    if width % multiple or height % multiple:
        raise ValueError(f"--width {width} and --height {height} must be multiples of {multiple} for this model")


@torch.no_grad()
def generate_video(pipeline, image: Image.Image, width: int, height: int, num_frames: int, fps: int,
                   motion_bucket_id: int, num_inference_steps: int, decode_chunk_size: int, generator=None) -> np.ndarray:
    """Run the SVD pipeline on `image` resized to width x height; returns uint8 frames [T,H,W,3].

    The pipeline feeds `fps - 1` to the UNet, as training does for the same --fps.
    """
    frames = pipeline(
        image.resize((width, height), Image.Resampling.LANCZOS),
        height=height,
        width=width,
        num_frames=num_frames,
        fps=fps,
        motion_bucket_id=motion_bucket_id,
        num_inference_steps=num_inference_steps,
        decode_chunk_size=decode_chunk_size,
        generator=generator,
        output_type="np",
    ).frames[0]
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def resize_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize every frame of a [T,H,W,3] uint8 video."""
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.LANCZOS)) for f in frames])
