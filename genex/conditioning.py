"""SVD's conditioning inputs for training, built as StableVideoDiffusionPipeline builds them at inference.

Frames are `[B,3,H,W]` (or videos `[B,F,3,H,W]`) in [-1, 1].
"""

import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

from genex.edm import append_dims

CLIP_INPUT_SIZE = (224, 224)


def clip_image_embedding(image_encoder, feature_extractor, frames: torch.Tensor) -> torch.Tensor:
    """CLIP image embedding [B,1,D] of `frames` [B,3,H,W] in [-1,1], as the pipeline's `_encode_image`."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [B,3,H,W], got shape {tuple(frames.shape)}")
    # The pipeline resizes in float32 in [-1,1] with an antialiasing blur (as generative-models), normalises in [0,1].
    pixels = (_resize_with_antialiasing(frames.float(), CLIP_INPUT_SIZE) + 1.0) / 2.0
    mean = torch.tensor(feature_extractor.image_mean, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(feature_extractor.image_std, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    pixels = (pixels - mean) / std
    dtype = next(image_encoder.parameters()).dtype
    return image_encoder(pixels.to(dtype)).image_embeds.unsqueeze(1)


def fps_id_for(fps: int) -> int:
    """The fps micro-conditioning value for a video played at `fps`."""
    # SVD was conditioned on fps - 1, and the pipeline subtracts 1 from its `fps` argument: train on the same value.
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    return fps - 1


def add_time_ids(fps_id: int, motion_bucket_id: int, cond_sigma: torch.Tensor) -> torch.Tensor:
    """SVD's added_time_ids, one row [fps_id, motion_bucket_id, cond_sigma] per sample: [B,3]."""
    if cond_sigma.ndim != 1:
        raise ValueError(f"cond_sigma must be [B], got shape {tuple(cond_sigma.shape)}")
    fps_ids = torch.full_like(cond_sigma, float(fps_id))
    motion_bucket_ids = torch.full_like(cond_sigma, float(motion_bucket_id))
    return torch.stack([fps_ids, motion_bucket_ids, cond_sigma], dim=1)


def encode_cond_latents(vae, first_frame: torch.Tensor, cond_sigma: torch.Tensor, num_frames: int, generator=None) -> torch.Tensor:
    """Latents [B,F,4,h,w] of the noise-augmented first frame, unscaled, repeated over `num_frames`."""
    if first_frame.ndim != 4:
        raise ValueError(f"first_frame must be [B,3,H,W], got shape {tuple(first_frame.shape)}")
    if cond_sigma.shape != first_frame.shape[:1]:
        raise ValueError(f"cond_sigma must be [B] = [{first_frame.shape[0]}], got shape {tuple(cond_sigma.shape)}")
    # Noise is added in float32, as the pipeline adds it to its float32 preprocessed image.
    noise = torch.randn(first_frame.shape, generator=generator, device=first_frame.device)
    noisy_frame = first_frame.float() + append_dims(cond_sigma.float(), first_frame.ndim) * noise
    # The pipeline's _encode_vae_image takes the mode and does not multiply by scaling_factor.
    latents = vae.encode(noisy_frame.to(vae.dtype)).latent_dist.mode()
    return latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)


def frame_latent_statistics(vae, pixels: torch.Tensor, chunk_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [N,4,h,w] float32, unscaled, of the VAE posterior of each frame of `pixels` [N,3,H,W] in [-1,1].

    SVD's VAE encodes every frame on its own, so the statistics of a frame do not depend on its chunk.
    std is the posterior's own exp(0.5 * clamped logvar), so `sample_latents` draws what `latent_dist.sample()` draws.
    """
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be [N,3,H,W], got shape {tuple(pixels.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    posteriors = [vae.encode(chunk.to(vae.dtype)).latent_dist for chunk in pixels.split(chunk_size)]
    mean = torch.cat([p.mean for p in posteriors]).float().contiguous()
    std = torch.cat([p.std for p in posteriors]).float().contiguous()
    return mean, std


def sample_latents(mean: torch.Tensor, std: torch.Tensor, scaling_factor: float, generator=None) -> torch.Tensor:
    """Scaled latents z0 = (mean + std * eps) * scaling_factor, eps ~ N(0, 1) from `generator`, in float32.

    The same draw, in the same order, as `vae.encode(x).latent_dist.sample(generator) * scaling_factor`
    of a float32 VAE for the frames whose posterior is (mean, std).
    """
    if mean.shape != std.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must have the same shape")
    # Drawn on the generator's device, as diffusers' randn_tensor does, then moved to the statistics.
    device = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=device).to(mean.device)
    return (mean.float() + std.float() * eps) * scaling_factor


def encode_video_latents(vae, frames: torch.Tensor, generator=None, chunk_size: int = 8) -> torch.Tensor:
    """Scaled latents z0 [B,F,4,h,w] float32 of `frames` [B,F,3,H,W], encoded `chunk_size` frames at a time.

    One draw for the whole batch, so chunking changes nothing and cached statistics draw the same eps.
    """
    if frames.ndim != 5:
        raise ValueError(f"frames must be [B,F,3,H,W], got shape {tuple(frames.shape)}")
    mean, std = frame_latent_statistics(vae, frames.flatten(0, 1), chunk_size)
    return sample_latents(mean, std, vae.config.scaling_factor, generator).unflatten(0, frames.shape[:2])
