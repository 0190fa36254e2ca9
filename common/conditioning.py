"""Conditioning dropout shared by both pipelines (the InstructPix2Pix scheme), for classifier-free guidance."""

import torch


def conditioning_dropout_masks(batch_size: int, p: float, generator=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample u ~ U(0,1): keep the text/CLIP conditioning unless u < 2p, the image conditioning unless p <= u < 3p.

    Returns (keep_embedding, keep_image) as float masks of shape [B]; both are dropped for u in [p, 2p).
    """
    u = torch.rand(batch_size, generator=generator, device=device)
    keep_embedding = u >= 2 * p
    keep_image = ~((u >= p) & (u < 3 * p))
    return keep_embedding.float(), keep_image.float()
