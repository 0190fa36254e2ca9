"""One GenEx-Explorer training step, as train_world_explorer.py runs it and bench/train_step.py measures it.

    prediction = predict(batch, unet, encoders, objective, generator, dtype)     # z0, conditioning, sigma, D
    loss, logs = loss_of(prediction, encoders.vae, objective, generator, step, max_train_steps, gradient_checkpointing)

`fixed_draw_loss` evaluates the same L_edm on fixed clips with the same draws at every call, for a curve that
falls as the model learns where the training loss swings with the sigma drawn each step.

Every random draw comes from `generator`, in a fixed order (predict: z0 or its posterior draw, the
conditioning frame's noise level and noise, dropout, sigma, the noise; loss_of: SCL's frames when
--scl_num_frames is below the clip length, then its yaw angles), so a resumed run draws what the straight
run drew. `part(name)` is a context manager around each part of the work (the benchmark times or
counts FLOPs per part); training leaves it a no-op.
"""

import argparse
import contextlib
import dataclasses

import torch

from common.conditioning import conditioning_dropout_masks
from common.pixels import to_model_range
from genex.conditioning import add_time_ids, clip_image_embedding, encode_cond_latents, encode_video_latents, fps_id_for, sample_latents
from genex.edm import append_dims, denoise, edm_loss, sample_cond_sigma, sample_sigma
from genex.spherical import (combine_edm_scl, decode_x0, sample_scl_frames, sample_yaw_angles, scl_beta_released, scl_encode, select_frames,
                             spherical_contrastive_loss)


@dataclasses.dataclass(frozen=True)
class Objective:
    """The options of the loss (train_world_explorer.py's "objective" flags)."""

    num_frames: int = 25
    p_mean: float = 0.7
    p_std: float = 1.6
    fps: int = 7
    motion_bucket_id: int = 127
    conditioning_dropout_prob: float = 0.1
    scl_loss: bool = False
    num_scl_samples: int = 3
    scl_beta: float | None = None
    scl_num_frames: int | None = None
    decode_chunk_size: int = 8

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Objective":
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def add_objective_args(parser: argparse.ArgumentParser) -> None:
    """The objective's flags, with the Objective's defaults; the benchmark takes the same ones."""
    default = Objective()
    group = parser.add_argument_group("objective")
    group.add_argument("--p_mean", type=float, default=default.p_mean, help="Mean of log sigma (EDM's P_mean).")
    group.add_argument("--p_std", type=float, default=default.p_std, help="Std of log sigma (EDM's P_std).")
    group.add_argument("--fps", type=int, default=default.fps, help="Frame rate the model is conditioned on; the UNet sees fps - 1, as in the pipeline.")
    group.add_argument("--motion_bucket_id", type=int, default=default.motion_bucket_id, help="Motion bucket id the model is conditioned on.")
    group.add_argument("--conditioning_dropout_prob", type=float, default=default.conditioning_dropout_prob,
                       help="p: CLIP embedding dropped for u < 2p, conditioning latent for p <= u < 3p.")
    group.add_argument("--scl_loss", action="store_true", help="Add the spherical contrastive loss (yaw-rotation consistency of the x0 estimate).")
    group.add_argument("--num_scl_samples", type=int, default=default.num_scl_samples, help="Yaw rotations per step for the spherical contrastive loss.")
    group.add_argument("--scl_beta", type=float, default=default.scl_beta,
                       help="Constant SCL weight beta (the paper's form); default: GenEx's released schedule 0.05 -> 1 over the first half of training.")
    group.add_argument("--scl_num_frames", type=int, default=default.scl_num_frames,
                       help="SCL on K frames of the clip, drawn per step (the same for prediction and target; the K latents decoded as a clip "
                            "of their own): its decode and encodes cost about K/num_frames of the full loss's. Default: every frame, the loss as specified.")
    group.add_argument("--decode_chunk_size", type=int, default=default.decode_chunk_size,
                       help="Frames per VAE call: encoding clips, SCL's decode and encodes (each chunk checkpointed with --gradient_checkpointing), validation.")


def objective_problem(objective: Objective) -> str | None:
    """Why the objective's flags cannot work, or None: the script and the benchmark refuse the same values."""
    if objective.num_scl_samples < 1:
        return "--num_scl_samples must be at least 1"
    if objective.scl_num_frames is not None and not 1 <= objective.scl_num_frames <= objective.num_frames:
        return f"--scl_num_frames {objective.scl_num_frames} must be between 1 and --num_frames {objective.num_frames}"
    return None


@dataclasses.dataclass
class Prediction:
    """What the loss needs of a step: the denoiser output D, its target z0, the noise levels, the clean frames (for SCL)."""

    D: torch.Tensor
    z0: torch.Tensor
    sigma: torch.Tensor
    frames: torch.Tensor | None


def predict(batch: dict, unet, encoders, objective: Objective, generator, dtype, part=contextlib.nullcontext) -> Prediction:
    """Encode a batch on the device (frames, or a latent cache's posteriors), noise it at a log-normal sigma and denoise it.

    `batch` holds uint8 "pixel_values" [B,F,3,H,W], or the cache's "latent_mean", "latent_std", "clip_embedding" and
    "first_frame" (with "pixel_values" too when SCL needs the frames).
    """
    vae = encoders.vae
    with part("data"):
        frames = to_model_range(batch["pixel_values"], dtype) if "pixel_values" in batch else None
        first_frame = to_model_range(batch["first_frame"], dtype) if "first_frame" in batch else frames[:, 0]
    cached = "latent_mean" in batch
    batch_size, device = first_frame.shape[0], first_frame.device
    # Clean latents z0 (from the cache, a draw from the stored posterior with the same eps), the noise-augmented
    # first frame's latents and the CLIP embedding of the clean first frame.
    with torch.no_grad():
        with part("vae_encode"):
            if cached:
                z0 = sample_latents(batch["latent_mean"], batch["latent_std"], vae.config.scaling_factor, generator)
            else:
                z0 = encode_video_latents(vae, frames, generator, objective.decode_chunk_size)
            cond_sigma = sample_cond_sigma((batch_size,), generator, device)
            cond_latents = encode_cond_latents(vae, first_frame, cond_sigma.to(dtype), objective.num_frames, generator).float()
        if cached:
            clip_embedding = batch["clip_embedding"].float().unsqueeze(1)
        else:
            with part("clip_encode"):
                clip_embedding = clip_image_embedding(encoders.image_encoder, encoders.feature_extractor, first_frame).float()

    # Conditioning dropout, so classifier-free guidance works at inference.
    keep_clip, keep_latent = conditioning_dropout_masks(batch_size, objective.conditioning_dropout_prob, generator, device)
    clip_embedding = clip_embedding * append_dims(keep_clip, clip_embedding.ndim)
    cond_latents = cond_latents * append_dims(keep_latent, cond_latents.ndim)

    # Noise at a log-normal sigma and predict the clean latents.
    sigma = sample_sigma((batch_size,), objective.p_mean, objective.p_std, generator, device)
    noisy = z0 + append_dims(sigma, z0.ndim) * torch.randn(z0.shape, generator=generator, device=z0.device)
    time_ids = add_time_ids(fps_id_for(objective.fps), objective.motion_bucket_id, cond_sigma).to(device)
    with part("unet_fwd"):
        D = denoise(unet, noisy, sigma, cond_latents, clip_embedding, time_ids)
    return Prediction(D, z0, sigma, frames)


def loss_of(prediction: Prediction, vae, objective: Objective, generator, step: int, max_train_steps: int,
            gradient_checkpointing: bool = False) -> tuple[torch.Tensor, dict]:
    """L_edm, plus the spherical contrastive loss with its weight beta when on; returns (loss, the terms to log).

    With `gradient_checkpointing`, SCL's VAE chunks are recomputed in the backward pass, as the UNet's are.
    """
    D, z0, sigma = prediction.D, prediction.z0, prediction.sigma
    loss_edm = edm_loss(D, z0, sigma)
    if not objective.scl_loss:
        return loss_edm, {"loss_edm": loss_edm.detach()}
    # Spherical contrastive loss on the decoded x0 estimate (of all frames, or of --scl_num_frames of them), rotated in yaw.
    frames = sample_scl_frames(D.shape[1], objective.scl_num_frames, generator)
    x_pred = decode_x0(vae, select_frames(D, frames).to(vae.dtype), objective.decode_chunk_size, gradient_checkpointing)
    thetas = sample_yaw_angles(objective.num_scl_samples, generator)

    def encode(pixels):
        return scl_encode(vae, pixels, objective.decode_chunk_size, gradient_checkpointing)

    loss_scl = spherical_contrastive_loss(x_pred, select_frames(prediction.frames, frames), sigma, thetas, encode)
    beta = objective.scl_beta if objective.scl_beta is not None else scl_beta_released(step, max_train_steps)
    loss, beta_used = combine_edm_scl(loss_edm, loss_scl, beta)
    return loss, {"loss_edm": loss_edm.detach(), "loss_scl": loss_scl.detach(), "scl_beta": beta_used}


def fixed_draw_loss(batches: list[dict], unet, encoders, objective: Objective, seed: int, dtype, device) -> float:
    """Mean L_edm over `batches` with every draw (z0, conditioning noise, sigma, noise) from a generator seeded with `seed`
    anew at each call, without conditioning dropout: evaluations at different steps see the same noisy clips, so their
    values differ by what the model learned (the training loss swings with the sigma drawn each step). Each batch comes to
    `device` only for its own pass: at full size the clips' frames would otherwise hold device memory for the whole run."""
    objective = dataclasses.replace(objective, conditioning_dropout_prob=0.0)
    generator = torch.Generator(device=device).manual_seed(seed)
    losses = []
    with torch.no_grad():
        for batch in batches:
            batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
            prediction = predict(batch, unet, encoders, objective, generator, dtype)
            losses.append(edm_loss(prediction.D, prediction.z0, prediction.sigma).item())
    return sum(losses) / len(losses)
