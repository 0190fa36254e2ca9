"""Cache the VAE posteriors and CLIP embeddings of every GenEx frame for train_world_explorer.py --latents_cache_dir.

    python -m genex.cache_latents --pretrained_model_name_or_path stabilityai/stable-video-diffusion-img2vid-xt-1-1 \
        --base_folder ./Genex-DB --width 1024 --height 576 --mixed_precision fp16

A rerun encodes only the folders whose frames, models or resolution changed (see genex/latent_cache.py).
"""

import argparse
import logging

import torch

from common.cli import SetupError, run_cli
from common.training import flush_denormals
from genex.latent_cache import build_latent_cache, default_cache_dir
from genex.models import load_encoders

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained_model_name_or_path", type=str, required=True, help="SVD pipeline folder or hub id (vae/, image_encoder/, feature_extractor/): the one training uses.")
    parser.add_argument("--variant", type=str, default=None, help='Weight files variant of the base model, e.g. "fp16"; the same as for training.')
    parser.add_argument("--base_folder", type=str, required=True, help="Folder holding (possibly nested) folders of frames, as prepare_dataset.py writes.")
    parser.add_argument("--cache_dir", type=str, default=None, help="Where the cache goes; default <base_folder>/.latent_cache (hidden, so the frame dataset ignores it).")
    parser.add_argument("--width", type=int, default=1024, help="Training width in pixels (the frames are resized to it, as in training).")
    parser.add_argument("--height", type=int, default=576, help="Training height in pixels.")
    parser.add_argument("--mixed_precision", type=str, default="no", choices=sorted(DTYPES), help="dtype of the encoders while caching; use training's --mixed_precision for the same numbers.")
    parser.add_argument("--chunk_size", type=int, default=8, help="Frames per VAE and image-encoder call.")
    args = parser.parse_args(argv)
    if args.width < 1 or args.height < 1 or args.chunk_size < 1:
        raise SetupError("--width, --height and --chunk_size must be at least 1")
    return args


def main(argv=None):
    flush_denormals()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    args = parse_args(argv)
    vae, image_encoder, feature_extractor = load_encoders(args.pretrained_model_name_or_path, args.variant)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cache_dir = args.cache_dir or default_cache_dir(args.base_folder)
    written, reused = build_latent_cache(args.base_folder, cache_dir, vae, image_encoder, feature_extractor,
                                         args.width, args.height, device, DTYPES[args.mixed_precision], args.chunk_size)
    print(f"{cache_dir}: {written} videos encoded, {reused} already cached")


if __name__ == "__main__":
    run_cli(main)
