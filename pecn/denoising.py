"""Where a PECN model loses quality, noise level by noise level: its one-step estimate of the target frame.

    python -m pecn.denoising --model_dir outputs/instruct_pix2pix_128 --frames_dir data/sthv2/frames_128x128 \
        --val_annotations data/sthv2/annotations/val_filtered.json --add_progress

For each validation pair and each timestep t, the target frame's latents z0 are noised as in training,
z_t = sqrt(a_t) z0 + sqrt(1 - a_t) n (a_t: the scheduler's cumulative alpha), the UNet predicts from z_t, the
input frame's latents and the prompt (no guidance), and its estimate of z0 is decoded and scored against the
target frame. Sampling starts at t = 999 and every step leans on the estimates at higher t, so a model whose
estimates are good at low t and poor at high t samples frames whose colours and layout drift. Beside them:
the input frame through the VAE (a model that copies its input in latent space) and the target through the
VAE (the ceiling of anything decoded by it). Pair i is noised with seed + i, so a pair's numbers do not depend
on --num_samples.
"""

import argparse
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from common.cli import SetupError, add_device_argument, count_or_all, resolve_device, run_cli
from common.metrics import markdown_table, psnr
from common.pixels import decoded_uint8, to_model_range
from pecn.models import Components, load_models
from pecn.pairs import build_pair_dataset, collate, pair_transform

DEFAULT_TIMESTEPS = (50, 200, 400, 600, 800, 999)


def predicted_original(noisy_latents: torch.Tensor, model_output: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The estimate of z0 from z_t and the UNet's output at cumulative alpha a_t (broadcastable).

    epsilon: (z_t - sqrt(1 - a_t) eps) / sqrt(a_t) (DDPM, Ho et al. 2020, eq. 15); v_prediction: sqrt(a_t) z_t - sqrt(1 - a_t) v
    (Salimans and Ho 2022).
    """
    if prediction_type == "epsilon":
        return (noisy_latents - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * noisy_latents - (1 - alpha_bar).sqrt() * model_output
    raise SetupError(f"unknown prediction type {prediction_type}")


@torch.no_grad()
def one_step_psnrs(components: Components, batch: dict, timesteps: Sequence[int], generator: torch.Generator) -> dict:
    """PSNRs against the target of one pair (batch of 1, pecn.pairs' collated uint8 pixels): the one-step estimate at each of
    `timesteps` ({t: dB}), the input through the VAE ("input_through_vae") and the target through it ("vae")."""
    vae, unet, scheduler = components.vae, components.unet, components.noise_scheduler
    device = unet.device
    target_pixels = batch["edited_pixel_values"].permute(0, 2, 3, 1).numpy()
    # As in training: target latents scaled, input-image latents unscaled (posterior modes: the diagnostic draws no VAE noise).
    target_latents = vae.encode(to_model_range(batch["edited_pixel_values"]).to(device)).latent_dist.mode()
    input_latents = vae.encode(to_model_range(batch["original_pixel_values"]).to(device)).latent_dist.mode()
    text_embedding = components.text_encoder(batch["input_ids"].to(device))[0]
    z0 = target_latents * vae.config.scaling_factor
    scores = {"input_through_vae": psnr(decoded_uint8(vae, input_latents)[0], target_pixels[0]),
              "vae": psnr(decoded_uint8(vae, target_latents)[0], target_pixels[0])}
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    for t in timesteps:
        noise = torch.randn(z0.shape, generator=generator).to(device)
        timestep = torch.tensor([t], device=device)
        noisy = scheduler.add_noise(z0, noise, timestep)
        output = unet(torch.cat([noisy, input_latents], dim=1), timestep, text_embedding, return_dict=False)[0]
        estimate = predicted_original(noisy, output, alphas_cumprod[t], scheduler.config.prediction_type)
        scores[t] = psnr(decoded_uint8(vae, estimate / vae.config.scaling_factor)[0], target_pixels[0])
    return scores


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="InstructPix2Pix pipeline folder (train_instruct_pix2pix.py's --output_dir).")
    parser.add_argument("--frames_dir", required=True, help="Frames extracted by python -m pecn.video_loader.")
    parser.add_argument("--val_annotations", required=True, help="Filtered validation annotations.")
    parser.add_argument("--resolution", type=int, default=128, help="Square size the frames are resized to, as in training.")
    parser.add_argument("--input_frame_idx", type=int, default=20, help="0-based input frame N.")
    parser.add_argument("--target_frame_idx", type=int, default=21, help="0-based target frame N+T.")
    parser.add_argument("--add_progress", action="store_true", help="Prompt with the progress sentence, as the model was trained.")
    parser.add_argument("--num_samples", type=count_or_all, default=None, help='Pairs to score, from the start of the file; "all" or 0 (default) for every pair.')
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS), help="Training timesteps to noise the target to.")
    parser.add_argument("--seed", type=int, default=42, help="Pair i is noised with seed + i.")
    add_device_argument(parser, "float32 on both")
    args = parser.parse_args(argv)
    if args.resolution < 1:
        parser.error(f"--resolution must be positive, got {args.resolution}")
    args.device = resolve_device(parser, args.device)
    return args


def main(argv: Optional[list[str]] = None) -> list[list[str]]:
    args = parse_args(argv)
    components = load_models(args.model_dir)
    num_train_timesteps = components.noise_scheduler.config.num_train_timesteps
    # Checked before any pair is scored: a typo costs nothing.
    outside = [t for t in args.timesteps if not 0 <= t < num_train_timesteps]
    if outside:
        raise SetupError(f"--timesteps {' '.join(map(str, outside))}: the model's scheduler has timesteps 0 to {num_train_timesteps - 1}")
    for module in (components.vae, components.text_encoder, components.unet):
        module.to(args.device).eval()
    pairs, _ = build_pair_dataset(args.val_annotations, args.frames_dir, args.input_frame_idx, args.target_frame_idx, args.add_progress, args.num_samples)
    pairs = pairs.with_transform(pair_transform(args.resolution, components.tokenizer))
    scores = [one_step_psnrs(components, collate([pairs[i]]), args.timesteps, torch.Generator().manual_seed(args.seed + i))
              for i in tqdm(range(len(pairs)), desc="pairs", unit="pair")]
    mean = {key: float(np.mean([score[key] for score in scores])) for key in scores[0]}
    alphas_cumprod = components.noise_scheduler.alphas_cumprod
    rows = [[f"one-step estimate at t={t}", f"{alphas_cumprod[t].sqrt():.3f}", f"{mean[t]:.2f}"] for t in args.timesteps]
    rows += [["input through the VAE (copy in latent space)", "", f"{mean['input_through_vae']:.2f}"],
             ["target through the VAE (ceiling)", "", f"{mean['vae']:.2f}"]]
    print(f"# One-step estimates of {args.model_dir}: {len(scores)} pairs of {args.val_annotations}, frame {args.input_frame_idx} -> "
          f"{args.target_frame_idx}, {args.resolution}x{args.resolution}, progress prompt {'on' if args.add_progress else 'off'}, seed {args.seed}\n")
    print("\n".join(markdown_table(["estimate of the target frame", "sqrt(a_t), the signal kept", "PSNR (dB)"], rows)))
    return rows


if __name__ == "__main__":
    run_cli(main)
