"""The SVD EDM objective against diffusers' EulerDiscreteScheduler in SVD's configuration and hand values."""

import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from genex.edm import (
    append_dims,
    denoise,
    edm_loss,
    edm_weight,
    sample_cond_sigma,
    sample_sigma,
    svd_scalings,
)

# stabilityai/stable-video-diffusion-img2vid-xt-1-1 scheduler/scheduler_config.json, written out here so the
# reference does not depend on the code under test.
SVD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    interpolation_type="linear",
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    sigma_max=700.0,
    sigma_min=0.002,
    steps_offset=1,
    timestep_spacing="leading",
    timestep_type="continuous",
    use_karras_sigmas=True,
)


class RecordingUNet(torch.nn.Module):
    """Stands in for UNetSpatioTemporalConditionModel: records its inputs, returns a fixed output."""

    def __init__(self, output):
        super().__init__()
        self.output = output
        self.calls = []

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, return_dict=True):
        self.calls.append(dict(sample=sample, timestep=timestep, ehs=encoder_hidden_states, ids=added_time_ids))
        return (self.output,)


@pytest.fixture
def scheduler():
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER)
    scheduler.set_timesteps(25)
    return scheduler


def test_append_dims():
    x = torch.arange(3.0)
    assert append_dims(x, 5).shape == (3, 1, 1, 1, 1)
    assert append_dims(x, 1).shape == (3,)
    with pytest.raises(ValueError, match="target_ndim"):
        append_dims(torch.zeros(2, 2), 1)


def test_c_noise_is_the_schedulers_continuous_timestep(scheduler):
    sigmas = scheduler.sigmas[:-1]
    *_, c_noise = svd_scalings(sigmas)
    torch.testing.assert_close(c_noise, scheduler.timesteps, rtol=1e-6, atol=1e-6)


def test_scalings_match_scale_model_input_and_v_prediction_step(scheduler):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 2, 4, 3, 3, generator=generator)
    model_output = torch.randn(1, 2, 4, 3, 3, generator=generator)
    for t, sigma in zip(scheduler.timesteps, scheduler.sigmas[:-1]):
        c_skip, c_out, c_in, _ = svd_scalings(sigma)
        torch.testing.assert_close(c_in * sample, scheduler.scale_model_input(sample, t))
        x0 = scheduler.step(model_output, t, sample).pred_original_sample
        torch.testing.assert_close(c_skip * sample + c_out * model_output, x0, rtol=1e-5, atol=1e-5)


def test_denoise_feeds_the_unet_like_the_svd_pipeline(scheduler):
    # One SVD pipeline step: scale_model_input, concat image latents on dim 2, unet(t), step -> x0.
    generator = torch.Generator().manual_seed(1)
    shape = (1, 3, 4, 4, 6)
    noisy = torch.randn(shape, generator=generator) * 10
    cond = torch.randn(shape, generator=generator)
    model_output = torch.randn(shape, generator=generator)
    ehs, ids = torch.randn(1, 1, 32), torch.tensor([[6.0, 127.0, 0.02]])
    t, sigma = scheduler.timesteps[3], scheduler.sigmas[3]

    unet = RecordingUNet(model_output)
    denoised = denoise(unet, noisy, sigma.reshape(1), cond, ehs, ids)

    (call,) = unet.calls
    expected_input = torch.cat([scheduler.scale_model_input(noisy, t), cond], dim=2)
    torch.testing.assert_close(call["sample"], expected_input)
    torch.testing.assert_close(call["timestep"], t.reshape(1))
    assert call["ehs"] is ehs and call["ids"] is ids
    expected = scheduler.step(model_output, t, noisy).pred_original_sample
    torch.testing.assert_close(denoised, expected, rtol=1e-5, atol=1e-5)


def test_denoise_per_sample_sigma_hand_values():
    sigma = torch.tensor([1.0, math.e**2])
    noisy = torch.ones(2, 2, 4, 2, 2)
    cond = torch.full_like(noisy, 7.0)
    unet = RecordingUNet(torch.zeros_like(noisy))
    denoised = denoise(unet, noisy, sigma, cond, None, None)
    (call,) = unet.calls
    # c_in = 1/sqrt(sigma^2+1); channels 0-3 are the scaled noisy latents, 4-7 the conditioning latents.
    assert call["sample"].shape == (2, 2, 8, 2, 2)
    torch.testing.assert_close(call["sample"][0, :, :4], torch.full((2, 4, 2, 2), 1 / math.sqrt(2)))
    torch.testing.assert_close(call["sample"][1, :, :4], torch.full((2, 4, 2, 2), 1 / math.sqrt(math.e**4 + 1)))
    torch.testing.assert_close(call["sample"][:, :, 4:], cond)
    torch.testing.assert_close(call["timestep"], torch.tensor([0.0, 0.5]))
    # Zero network output: D = c_skip * noisy = noisy / (sigma^2 + 1).
    torch.testing.assert_close(denoised[0], torch.full((2, 4, 2, 2), 0.5))
    torch.testing.assert_close(denoised[1], torch.full((2, 4, 2, 2), 1 / (math.e**4 + 1)))


def test_denoise_rejects_bad_shapes():
    unet = RecordingUNet(None)
    x = torch.zeros(2, 3, 4, 2, 2)
    with pytest.raises(ValueError, match="sigma"):
        denoise(unet, x, torch.ones(3), x, None, None)
    with pytest.raises(ValueError, match="cond_latents"):
        denoise(unet, x, torch.ones(2), x[:, :1], None, None)
    with pytest.raises(ValueError, match="noisy_latents"):
        denoise(unet, x[0], torch.ones(2), x[0], None, None)


def test_weight_hand_values_and_unit_weight_in_f_space():
    torch.testing.assert_close(edm_weight(torch.tensor([1.0, 2.0, 0.5])), torch.tensor([2.0, 1.25, 5.0]))
    sigma = torch.logspace(-3, 3, 50, dtype=torch.float64)
    _, c_out, _, _ = svd_scalings(sigma)
    torch.testing.assert_close(edm_weight(sigma) * c_out**2, torch.ones_like(sigma))


def test_edm_loss_equals_unweighted_loss_on_the_network_output():
    generator = torch.Generator().manual_seed(2)
    shape = (3, 2, 4, 5, 5)
    z0, eps, network_output = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(3))
    sigma = torch.tensor([0.05, 1.3, 40.0], dtype=torch.float64)
    c_skip, c_out, _, _ = (append_dims(c, 5) for c in svd_scalings(sigma))
    noisy = z0 + append_dims(sigma, 5) * eps
    denoised = c_skip * noisy + c_out * network_output
    # SVD_Xtend / generative-models form: the network regresses (z0 - c_skip * noisy) / c_out without weight.
    target = (z0 - c_skip * noisy) / c_out
    expected = torch.nn.functional.mse_loss(network_output, target)
    torch.testing.assert_close(edm_loss(denoised, z0, sigma).double(), expected, rtol=1e-5, atol=0)


def test_sample_sigma_hand_values_and_statistics():
    n = torch.randn(4, generator=torch.Generator().manual_seed(3))
    sigma = sample_sigma((4,), 0.7, 1.6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sigma, torch.exp(0.7 + 1.6 * n))

    log_sigma = sample_sigma((200_000,), 0.7, 1.6, generator=torch.Generator().manual_seed(4)).log()
    assert abs(log_sigma.mean().item() - 0.7) < 0.02
    assert abs(log_sigma.std().item() - 1.6) < 0.02


def test_sample_cond_sigma_hand_values_and_statistics():
    n = torch.randn(4, generator=torch.Generator().manual_seed(5))
    cond_sigma = sample_cond_sigma((4,), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(cond_sigma, torch.exp(-3.0 + 0.5 * n))

    log_sigma = sample_cond_sigma((200_000,), generator=torch.Generator().manual_seed(6)).log()
    assert abs(log_sigma.mean().item() + 3.0) < 0.01
    assert abs(log_sigma.std().item() - 0.5) < 0.01
