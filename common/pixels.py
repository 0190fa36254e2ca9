"""Pixels travel from the data loader as uint8 (a quarter of float32's bytes) and are scaled on the device."""

import torch


def to_model_range(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels in [0, 255] as contiguous `dtype` in [-1, 1]: x / 127.5 - 1 (run it on the device, after the uint8 copy)."""
    if pixels.dtype != torch.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    # Scaled in float32 and then cast, so every dtype sees the values the float32 pipeline sees; batches
    # may arrive channels-last from a dataset's view and leave in the usual layout.
    return (pixels.to(torch.float32, memory_format=torch.contiguous_format) / 127.5 - 1.0).to(dtype)
