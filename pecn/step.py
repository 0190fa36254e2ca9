"""One PECN (InstructPix2Pix) training step, as train_instruct_pix2pix.py runs it and bench/train_step.py measures it.

    prediction, target = predict(batch, unet, components, null_text_embedding, objective, generator, dtype)
    loss = loss_of(prediction, target)

Every random draw (flip, latents, dropout, noise, timesteps) comes from `generator` in a fixed order, so a
resumed run draws what the straight run drew. `part(name)` wraps each part of the work for the benchmark.
"""

import contextlib
import dataclasses

import torch
import torch.nn.functional as F

from common.cli import SetupError
from common.conditioning import conditioning_dropout_masks
from common.pixels import to_model_range


@dataclasses.dataclass(frozen=True)
class Objective:
    """The options of the loss (train_instruct_pix2pix.py's flags of the same names)."""

    conditioning_dropout_prob: float = 0.05
    random_flip: bool = False

    @classmethod
    def from_args(cls, args) -> "Objective":
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def add_objective_args(parser) -> None:
    """The objective's flags, with the Objective's defaults; the benchmark takes the same ones."""
    default = Objective()
    group = parser.add_argument_group("objective")
    group.add_argument("--conditioning_dropout_prob", type=float, default=default.conditioning_dropout_prob,
                       help="p: text dropped for u < 2p, input image for p <= u < 3p (classifier-free guidance).")
    group.add_argument("--random_flip", action="store_true", help="Mirror pairs horizontally, swapping left and right in the prompt to match.")


def random_flip(batch: dict, generator, device) -> dict:
    """Mirror each pair with probability 1/2 (both images), and give it the prompt with left and right swapped."""
    flip = torch.rand(batch["input_ids"].shape[0], generator=generator, device=device) < 0.5
    batch = dict(batch)
    for key in ("original_pixel_values", "edited_pixel_values"):
        batch[key] = torch.where(flip[:, None, None, None], batch[key].flip(-1), batch[key])
    batch["input_ids"] = torch.where(flip[:, None], batch["mirrored_input_ids"], batch["input_ids"])
    return batch


# The scheduler prediction types training regresses (diffusion_target); diffusers' samplers read both.
PREDICTION_TYPES = ("epsilon", "v_prediction")


def diffusion_target(noise_scheduler, latents, noise, timesteps):
    """What the UNet regresses: the noise (epsilon) or the velocity, per the scheduler's prediction type."""
    if noise_scheduler.config.prediction_type == "epsilon":
        return noise
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise SetupError(f"unknown prediction type {noise_scheduler.config.prediction_type}")


def predict(batch: dict, unet, components, null_text_embedding, objective: Objective, generator, dtype, part=contextlib.nullcontext):
    """The UNet's prediction for a batch of (input frame, target frame, prompt) and what it regresses; returns (prediction, target).

    `batch` is pecn.pairs' collated uint8 pixels and token ids, on the device.
    """
    vae, noise_scheduler = components.vae, components.noise_scheduler
    device = batch["input_ids"].device
    if objective.random_flip:
        batch = random_flip(batch, generator, device)
    # Encode: target latents (sampled, scaled), input-image latents (mode, unscaled), prompts.
    with torch.no_grad():
        with part("vae_encode"):
            edited = to_model_range(batch["edited_pixel_values"], dtype)
            latents = vae.encode(edited).latent_dist.sample(generator).float() * vae.config.scaling_factor
            original_latents = vae.encode(to_model_range(batch["original_pixel_values"], dtype)).latent_dist.mode().float()
        with part("text_encode"):
            text_embedding = components.text_encoder(batch["input_ids"])[0].float()

    # Conditioning dropout, so classifier-free guidance works on text and image.
    keep_text, keep_image = conditioning_dropout_masks(latents.shape[0], objective.conditioning_dropout_prob, generator, device)
    text_embedding = torch.where(keep_text[:, None, None].bool(), text_embedding, null_text_embedding)
    original_latents = original_latents * keep_image[:, None, None, None]

    # Noise at a uniform timestep and predict.
    noise = torch.randn(latents.shape, generator=generator, device=device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=device)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    with part("unet_fwd"):
        prediction = unet(torch.cat([noisy_latents, original_latents], dim=1), timesteps, text_embedding, return_dict=False)[0]
    return prediction, diffusion_target(noise_scheduler, latents, noise, timesteps)


def loss_of(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The diffusion loss: mean squared error of the UNet's output, in float32."""
    return F.mse_loss(prediction.float(), target.float())
