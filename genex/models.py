"""The SVD components of a pipeline folder as GenEx-Explorer trains them: loading, the trainable set, device placement, saving."""

import contextlib
import math
from typing import NamedTuple

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from common.checkpoints import load_trainable_state_dict, trainable_state_dict
from common.cli import SetupError, model_folder_error

TRAINABLE_MARKER = "temporal_transformer_block"


class Encoders(NamedTuple):
    """The frozen modules that turn frames into SVD's inputs."""

    vae: AutoencoderKLTemporalDecoder
    image_encoder: CLIPVisionModelWithProjection
    feature_extractor: CLIPImageProcessor


def load_encoders(path: str, variant=None) -> Encoders:
    """The VAE, image encoder and feature extractor of an SVD pipeline folder (what caching and training both need)."""
    try:
        feature_extractor = CLIPImageProcessor.from_pretrained(path, subfolder="feature_extractor")
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(path, subfolder="image_encoder", variant=variant)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(path, subfolder="vae", variant=variant)
    except (OSError, ValueError) as error:
        raise model_folder_error(path, error, "Stable Video Diffusion", variant) from None
    return Encoders(vae, image_encoder, feature_extractor)


def load_svd_pipeline(model_dir, device: str) -> StableVideoDiffusionPipeline:
    """The StableVideoDiffusionPipeline of `model_dir` on `device`, fp16 on CUDA and fp32 elsewhere (the sampler's and the evaluation's)."""
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        pipeline = StableVideoDiffusionPipeline.from_pretrained(model_dir, dtype=dtype)
    except (OSError, ValueError) as error:
        raise model_folder_error(str(model_dir), error, "Stable Video Diffusion") from None
    return pipeline.to(device)


def resolution_multiple(vae, unet) -> int:
    """Width and height must be multiples of this: the VAE's and the UNet's downsampling, and the SVD pipeline's own 8."""
    downsampling = 2 ** (len(vae.config.block_out_channels) - 1) * 2 ** (len(unet.config.block_out_channels) - 1)
    return math.lcm(8, downsampling)


def check_svd_fits(vae, unet, folder, width: int, height: int) -> None:
    """Refuse, before training or generating, a UNet that cannot take SVD's inputs or a size the model cannot generate."""
    latent_channels, in_channels = vae.config.latent_channels, unet.config.in_channels
    if in_channels != 2 * latent_channels:
        raise ValueError(f"{folder}: unet takes {in_channels} input channels, SVD needs 2 x {latent_channels} (noisy + conditioning latents)")
    multiple = resolution_multiple(vae, unet)
    if width % multiple or height % multiple:
        raise ValueError(f"--width {width} and --height {height} must be multiples of {multiple} for this model")


def load_models(path: str, variant, width: int, height: int) -> tuple[Encoders, UNetSpatioTemporalConditionModel]:
    """The encoders and UNet of a pipeline folder; a clear error when it is not one, or its UNet or width x height do not fit."""
    encoders = load_encoders(path, variant)
    try:
        unet = UNetSpatioTemporalConditionModel.from_pretrained(path, subfolder="unet", variant=variant)
        EulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
    except (OSError, ValueError) as error:
        raise model_folder_error(path, error, "Stable Video Diffusion", variant) from None
    check_svd_fits(encoders.vae, unet, path, width, height)
    return encoders, unet


def select_temporal_blocks(unet) -> list:
    """Make exactly the temporal transformer blocks trainable; returns them as (name, parameter)."""
    for name, param in unet.named_parameters():
        param.requires_grad_(TRAINABLE_MARKER in name)
    return [(name, param) for name, param in unet.named_parameters() if param.requires_grad]


def freeze_all_but_temporal_blocks(unet, dtype) -> list:
    """Only temporal transformer blocks train; every other weight is frozen and held in `dtype`."""
    trainable = select_temporal_blocks(unet)
    if not trainable:
        raise SetupError(f"the UNet has no parameters named *{TRAINABLE_MARKER}*: is it an SVD UNet?")
    for param in unet.parameters():
        if not param.requires_grad:
            param.data = param.data.to(dtype)
    return trainable


def device_placement(latents_cached: bool, scl_loss: bool, encoders: Encoders) -> tuple[list, list]:
    """(frozen modules a training step needs on the device, those kept on the CPU)."""
    vae, image_encoder = encoders.vae, encoders.image_encoder
    # With cached latents a step encodes only the first frame (VAE encoder), and decodes only for SCL.
    if not latents_cached:
        return [vae, image_encoder], []
    if scl_loss:
        return [vae], [image_encoder]
    return [vae.encoder, vae.quant_conv], [vae.decoder, image_encoder]


@contextlib.contextmanager
def moved_to(device, modules):
    """Inside, `modules` are on `device`; afterwards back on the CPU."""
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")


def build_pipeline(path: str, unet, encoders: Encoders) -> StableVideoDiffusionPipeline:
    """A pipeline around the modules in memory, with the base folder's sampling scheduler (validation)."""
    scheduler = EulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
    return StableVideoDiffusionPipeline(vae=encoders.vae, image_encoder=encoders.image_encoder, unet=unet, scheduler=scheduler,
                                        feature_extractor=encoders.feature_extractor)


def save_final_pipeline(path: str, variant, trained_unet, output_dir) -> None:
    """Write `output_dir` as a complete SVD pipeline: the base's frozen weights bit for bit, the trained temporal blocks."""
    final_unet = UNetSpatioTemporalConditionModel.from_pretrained(path, subfolder="unet", variant=variant)
    select_temporal_blocks(final_unet)
    load_trainable_state_dict(final_unet, trainable_state_dict(trained_unet), "trained UNet")
    pipeline = StableVideoDiffusionPipeline.from_pretrained(path, unet=final_unet, variant=variant)
    pipeline.save_pretrained(output_dir)
