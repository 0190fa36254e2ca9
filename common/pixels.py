"""Pixels travel from the data loader as uint8 (a quarter of float32's bytes) and are scaled on the device;
models' [-1, 1] outputs come back to uint8 as the diffusers pipelines' postprocessing does."""

import inspect

import numpy as np
import torch


def to_model_range(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels in [0, 255] as contiguous `dtype` in [-1, 1]: x / 127.5 - 1 (run it on the device, after the uint8 copy)."""
    if pixels.dtype != torch.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    # Scaled in float32 and then cast, so every dtype sees the values the float32 pipeline sees; batches
    # may arrive channels-last from a dataset's view and leave in the usual layout.
    return (pixels.to(torch.float32, memory_format=torch.contiguous_format) / 127.5 - 1.0).to(dtype)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] as uint8: round(clamp(x / 2 + 0.5, 0, 1) * 255), the pipelines' denormalize and rounding."""
    return (pixels.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)


@torch.no_grad()
def decoded_uint8(vae, latents: torch.Tensor) -> np.ndarray:
    """Unscaled latents [N,C,h,w] decoded by `vae` in one call, as uint8 images [N,H,W,3].

    A temporal decoder (SVD's) is told the call's frame count, as StableVideoDiffusionPipeline decodes
    its latents: the frames of one call are decoded as one clip.
    """
    kwargs = {"num_frames": len(latents)} if "num_frames" in inspect.signature(vae.forward).parameters else {}
    return to_uint8(vae.decode(latents, **kwargs).sample).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def vae_reconstruction(vae, frames: np.ndarray, chunk_size: int = 8) -> np.ndarray:
    """uint8 frames [N,H,W,3] through `vae`: encoded (posterior mode), decoded `chunk_size` frames per call (decoded_uint8), as uint8."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [N,H,W,3], got {frames.dtype} {frames.shape}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    # A copy: arrays read from images are often read-only, which torch.from_numpy warns about.
    pixels = to_model_range(torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2)).to(vae.device, vae.dtype)
    return np.concatenate([decoded_uint8(vae, vae.encode(chunk).latent_dist.mode()) for chunk in pixels.split(chunk_size)])
