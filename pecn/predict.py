"""One InstructPix2Pix prediction of the future frame, the same for validation and sampling."""

import numpy as np
from PIL import Image

from common.images import to_rgb
from common.pixels import vae_reconstruction


def predict_frame(pipeline, input_image: Image.Image, prompt: str, num_inference_steps: int,
                  image_guidance_scale: float, guidance_scale: float, generator=None) -> Image.Image:
    """The predicted frame for (`input_image`, `prompt`), at the input frame's size."""
    prediction = pipeline(
        prompt, image=input_image, num_inference_steps=num_inference_steps,
        image_guidance_scale=image_guidance_scale, guidance_scale=guidance_scale, generator=generator,
    ).images[0]
    # The pipeline rounds sizes down to a multiple of the VAE's downsampling factor.
    return prediction if prediction.size == input_image.size else prediction.resize(input_image.size, resample=Image.Resampling.BICUBIC)


def reconstruct_frame(vae, image: Image.Image) -> Image.Image:
    """`image` encoded (posterior mode) and decoded by `vae`, at the image's size: what the VAE alone keeps of it."""
    reconstruction = Image.fromarray(vae_reconstruction(vae, np.asarray(image.convert("RGB"))[None], chunk_size=1)[0])
    # As predict_frame: a size that is not a multiple of the VAE's downsampling comes back rounded.
    return reconstruction if reconstruction.size == image.size else reconstruction.resize(image.size, resample=Image.Resampling.BICUBIC)


def rgb_frames(example: dict) -> dict:
    """The pair's frames as 8-bit RGB, converted as GenEx frames are (16-bit scaled, alpha over white), whatever the files' mode."""
    return dict(example, input_image=to_rgb(example["input_image"]), edited_image=to_rgb(example["edited_image"]))
