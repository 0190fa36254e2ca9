"""A tiny, randomly initialised Stable Video Diffusion pipeline with SVD's real architecture classes.

The hub is out of reach on development and CI machines, so tests and smoke runs load this
folder with the same `from_pretrained` code that loads `stabilityai/stable-video-diffusion-img2vid-xt-1-1`.
The VAE has two blocks by default (2x downsampling); `--vae_block_out_channels 32` gives one block, which
does not downsample: the demo's, at 32x16 (a two-block tiny VAE learns the demo's frames too slowly to
keep their colour). With `--fit_vae_frames`, the VAE is first fitted to those frames (common/vae_fitting.py), so that what
is decoded through it looks like them. With `--fit_unet_steps` too, the whole UNet is then fitted to the
same frames as still images (each frame conditioning its own generation, SVD's EDM loss on one-frame
clips): a stand-in for SVD's pretraining, so that the base model keeps its conditioning image and what
fine-tuning the temporal blocks adds (the forward walk) can be seen. That is the demo's base model.
`--fit_unet_frames_per_clip 8` fits it to 8-frame runs of the same videos instead: a base that has seen them move.

    python -m genex.tiny --output_dir /tmp/tiny-svd [--seed 0] [--vae_block_out_channels 32] [--fit_vae_frames ./frames [--fit_unet_steps 100 [--fit_unet_frames_per_clip 1]]]
"""

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from common.cli import run_cli
from common.output_dir import share_saved_pipeline
from common.vae_fitting import FitSettings, add_fit_settings_args, add_vae_fitting_args, fit_module, fit_settings, fit_vae_to_videos, read_clips
from genex.data import find_frame_folders
from genex.models import Encoders
from genex.step import Objective, loss_of, predict

# The scheduler of stabilityai/stable-video-diffusion-img2vid-xt-1-1 (EDM v-prediction, continuous timesteps).
SVD_SCHEDULER_CONFIG = dict(
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

# Two blocks: the VAE downsamples by 2, as fast as the tests need.
VAE_BLOCK_OUT_CHANNELS = (32, 64)
# The temporal decoder is fitted on runs of this many consecutive frames, so it learns to decode them together.
VAE_FIT_FRAMES_PER_CLIP = 4
# Two clips of four frames per step.
VAE_FIT_DEFAULTS = FitSettings(steps=120, batch_size=2)
# Eight still images per step; --fit_unet_steps 0 (the default) leaves the UNet random.
UNET_FIT_DEFAULTS = FitSettings(steps=0, learning_rate=2e-3, batch_size=8)

# OpenAI CLIP normalisation, as in SVD's feature_extractor/preprocessor_config.json.
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tiny_svd_pipeline(seed: int = 0, vae_block_out_channels: Sequence[int] = VAE_BLOCK_OUT_CHANNELS) -> StableVideoDiffusionPipeline:
    """SVD pipeline with tiny random weights, the VAE one block per entry of `vae_block_out_channels` (each after the
    first halves the size); the same seed and widths give identical weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetSpatioTemporalConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            cross_attention_dim=32,
            # Two heads of width 16 (SVD's are 64 wide): eight heads of width 4 made every step twice as slow on a CPU.
            num_attention_heads=2,
            addition_time_embed_dim=32,
            projection_class_embeddings_input_dim=96,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        )
        vae = AutoencoderKLTemporalDecoder(
            block_out_channels=list(vae_block_out_channels),
            down_block_types=("DownEncoderBlock2D",) * len(vae_block_out_channels),
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32,
                projection_dim=32,
                image_size=224,
                patch_size=14,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=37,
            )
        )
    feature_extractor = CLIPImageProcessor(
        image_mean=CLIP_IMAGE_MEAN,
        image_std=CLIP_IMAGE_STD,
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
    )
    return StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG),
        feature_extractor=feature_extractor,
    )


def fit_unet_to_clips(pipeline: StableVideoDiffusionPipeline, clips: torch.Tensor, settings: FitSettings) -> list[float]:
    """Fit the whole UNet in place to uint8 clips [N, F, 3, H, W] (F = 1: still images), each conditioned on its first
    frame, with the EDM loss of training (genex.step, conditioning dropout included) through the pipeline's VAE;
    returns the loss of every step."""
    encoders = Encoders(pipeline.vae, pipeline.image_encoder, pipeline.feature_extractor)
    objective = Objective(num_frames=clips.shape[1])

    def batch_loss(indices, generator):
        prediction = predict({"pixel_values": clips[indices]}, pipeline.unet, encoders, objective, generator, torch.float32)
        return loss_of(prediction, encoders.vae, objective, generator, 0, settings.steps)[0]

    return fit_module(pipeline.unet, batch_loss, len(clips), settings, "fitting the UNet")


def mean_of_tenth(losses: list, last: bool) -> float:
    """Mean of the first (or last) tenth of the losses, at least one: EDM losses swing with the sigma drawn each step."""
    count = max(1, len(losses) // 10)
    return sum(losses[-count:] if last else losses[:count]) / count


def save_pipeline(pipeline: StableVideoDiffusionPipeline, output_dir) -> Path:
    """Save `pipeline` (safetensors) as a folder that from_pretrained loads."""
    output_dir = Path(output_dir)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    share_saved_pipeline(output_dir)
    return output_dir


def save_tiny_svd_pipeline(output_dir, seed: int = 0, vae_frames_folder: Optional[str] = None, fitting: FitSettings = VAE_FIT_DEFAULTS,
                           unet_fitting: Optional[FitSettings] = None, unfitted_unet_output_dir=None,
                           vae_block_out_channels: Sequence[int] = VAE_BLOCK_OUT_CHANNELS, unet_frames_per_clip: int = 1) -> Path:
    """Build the tiny pipeline, fit its VAE (then, with `unet_fitting`, its whole UNet, to runs of `unet_frames_per_clip`
    frames) to the frame folders under `vae_frames_folder` if given, and save it (safetensors); `unfitted_unet_output_dir`
    also gets the pipeline as it was before the UNet fit (the fitted VAE, the random UNet)."""
    # SVD's temporal VAE normalises every block in 32 groups.
    if any(width < 1 or width % 32 for width in vae_block_out_channels):
        raise ValueError(f"--vae_block_out_channels: each width must be a positive multiple of 32 (the VAE's 32 norm groups), got "
                         f"{' '.join(map(str, vae_block_out_channels))}")
    pipeline = build_tiny_svd_pipeline(seed, vae_block_out_channels)
    if unet_fitting is None and unfitted_unet_output_dir is not None:
        raise ValueError("--unfitted_unet_output_dir: needs --fit_unet_steps (without it the saved UNet is the unfitted one)")
    if unet_fitting is not None and vae_frames_folder is None:
        raise ValueError("--fit_unet_steps: needs --fit_vae_frames (the UNet is fitted to those frames, through the fitted VAE)")
    if unet_frames_per_clip < 1:
        raise ValueError(f"--fit_unet_frames_per_clip: must be at least 1 (1: still images), got {unet_frames_per_clip}")
    if unet_fitting is None and unet_frames_per_clip != 1:
        raise ValueError("--fit_unet_frames_per_clip: needs --fit_unet_steps (it sets the clips of the UNet fit)")
    if vae_frames_folder is not None:
        if not Path(vae_frames_folder).is_dir():
            raise ValueError(f"{vae_frames_folder}: no such folder of frames to fit the VAE to")
        videos = list(find_frame_folders(vae_frames_folder).values())
        if not videos:
            raise ValueError(f"{vae_frames_folder}: no folder of frame images under it to fit the VAE to")
        # Checked before the VAE fit, so a clip longer than every video costs no fitting time.
        longest = max(map(len, videos))
        if unet_fitting is not None and longest < unet_frames_per_clip:
            raise ValueError(f"--fit_unet_frames_per_clip {unet_frames_per_clip}: no video under {vae_frames_folder} has that many frames "
                             f"(the longest has {longest})")
        print(fit_vae_to_videos(pipeline.vae, videos, VAE_FIT_FRAMES_PER_CLIP, fitting, source=vae_frames_folder).summary())
        if unfitted_unet_output_dir is not None:
            print(f"Before the UNet fit: {save_pipeline(pipeline, unfitted_unet_output_dir)}")
        if unet_fitting is not None:
            clips = read_clips(videos, unet_frames_per_clip, vae_frames_folder)
            shown_as = "still images" if unet_frames_per_clip == 1 else f"{len(clips)} clips of {unet_frames_per_clip} frames"
            losses = fit_unet_to_clips(pipeline, clips, unet_fitting)
            print(f"UNet fitted to the {clips.shape[0] * clips.shape[1]} frames as {shown_as} in {len(losses)} steps: EDM loss "
                  f"{mean_of_tenth(losses, last=False):.4f} -> {mean_of_tenth(losses, last=True):.4f} (means of the first and last tenth of the steps)")
    return save_pipeline(pipeline, output_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Save a tiny random Stable Video Diffusion pipeline, its VAE (and UNet) optionally fitted to frames.")
    parser.add_argument("--output_dir", required=True, help="Folder to save the pipeline to.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights (and of the fits).")
    parser.add_argument("--vae_block_out_channels", type=int, nargs="+", default=list(VAE_BLOCK_OUT_CHANNELS),
                        help="Widths of the VAE's blocks, multiples of 32; each block after the first halves the size (32: one block, no downsampling).")
    add_vae_fitting_args(parser, "Fit the VAE to the frames under this folder first (every folder of frame images in it, as prepare_dataset.py writes).", VAE_FIT_DEFAULTS)
    add_fit_settings_args(parser.add_argument_group("fitting the UNet (optional, after the VAE)"), "unet", UNET_FIT_DEFAULTS,
                          steps_help="Then fit the whole UNet to the --fit_vae_frames frames as still images for this many Adam steps "
                                     "(a stand-in for SVD's pretraining: the base then keeps its conditioning image); 0: the UNet stays random.",
                          batch_help="Clips (still images by default) per fitting step.")
    parser.add_argument("--fit_unet_frames_per_clip", type=int, default=1,
                        help="Frames per clip of the UNet fit: 1 fits it to still images (the demo's base, which does not walk); "
                             "8 fits it to 8-frame runs of the videos, conditioned on each run's first frame (a base that has seen them move).")
    parser.add_argument("--unfitted_unet_output_dir", type=str, default=None,
                        help="Also save the pipeline as it is before the UNet fit (the fitted VAE, the random UNet) to this folder: the untrained row to compare with.")
    args = parser.parse_args(argv)
    unet_fitting = fit_settings(args, "unet") if args.fit_unet_steps != 0 else None
    print(save_tiny_svd_pipeline(args.output_dir, args.seed, args.fit_vae_frames, fit_settings(args), unet_fitting, args.unfitted_unet_output_dir,
                                 args.vae_block_out_channels, args.fit_unet_frames_per_clip))


if __name__ == "__main__":
    run_cli(main)
