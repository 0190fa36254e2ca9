"""Fit a tiny base model to a set of frames, so that what the demo decodes through it looks like those frames.

A randomly initialised VAE reconstructs nothing (about 11 dB PSNR), so every image a diffusion model
makes through it is colour noise whatever the model learned. Both pipelines' tiny base models
(`python -m genex.tiny` and `python -m pecn.tiny` with `--fit_vae_frames`) are fitted here, briefly,
before any training: the loss is the VAE objective of Kingma & Welling (2014), the reconstruction
error of a posterior sample plus a KL term to N(0, I), with the KL weighted down as in Stable
Diffusion's autoencoder. The latent scaling factor is then set to 1 / std of the fitted latents, as
Stable Diffusion's 0.18215 was, so that the diffusion models see latents of unit variance.
`fit_module` is the loop (Adam, cosine decay, random batches) that also fits genex.tiny's UNet.
"""

import argparse
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from common.images import to_rgb
from common.metrics import psnr
from common.pixels import to_model_range, vae_reconstruction


@dataclass(frozen=True)
class FitSettings:
    """How long and how hard to fit: Adam steps, peak learning rate (cosine decay to 0), clips per step, KL weight, seed."""

    steps: int = 120
    learning_rate: float = 2e-3
    batch_size: int = 2
    kl_weight: float = 1e-4
    seed: int = 0


@dataclass(frozen=True)
class FitResult:
    num_frames: int
    psnr_before: float
    psnr_after: float
    losses: list

    def summary(self) -> str:
        return (f"VAE fitted to {self.num_frames} frames in {len(self.losses)} steps: reconstruction PSNR "
                f"{self.psnr_before:.2f} dB -> {self.psnr_after:.2f} dB (loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f})")


def add_fit_settings_args(group, part: str, defaults: FitSettings, steps_help: str = "Adam steps of the fit.", batch_help: str = "Clips per fitting step."):
    """--fit_<part>_steps, --fit_<part>_learning_rate and --fit_<part>_batch_size, read back by fit_settings(args, part)."""
    group.add_argument(f"--fit_{part}_steps", type=int, default=defaults.steps, help=steps_help)
    group.add_argument(f"--fit_{part}_learning_rate", type=float, default=defaults.learning_rate, help="Peak learning rate of the fit (cosine decay to 0).")
    group.add_argument(f"--fit_{part}_batch_size", type=int, default=defaults.batch_size, help=batch_help)


def add_vae_fitting_args(parser: argparse.ArgumentParser, frames_help: str, defaults: FitSettings = FitSettings()):
    """The --fit_vae_* flags that both tiny-pipeline CLIs take; returns their argument group."""
    group = parser.add_argument_group("fitting the VAE (optional)")
    group.add_argument("--fit_vae_frames", type=str, default=None, help=frames_help)
    add_fit_settings_args(group, "vae", defaults)
    return group


def fit_settings(args: argparse.Namespace, part: str = "vae") -> FitSettings:
    """The FitSettings of parsed --fit_<part>_* flags (seeded with --seed)."""
    steps, learning_rate, batch_size = (getattr(args, f"fit_{part}_{name}") for name in ("steps", "learning_rate", "batch_size"))
    if steps < 1 or batch_size < 1 or learning_rate <= 0:
        raise ValueError(f"--fit_{part}_steps and --fit_{part}_batch_size must be at least 1 and --fit_{part}_learning_rate positive")
    return FitSettings(steps=steps, learning_rate=learning_rate, batch_size=batch_size, seed=args.seed)


def read_rgb(path: Path) -> np.ndarray:
    """One image file as RGB uint8 [H, W, 3]."""
    try:
        with Image.open(path) as image:
            return np.asarray(to_rgb(image))
    except OSError as error:
        raise ValueError(f"{path}: cannot read image ({error})") from None


def read_clips(videos: Sequence[Sequence[Path]], frames_per_clip: int, source: str = "the frames") -> torch.Tensor:
    """uint8 clips [N, frames_per_clip, 3, H, W]: each video's frames (in the order given) cut into consecutive runs; `source` names them in errors."""
    clips = []
    for frames in videos:
        for start in range(0, len(frames) - frames_per_clip + 1, frames_per_clip):
            clips.append(np.stack([read_rgb(path) for path in frames[start : start + frames_per_clip]]))
    if not clips:
        raise ValueError(f"{source}: no video has the {frames_per_clip} frame(s) needed to fit the VAE")
    sizes = sorted({clip.shape[1:3] for clip in clips})
    if len(sizes) > 1:
        raise ValueError(f"{source}: the frames to fit the VAE to differ in size ({', '.join(f'{w}x{h}' for h, w in sizes)}); give frames of one size")
    return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).contiguous()


def decodes_clips(vae) -> bool:
    """True for SVD's AutoencoderKLTemporalDecoder, which mixes frames in its decoder and needs their number; False for AutoencoderKL."""
    return "num_frames" in inspect.signature(vae.forward).parameters


def vae_loss(vae, pixels: torch.Tensor, kl_weight: float, generator=None) -> torch.Tensor:
    """Mean squared error of the reconstruction of clips [B, F, 3, H, W] in [-1, 1] from a posterior sample,
    plus kl_weight x the KL to N(0, I) per latent element; a temporal decoder decodes each clip's F frames together."""
    batch, frames = pixels.shape[:2]
    posterior = vae.encode(pixels.flatten(0, 1)).latent_dist
    kwargs = {"num_frames": frames} if decodes_clips(vae) else {}
    decoded = vae.decode(posterior.sample(generator), **kwargs).sample.unflatten(0, (batch, frames))
    kl_per_element = posterior.kl().mean() / math.prod(posterior.mean.shape[1:])
    return torch.nn.functional.mse_loss(decoded, pixels) + kl_weight * kl_per_element


def reconstruction_psnr(vae, clips: torch.Tensor) -> float:
    """PSNR in dB over every pixel of `clips` uint8 [N, F, 3, H, W] and their reconstruction (posterior mode, each clip decoded as one)."""
    frames = clips.permute(0, 1, 3, 4, 2).flatten(0, 1).numpy()
    # Image VAEs take eight clips a call; a temporal decoder exactly one, so that it mixes only a clip's frames.
    chunk_size = clips.shape[1] * (1 if decodes_clips(vae) else 8)
    reconstructed = vae_reconstruction(vae, frames, chunk_size)
    # All frames stacked into one tall image: PSNR over every pixel at once.
    width = frames.shape[2]
    return psnr(reconstructed.reshape(-1, width, 3), frames.reshape(-1, width, 3))


@torch.no_grad()
def latent_scaling_factor(vae, clips: torch.Tensor, batch_size: int = 8, seed: int = 0) -> float:
    """1 / std of posterior samples of `clips`: latents times it have unit variance."""
    generator = torch.Generator().manual_seed(seed)
    latents = [vae.encode(to_model_range(batch).flatten(0, 1)).latent_dist.sample(generator) for batch in clips.split(batch_size)]
    return float(1.0 / torch.cat(latents).std())


def fit_module(module, batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor], num_examples: int, settings: FitSettings,
               description: str) -> list[float]:
    """Fit every parameter of `module` in place: each step draws settings.batch_size of `num_examples` examples (with
    replacement) and takes an Adam step on batch_loss(their indices, generator); returns the loss of every step."""
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=settings.learning_rate)
    # Cosine decay to zero: large steps first, then the weights settle instead of stopping mid-jump.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / settings.steps)))
    module.train().requires_grad_(True)
    losses = []
    for _ in tqdm(range(settings.steps), desc=description, unit="step"):
        loss = batch_loss(torch.randint(num_examples, (min(settings.batch_size, num_examples),), generator=generator), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    module.eval().requires_grad_(False)
    return losses


def fit_vae(vae, clips: torch.Tensor, settings: FitSettings = FitSettings()) -> list[float]:
    """Fit `vae` in place to uint8 clips [N, F, 3, H, W], then set its scaling factor; returns the loss of every step."""
    def batch_loss(indices, generator):
        return vae_loss(vae, to_model_range(clips[indices]), settings.kl_weight, generator)

    losses = fit_module(vae, batch_loss, len(clips), settings, "fitting the VAE")
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, clips, seed=settings.seed))
    return losses


def fit_vae_to_videos(vae, videos: Sequence[Sequence[Path]], frames_per_clip: int, settings: FitSettings = FitSettings(),
                      source: str = "the frames") -> FitResult:
    """Read the videos' frames as clips, fit `vae` to them, and measure its reconstruction before and after."""
    clips = read_clips(videos, frames_per_clip, source)
    before = reconstruction_psnr(vae, clips)
    losses = fit_vae(vae, clips, settings)
    return FitResult(num_frames=clips.shape[0] * clips.shape[1], psnr_before=before, psnr_after=reconstruction_psnr(vae, clips), losses=losses)
