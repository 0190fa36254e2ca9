"""Pixels travel from the data loader as uint8 (a quarter of float32's bytes) and are scaled on the device."""

import torch


def to_model_range(pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 pixels [0, 255] to the models' [-1, 1] in `dtype`, on whatever device they already are."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    return pixels.to(dtype) / 127.5 - 1.0
