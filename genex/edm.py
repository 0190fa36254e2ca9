"""The EDM training objective of Stable Video Diffusion (v-scaling, sigma_data = 1).

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM);
SVD's `VScalingWithEDMcNoise` and `VWeighting` in Stability-AI/generative-models. The noise-level
distribution, the preconditioning and the loss weight are separate pieces, as in k-diffusion.
"""

import torch

# SVD's noise augmentation of the conditioning frame: ln(cond_sigma) ~ N(-3.0, 0.5^2).
COND_P_MEAN = -3.0
COND_P_STD = 0.5


def append_dims(x: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so a per-sample `[B]` tensor broadcasts against `target_ndim`-D data."""
    dims_to_append = target_ndim - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_ndim is {target_ndim}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def sample_sigma(shape, p_mean: float, p_std: float, generator=None, device=None) -> torch.Tensor:
    """Training noise levels: sigma = exp(P_mean + P_std * n), n ~ N(0, 1)."""
    # EDM Table 1 (training): ln(sigma) ~ N(P_mean, P_std^2).
    n = torch.randn(shape, generator=generator, device=device)
    return (p_mean + p_std * n).exp()


def sample_cond_sigma(shape, generator=None, device=None) -> torch.Tensor:
    """Noise-augmentation levels of the conditioning frame: cond_sigma = exp(-3.0 + 0.5 * n)."""
    return sample_sigma(shape, COND_P_MEAN, COND_P_STD, generator=generator, device=device)


def svd_scalings(sigma: torch.Tensor):
    """Preconditioning (c_skip, c_out, c_in, c_noise) of SVD for noise level `sigma`."""
    # EDM Table 1 preconditioning with sigma_data = 1, v-prediction sign (c_out < 0), c_noise = ln(sigma)/4.
    c_skip = 1 / (sigma**2 + 1)
    c_out = -sigma / (sigma**2 + 1).sqrt()
    c_in = 1 / (sigma**2 + 1).sqrt()
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def edm_weight(sigma: torch.Tensor) -> torch.Tensor:
    """Loss weight lambda(sigma) = (1 + sigma^2) / sigma^2."""
    # EDM Table 1 with sigma_data = 1: lambda = 1 / c_out^2, so the loss in F-space has unit weight.
    return (1 + sigma**2) / sigma**2


def denoise(unet, noisy_latents, sigma, cond_latents, encoder_hidden_states, added_time_ids) -> torch.Tensor:
    """SVD's denoiser D(noisy; sigma): the x0 estimate for `noisy_latents` [B,F,4,h,w] at per-sample `sigma` [B].

    `unet` is called as a module (so DDP and compiled wrappers work); `cond_latents` [B,F,4,h,w] are the
    conditioning-frame latents, concatenated after the scaled noisy latents on the channel dimension.
    """
    if noisy_latents.ndim != 5:
        raise ValueError(f"noisy_latents must be [B,F,C,h,w], got shape {tuple(noisy_latents.shape)}")
    if cond_latents.shape != noisy_latents.shape:
        raise ValueError(f"cond_latents {tuple(cond_latents.shape)} must match noisy_latents {tuple(noisy_latents.shape)}")
    if sigma.shape != noisy_latents.shape[:1]:
        raise ValueError(f"sigma must be [B] = [{noisy_latents.shape[0]}], got shape {tuple(sigma.shape)}")
    c_skip, c_out, c_in, c_noise = svd_scalings(sigma)
    c_skip, c_out, c_in = (append_dims(c, noisy_latents.ndim) for c in (c_skip, c_out, c_in))
    # The UNet reads c_in * noisy with the conditioning latents stacked on channels (8 input channels).
    model_input = torch.cat([c_in * noisy_latents, cond_latents], dim=2)
    model_output = unet(
        model_input,
        c_noise,
        encoder_hidden_states=encoder_hidden_states,
        added_time_ids=added_time_ids,
        return_dict=False,
    )[0]
    # EDM eq. 7: D(x; sigma) = c_skip * x + c_out * F(c_in * x; c_noise).
    return c_skip * noisy_latents + c_out * model_output


def edm_loss(denoised: torch.Tensor, z0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Weighted denoising loss mean(lambda(sigma) * (D - z0)^2), `sigma` per sample [B]."""
    # EDM eq. 8 (expectation over samples, mean over elements), computed in float32.
    weight = append_dims(edm_weight(sigma.float()), denoised.ndim)
    return (weight * (denoised.float() - z0.float()) ** 2).mean()
