"""Turn a text-to-image UNet into an InstructPix2Pix UNet by widening its input convolution."""

import torch
from diffusers import UNet2DConditionModel

TEXT_TO_IMAGE_IN_CHANNELS = 4


def unet_name(unet: UNet2DConditionModel) -> str:
    """Where the UNet was loaded from, so an error names the folder the user gave ("UNet" when built in memory)."""
    folder = unet.config.get("_name_or_path")
    return f"{folder}: UNet" if folder else "UNet"


def expand_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> UNet2DConditionModel:
    """Grow conv_in from 4 to `in_channels` inputs (new weights zero); an `in_channels` UNet is returned as is."""
    if in_channels <= TEXT_TO_IMAGE_IN_CHANNELS:
        raise ValueError(f"in_channels must exceed {TEXT_TO_IMAGE_IN_CHANNELS} to add image-latent channels, got {in_channels}")
    conv_in = unet.conv_in
    if conv_in.in_channels == in_channels:
        return unet
    if conv_in.in_channels != TEXT_TO_IMAGE_IN_CHANNELS:
        raise ValueError(
            f"{unet_name(unet)} conv_in has {conv_in.in_channels} input channels; expected {TEXT_TO_IMAGE_IN_CHANNELS} "
            f"(text-to-image) or {in_channels} (InstructPix2Pix)"
        )
    expanded = torch.nn.Conv2d(
        in_channels,
        conv_in.out_channels,
        conv_in.kernel_size,
        conv_in.stride,
        conv_in.padding,
        device=conv_in.weight.device,
        dtype=conv_in.weight.dtype,
    )
    # Zero weights on the image-latent channels: the expanded UNet starts as the text-to-image one.
    with torch.no_grad():
        expanded.weight.zero_()
        expanded.weight[:, :TEXT_TO_IMAGE_IN_CHANNELS] = conv_in.weight
        expanded.bias.copy_(conv_in.bias)
    unet.conv_in = expanded
    unet.register_to_config(in_channels=in_channels)
    return unet
