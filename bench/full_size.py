"""The full-size architectures of DESIGN.md with random weights: speed and memory without a download.

Each builder constructs its modules directly on `device` in `dtype` (the default dtype and device
are switched for the construction), so a 1.5 B-parameter UNet never exists in float32 on the host.
"""

import contextlib
import tempfile

import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder, DDPMScheduler, UNet2DConditionModel, UNetSpatioTemporalConditionModel
from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from genex.tiny import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD
from pecn.tiny import INSTRUCT_PIX2PIX_SCHEDULER_CONFIG, write_tiny_clip_tokenizer

# Published parameter counts (DESIGN.md, "Full-size configurations"), in millions.
SVD_UNET_PARAMS_M = 1524.6
SVD_TEMPORAL_PARAMS_M = 397.6

SVD_VAE_CONFIG = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=2,
                      latent_channels=4, scaling_factor=0.18215)
OPENCLIP_VIT_H_CONFIG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                             patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu")
SD_VAE_CONFIG = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)
CLIP_VIT_L_TEXT_CONFIG = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              max_position_embeddings=77, vocab_size=49408)


@contextlib.contextmanager
def constructed_in(dtype: torch.dtype, device):
    """New parameters are created on `device` in `dtype` inside; the defaults are restored after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def count_params_m(module, marker: str = "") -> float:
    """Parameters of `module` (only those whose name contains `marker`), in millions."""
    return sum(p.numel() for name, p in module.named_parameters() if marker in name) / 1e6


def build_svd_full(dtype: torch.dtype, device, seed: int = 0) -> dict:
    """SVD-xt: UNet (the diffusers defaults), temporal-decoder VAE, OpenCLIP ViT-H/14 image encoder, CLIP processor."""
    with torch.random.fork_rng(devices=[]), constructed_in(dtype, device):
        torch.manual_seed(seed)
        unet = UNetSpatioTemporalConditionModel()
        vae = AutoencoderKLTemporalDecoder(**SVD_VAE_CONFIG)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**OPENCLIP_VIT_H_CONFIG))
    feature_extractor = CLIPImageProcessor(image_mean=CLIP_IMAGE_MEAN, image_std=CLIP_IMAGE_STD,
                                           size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return dict(unet=unet, vae=vae, image_encoder=image_encoder, feature_extractor=feature_extractor)


def build_instruct_pix2pix_full(dtype: torch.dtype, device, seed: int = 0) -> dict:
    """InstructPix2Pix / SD 1.5: 8-channel UNet, SD VAE, CLIP ViT-L/14 text encoder, DDPM scheduler, a local tokenizer.

    The tokenizer is the project's whole-word CLIP BPE (pecn.tiny): token ids fit the 49,408-word embedding.
    """
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = write_tiny_clip_tokenizer(folder)
    with torch.random.fork_rng(devices=[]), constructed_in(dtype, device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(in_channels=8, cross_attention_dim=768)
        vae = AutoencoderKL(**SD_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_VIT_L_TEXT_CONFIG, bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                noise_scheduler=DDPMScheduler(**INSTRUCT_PIX2PIX_SCHEDULER_CONFIG))
