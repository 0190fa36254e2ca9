"""Conditioning dropout shared by both pipelines (the InstructPix2Pix scheme), for classifier-free guidance."""

import torch


def conditioning_dropout_masks(batch_size: int, p: float, generator=None, device=None):
    """Per-sample (keep_embedding, keep_image) bool masks [B] for classifier-free guidance."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"conditioning dropout probability must be in [0, 1], got {p}")
    # InstructPix2Pix (Brooks et al. 2023): u < 2p drops the text/CLIP embedding, p <= u < 3p the image conditioning,
    # so each alone is dropped with probability p and both together with probability p.
    u = torch.rand(batch_size, generator=generator, device=device)
    keep_embedding = u >= 2 * p
    keep_image = (u < p) | (u >= 3 * p)
    return keep_embedding, keep_image
