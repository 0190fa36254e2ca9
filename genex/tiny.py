"""A tiny, randomly initialised Stable Video Diffusion pipeline with SVD's real architecture classes.

The hub is out of reach on development and CI machines, so tests and smoke runs load this
folder with the same `from_pretrained` code that loads `stabilityai/stable-video-diffusion-img2vid-xt-1-1`.
With `--fit_vae_frames`, the VAE is first fitted to those frames (common/vae_fitting.py), so that what
is decoded through it looks like them: the demo's base model.

    python -m genex.tiny --output_dir /tmp/tiny-svd [--seed 0] [--fit_vae_frames ./Genex-DB]
"""

import argparse
from pathlib import Path
from typing import Optional

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
from common.vae_fitting import FitSettings, add_vae_fitting_args, fit_settings, fit_vae_to_videos
from genex.data import find_frame_folders

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

# The temporal decoder is fitted on runs of this many consecutive frames, so it learns to decode them together.
VAE_FIT_FRAMES_PER_CLIP = 4
# Two clips of four frames per step; on the demo's 64x32 frames (2 CPU cores) about a minute.
VAE_FIT_DEFAULTS = FitSettings(steps=120, batch_size=2)

# OpenAI CLIP normalisation, as in SVD's feature_extractor/preprocessor_config.json.
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tiny_svd_pipeline(seed: int = 0) -> StableVideoDiffusionPipeline:
    """SVD pipeline with tiny random weights; the same seed gives identical weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetSpatioTemporalConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            cross_attention_dim=32,
            num_attention_heads=8,
            addition_time_embed_dim=32,
            projection_class_embeddings_input_dim=96,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        )
        vae = AutoencoderKLTemporalDecoder(
            block_out_channels=[32, 64],
            down_block_types=("DownEncoderBlock2D",) * 2,
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


def save_tiny_svd_pipeline(output_dir, seed: int = 0, vae_frames_folder: Optional[str] = None, fitting: FitSettings = VAE_FIT_DEFAULTS) -> Path:
    """Build the tiny pipeline, fit its VAE to the frame folders under `vae_frames_folder` if given, and save it (safetensors)."""
    output_dir = Path(output_dir)
    pipeline = build_tiny_svd_pipeline(seed)
    if vae_frames_folder is not None:
        videos = list(find_frame_folders(vae_frames_folder).values())
        if not videos:
            raise ValueError(f"{vae_frames_folder}: no folder of frame images under it to fit the VAE to")
        print(fit_vae_to_videos(pipeline.vae, videos, VAE_FIT_FRAMES_PER_CLIP, fitting, source=vae_frames_folder).summary())
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    share_saved_pipeline(output_dir)
    return output_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description="Save a tiny random Stable Video Diffusion pipeline, its VAE optionally fitted to frames.")
    parser.add_argument("--output_dir", required=True, help="Folder to save the pipeline to.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights (and of the VAE fit).")
    add_vae_fitting_args(parser, "Fit the VAE to the frames under this folder first (every folder of frame images in it, as prepare_dataset.py writes).", VAE_FIT_DEFAULTS)
    args = parser.parse_args(argv)
    print(save_tiny_svd_pipeline(args.output_dir, args.seed, args.fit_vae_frames, fit_settings(args)))


if __name__ == "__main__":
    run_cli(main)
