"""pecn.denoising: the one-step estimate against diffusers' DDPM step and a hand-computed value, and the diagnostic on a
tiny pipeline with an oracle UNet, whose estimate is the target itself."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from common.cli import SetupError
from conftest import one_line_error
from pecn import dataset, denoising, video_loader
from pecn.models import load_models
from pecn.pairs import build_pair_dataset, collate, pair_transform
from pecn.synthetic import write_synthetic_ssv2
from pecn.tiny import save_tiny_pipeline

SIZE = 32
TIMESTEPS = (0, 500, 999)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predicted_original_is_the_ddpm_steps_estimate(prediction_type):
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type, clip_sample=False)
    generator = torch.Generator().manual_seed(0)
    sample, output = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    for t in TIMESTEPS:
        expected = scheduler.step(output, t, sample, generator=generator).pred_original_sample
        torch.testing.assert_close(denoising.predicted_original(sample, output, scheduler.alphas_cumprod[t], prediction_type), expected)


def test_predicted_original_by_hand():
    # a_t = 1/4: (1 - sqrt(3/4) * 1) / (1/2) for epsilon; (1/2) * 1 - sqrt(3/4) * 1 for v.
    one, alpha_bar = torch.ones(1), torch.tensor(0.25)
    assert denoising.predicted_original(one, one, alpha_bar, "epsilon").item() == pytest.approx(2 - math.sqrt(3))
    assert denoising.predicted_original(one, one, alpha_bar, "v_prediction").item() == pytest.approx(0.5 - math.sqrt(0.75))
    with pytest.raises(SetupError, match="sample"):
        denoising.predicted_original(one, one, alpha_bar, "sample")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sthv2")
    write_synthetic_ssv2(root, train_per_class=0, val_per_class=1, test_videos=0, num_frames=24, width=SIZE, height=SIZE, short_videos=0)
    dataset.main(["--data_root", str(root), "--train_per_task", "0", "--val_per_task", "2"])
    annotations = root / "annotations" / "val_filtered.json"
    video_loader.main(["--data_root", str(root), "--annotation_files", str(annotations), "--sizes", f"{SIZE}x{SIZE}", "--num_workers", "1"])
    return annotations, root / f"frames_{SIZE}x{SIZE}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_pipeline("instruct_pix2pix", tmp_path_factory.mktemp("tiny_ip2p"))


class OracleUNet(torch.nn.Module):
    """Predicts the noise that makes the estimate equal `z0`, and records what it was given."""

    def __init__(self, z0, alphas_cumprod):
        super().__init__()
        self.z0, self.alphas_cumprod, self.device, self.calls = z0, alphas_cumprod, torch.device("cpu"), []

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=False):
        self.calls.append((sample, timestep))
        alpha_bar = self.alphas_cumprod[timestep].view(-1, 1, 1, 1)
        return ((sample[:, :4] - alpha_bar.sqrt() * self.z0) / (1 - alpha_bar).sqrt(),)


@pytest.fixture(scope="module")
def oracle_run(model_dir, data):
    """The first pair scored with an oracle UNet: its scores, the oracle, the pair's unscaled latents and the latents each decode was given."""
    components = load_models(str(model_dir))
    pairs, _ = build_pair_dataset(data[0], data[1], 20, 21, True, 1)
    batch = collate([pairs.with_transform(pair_transform(SIZE, components.tokenizer))[0]])
    vae = components.vae
    with torch.no_grad():
        target_latents = vae.encode(batch["edited_pixel_values"].float() / 127.5 - 1).latent_dist.mode()
        input_latents = vae.encode(batch["original_pixel_values"].float() / 127.5 - 1).latent_dist.mode()
    oracle = OracleUNet(target_latents * vae.config.scaling_factor, components.noise_scheduler.alphas_cumprod)
    # Recorded because this random VAE decodes almost any latents to the same colours: the scores alone would not tell.
    decoded_latents, decode = [], vae.decode
    vae.decode = lambda latents, *args, **kwargs: decoded_latents.append(latents) or decode(latents, *args, **kwargs)
    scores = denoising.one_step_psnrs(components._replace(unet=oracle), batch, TIMESTEPS, torch.Generator().manual_seed(0))
    return SimpleNamespace(scores=scores, oracle=oracle, target_latents=target_latents, input_latents=input_latents, decoded_latents=decoded_latents)


def test_an_oracles_estimates_decode_as_the_target_through_the_vae(oracle_run):
    # Decoded in order: the input's latents, the target's, then the estimate at each timestep, which for the oracle is the target's.
    decoded = oracle_run.decoded_latents
    assert len(decoded) == 2 + len(TIMESTEPS)
    torch.testing.assert_close(decoded[0], oracle_run.input_latents)
    for latents in decoded[1:]:
        torch.testing.assert_close(latents, oracle_run.target_latents, atol=1e-4, rtol=1e-4)
    for t in TIMESTEPS:
        assert oracle_run.scores[t] == pytest.approx(oracle_run.scores["vae"], abs=0.05), (t, oracle_run.scores)


def test_the_unet_sees_the_noised_target_and_the_unscaled_input_latents(oracle_run):
    oracle = oracle_run.oracle
    assert [int(timestep) for _, timestep in oracle.calls] == list(TIMESTEPS)
    for sample, timestep in oracle.calls:
        alpha_bar = oracle.alphas_cumprod[timestep]
        # z_t - sqrt(a_t) z0 is the noise times sqrt(1 - a_t): unit-variance noise over 4x16x16 latents.
        residual = sample[:, :4] - alpha_bar.sqrt() * oracle.z0
        assert residual.std().item() == pytest.approx((1 - alpha_bar).sqrt().item(), rel=0.15), int(timestep)
        torch.testing.assert_close(sample[:, 4:], oracle_run.input_latents)


def test_cli_prints_one_row_per_timestep(model_dir, data, capsys):
    rows = denoising.main(["--model_dir", str(model_dir), "--val_annotations", str(data[0]), "--frames_dir", str(data[1]),
                           "--resolution", str(SIZE), "--timesteps", "10", "990", "--add_progress", "--device", "cpu"])
    out = capsys.readouterr().out
    assert [row[0] for row in rows] == ["one-step estimate at t=10", "one-step estimate at t=990",
                                        "input through the VAE (copy in latent space)", "target through the VAE (ceiling)"]
    assert all(math.isfinite(float(row[2])) for row in rows)
    # sqrt(a_990) from Stable Diffusion's scaled-linear betas, computed here in float64.
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    assert f"| one-step estimate at t=990 | {np.sqrt(np.prod(1 - betas[:991])):.3f} |" in out
    assert f" {len(build_pair_dataset(data[0], data[1])[0])} pairs of {data[0]}" in out


def test_bad_flags_are_one_line_before_any_pair(model_dir, data, capsys, tmp_path):
    flags = ["--val_annotations", str(data[0]), "--frames_dir", str(data[1]), "--resolution", str(SIZE)]
    assert one_line_error(denoising.main, ["--model_dir", str(model_dir), *flags, "--timesteps", "500", "1000"], capsys) == \
        "error: --timesteps 1000: the model's scheduler has timesteps 0 to 999"
    assert one_line_error(denoising.main, ["--model_dir", str(tmp_path / "missing"), *flags], capsys) == \
        f"error: {tmp_path / 'missing'}: folder does not exist"
