"""Cache the VAE posteriors and CLIP embeddings of every GenEx frame for train_world_explorer.py --latents_cache_dir.

    python -m genex.cache_latents --pretrained_model_name_or_path stabilityai/stable-video-diffusion-img2vid-xt-1-1 \
        --base_folder ./Genex-DB --width 1024 --height 576 --mixed_precision fp16

A rerun encodes only the folders whose frames, models or resolution changed (see genex/latent_cache.py).
Under `accelerate launch` (any number of processes and machines) the folders are split between the
processes, each on its own device:

    accelerate launch --multi_gpu --num_processes 8 -m genex.cache_latents --pretrained_model_name_or_path ... --base_folder ./Genex-DB
"""

import argparse
import datetime
import logging

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from common.cli import SetupError, run_cli
from common.training import flush_denormals
from genex.latent_cache import build_latent_cache, default_cache_dir
from genex.models import load_encoders

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FINISH_WAIT = datetime.timedelta(hours=24)


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


def encoding_device(processes) -> torch.device:
    """The process's device; on a CPU, one thread on "cpu", so that any number of processes writes the same cache bit for bit.

    CPU kernels round differently with other thread counts, and under a launch Accelerate names the device "cpu:0",
    for which some kernels (the image encoder's) take another path. Use more processes to use more cores.
    """
    if processes.device.type != "cpu":
        return processes.device
    torch.set_num_threads(1)
    return torch.device("cpu")


def main(argv=None):
    flush_denormals()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    args = parse_args(argv)
    # This process's place and device among those of an `accelerate launch` (without one: one process, on the GPU if
    # any). Accelerate's own state reads ACCELERATE_USE_CPU the same way, for CPU processes over gloo. A process that
    # finishes its share early waits for the others at the end, longer on a large dataset than the default half hour.
    processes = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=FINISH_WAIT)
    vae, image_encoder, feature_extractor = load_encoders(args.pretrained_model_name_or_path, args.variant)
    cache_dir = args.cache_dir or default_cache_dir(args.base_folder)
    written, reused = build_latent_cache(args.base_folder, cache_dir, vae, image_encoder, feature_extractor, args.width, args.height,
                                         encoding_device(processes), DTYPES[args.mixed_precision], args.chunk_size, processes)
    if processes.is_main_process:
        print(f"{cache_dir}: {written} videos encoded, {reused} already cached, by {processes.num_processes} process(es)")


if __name__ == "__main__":
    run_cli(main)
