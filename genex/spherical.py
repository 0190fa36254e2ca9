"""Spherical Contrastive Loss (GenEx): predictions of an equirectangular panorama video stay consistent in yaw.

A yaw rotation of an equirectangular image is a circular shift of its columns: the left and right
edges meet, so the shifted image is again a valid panorama.
"""

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from genex.conditioning import frame_latent_statistics
from genex.edm import edm_loss


def yaw_shift_pixels(theta_deg: float, width: int) -> int:
    """Columns a yaw of `theta_deg` degrees moves an equirectangular image `width` pixels wide."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    # 360 degrees of longitude span the full width.
    return round(theta_deg / 360.0 * width) % width


def rotate_yaw(x, theta_deg: float, width_axis: int = -1):
    """Rotate panorama(s) by `theta_deg` in yaw: a circular roll of the width axis (torch `[...,H,W]` or numpy)."""
    shift = yaw_shift_pixels(theta_deg, x.shape[width_axis])
    if isinstance(x, torch.Tensor):
        return torch.roll(x, shifts=shift, dims=width_axis)
    return np.roll(x, shift, axis=width_axis)


def sample_yaw_angles(num: int, generator=None) -> list[float]:
    """`num` yaw angles in degrees, uniform in [0, 180) as GenEx draws them."""
    device = generator.device if generator is not None else None
    return (torch.rand(num, generator=generator, device=device) * 180.0).tolist()


def checkpointed(function, x: torch.Tensor, enabled: bool = True):
    """function(x); when enabled and x needs a gradient, its activations are recomputed in the backward pass instead of kept."""
    # Full-resolution VAE activations of a whole clip do not fit in memory; one chunk's at a time do.
    if enabled and torch.is_grad_enabled() and x.requires_grad:
        return checkpoint(function, x, use_reentrant=False)
    return function(x)


def decode_x0(vae, latents: torch.Tensor, decode_chunk_size: int, gradient_checkpointing: bool = True) -> torch.Tensor:
    """Decode scaled latents [B,F,4,h,w] to pixels [B,F,3,H,W], with gradients, `decode_chunk_size` frames per call.

    With `gradient_checkpointing`, each chunk's activations are recomputed in the backward pass (one more decode).
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be [B,F,4,h,w], got shape {tuple(latents.shape)}")
    if decode_chunk_size < 1:
        raise ValueError(f"decode_chunk_size must be >= 1, got {decode_chunk_size}")
    z = (latents / vae.config.scaling_factor).to(vae.dtype)

    def decode(chunk):
        return vae.decode(chunk, num_frames=chunk.shape[0]).sample

    # Chunks stay inside one video: the temporal decoder mixes the frames of a call as one clip.
    videos = [torch.cat([checkpointed(decode, chunk, gradient_checkpointing) for chunk in video.split(decode_chunk_size)]) for video in z]
    return torch.stack(videos)


def scl_encode(vae, pixels: torch.Tensor, chunk_size: int, gradient_checkpointing: bool = True) -> torch.Tensor:
    """SCL's E: the scaled posterior mode [B,F,4,h,w] float32 of `pixels` [B,F,3,H,W], `chunk_size` frames per call.

    The mode, not a draw, so prediction and target go through the same deterministic encoder. With
    `gradient_checkpointing`, each chunk's activations are recomputed in the backward pass.
    """
    if pixels.ndim != 5:
        raise ValueError(f"pixels must be [B,F,3,H,W], got shape {tuple(pixels.shape)}")

    def encode(chunk):
        return frame_latent_statistics(vae, chunk, chunk.shape[0])[0]

    mean = torch.cat([checkpointed(encode, chunk, gradient_checkpointing) for chunk in pixels.flatten(0, 1).split(chunk_size)])
    return (mean * vae.config.scaling_factor).unflatten(0, pixels.shape[:2])


def spherical_contrastive_loss(x_pred, x0, sigma, thetas, encode) -> torch.Tensor:
    """L_scl = mean_k mean(lambda(sigma) * (E(T_k x_pred) - E(T_k x0))^2) over the yaw angles `thetas`.

    `x_pred`, `x0`: pixels [B,F,3,H,W]; `encode` maps such pixels to scaled latents. No gradient reaches `x0`.
    """
    if len(thetas) == 0:
        raise ValueError("spherical_contrastive_loss needs at least one yaw angle")
    if x_pred.shape != x0.shape:
        raise ValueError(f"x_pred {tuple(x_pred.shape)} and x0 {tuple(x0.shape)} must have the same shape")
    # All rotations go through the encoder together: fewer, fuller calls than one rotation at a time.
    def rotated(x):
        return torch.cat([rotate_yaw(x, theta) for theta in thetas])

    with torch.no_grad():
        targets = encode(rotated(x0)).chunk(len(thetas))
    predictions = encode(rotated(x_pred)).chunk(len(thetas))
    # Same EDM weight as the denoising loss, on latents of the same rotation of prediction and target.
    return torch.stack([edm_loss(p, t, sigma) for p, t in zip(predictions, targets)]).mean()


def scl_beta_released(step: int, max_train_steps: int) -> float:
    """SCL weight of the released GenEx script: 0.05 rising linearly to 1 at half of training."""
    if max_train_steps < 1:
        raise ValueError(f"max_train_steps must be >= 1, got {max_train_steps}")
    return 0.05 + 0.95 * min(2 * step / max_train_steps, 1.0)


def combine_edm_scl(l_edm: torch.Tensor, l_scl: torch.Tensor, beta: float):
    """(alpha * L_edm + beta * L_scl with alpha = 1 - beta, beta used) for scalar losses; beta is 0 when L_scl > 10 L_edm."""
    # GenEx skips the SCL term for a step where it would swamp the denoising loss. On the meta device
    # (counting FLOPs) there are no values to compare: the term is kept, as in a step that keeps it.
    if not l_scl.is_meta and l_scl.item() > 10 * l_edm.item():
        beta = 0.0
    if beta == 0.0:
        # Left out of the graph, so the backward pass does not run through SCL's decode and encodes for zeros.
        return l_edm, beta
    alpha = 1.0 - beta
    return alpha * l_edm + beta * l_scl, beta
