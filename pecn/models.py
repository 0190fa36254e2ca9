"""The InstructPix2Pix components of a Stable Diffusion family folder, as PECN trains and saves them."""

from typing import NamedTuple

from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from common.cli import model_folder_error
from pecn.unet import expand_conv_in


class Components(NamedTuple):
    noise_scheduler: DDPMScheduler
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel


def load_models(path: str, variant=None) -> Components:
    """Scheduler, tokenizer, text encoder, VAE and an 8-channel UNet of a Stable Diffusion family folder."""
    try:
        noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", variant=variant)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", variant=variant)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=variant)
    except (OSError, ValueError) as error:
        raise model_folder_error(path, error, "Stable Diffusion / InstructPix2Pix", variant) from None
    # InstructPix2Pix conditions on the input image latents: 4 noisy + 4 image channels.
    return Components(noise_scheduler, tokenizer, text_encoder, vae, expand_conv_in(unet))


def load_pipeline(path: str, unet, variant=None, **components) -> StableDiffusionInstructPix2PixPipeline:
    """An InstructPix2Pix pipeline around `unet`, with the base folder's own sampling scheduler."""
    return StableDiffusionInstructPix2PixPipeline.from_pretrained(
        path, unet=unet, variant=variant, safety_checker=None, feature_extractor=None, requires_safety_checker=False, **components
    )
