"""pecn.step.diffusion_target: what the UNet regresses is what the sampler reads back as the target latent."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from common.cli import SetupError
from pecn.step import diffusion_target
from pecn.tiny import INSTRUCT_PIX2PIX_SCHEDULER_CONFIG


def scheduler_of(prediction_type):
    return DDPMScheduler(**{**INSTRUCT_PIX2PIX_SCHEDULER_CONFIG, "prediction_type": prediction_type}, clip_sample=False)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_perfect_prediction_gives_back_the_target_latent_in_diffusers_step(prediction_type):
    # Independent reference: diffusers' own DDPM step turns the model output into its estimate of x0.
    scheduler = scheduler_of(prediction_type)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    noise = torch.randn(2, 4, 8, 8, generator=generator)
    for t in (0, 400, 999):
        timesteps = torch.tensor([t, t])
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = diffusion_target(scheduler, latents, noise, timesteps)
        estimate = scheduler.step(target, t, noisy, generator=generator).pred_original_sample
        torch.testing.assert_close(estimate, latents, atol=2e-4, rtol=1e-4)


def test_velocity_by_hand():
    # v = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x0, alpha_bar from scaled_linear betas computed here.
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)[999].item()
    velocity = diffusion_target(scheduler_of("v_prediction"), torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([999]))
    assert velocity.item() == pytest.approx(2 * math.sqrt(alpha_bar) - math.sqrt(1 - alpha_bar), abs=1e-6)
    noise = torch.full((1, 1, 1, 1), 2.0)
    assert torch.equal(diffusion_target(scheduler_of("epsilon"), torch.ones(1, 1, 1, 1), noise, torch.tensor([999])), noise)


def test_unknown_prediction_type_is_a_setup_error():
    scheduler = scheduler_of("epsilon")
    scheduler.register_to_config(prediction_type="sample")
    with pytest.raises(SetupError, match="unknown prediction type sample"):
        diffusion_target(scheduler, torch.ones(1), torch.ones(1), torch.tensor([1]))
