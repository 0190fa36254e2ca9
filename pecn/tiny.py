"""Tiny, randomly initialised InstructPix2Pix and text-to-image pipelines with the real architecture classes.

The hub is out of reach on development and CI machines, so tests and smoke runs load these
folders with the same `from_pretrained` code that loads `timbrooks/instruct-pix2pix`.
The VAE has two blocks by default, so it downsamples by 2 (not 8): a 32-128 px image gives 16-64 px
latents; `--vae_block_out_channels 16 32 64` gives three blocks, 4x downsampling. With
`--fit_vae_frames`, the VAE is first fitted to those frames (common/vae_fitting.py), so that what is
decoded through it looks like them: the demo's base model.

    python -m pecn.tiny --output_dir /tmp/tiny-ip2p --kind instruct_pix2pix [--seed 0] \
        [--fit_vae_frames data/sthv2/frames_64x64 --fit_vae_annotations data/sthv2/annotations/train_filtered.json]
"""

import argparse
import json
import math
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from common.cli import run_cli
from common.output_dir import share_saved_pipeline
from common.vae_fitting import FitSettings, add_vae_fitting_args, fit_settings, fit_vae_to_videos
from pecn.dataset import load_annotations
from pecn.prompts import build_prompt
from pecn.step import PREDICTION_TYPES
from pecn.tasks import TASK_TEMPLATES

# The VAE of the tests' tiny pipelines: two blocks, 2x downsampling.
VAE_BLOCK_OUT_CHANNELS = (32, 64)
# Many small steps fit faster than a few large ones: two images per step; on the demo's 64x64 frames
# (2 CPU cores) about a minute.
VAE_FIT_DEFAULTS = FitSettings(steps=480, batch_size=2)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# Objects and attributes that fill SSv2 placeholders most often in the three tasks' annotations.
PLACEHOLDER_WORDS = """
a an the another some of my two small big red white black green blue yellow pink purple orange
box bottle pen cup paper book phone toy remote glass ball towel bowl spoon pencil candle mug mouse
coin wallet container case car pillow cloth shoe matchbox comb water can marker lighter blanket
plastic jar scissors tape stapler plate clip floor hair watch bag usb mobile cable cube key charger
battery keys card fork lid brush notebook knife peg table nail control glasses chair eraser controller
tissue calculator toothbrush power bed bank hand cap coaster cell apple napkin tube piece flower stick
purse holder toothpaste board coffee cover magnet pouch handkerchief envelope hat ruler bucket
smartphone cellphone banana basket tablet shirt doll lipstick keyboard ring soap block rock roll
camera bracelet headphones cat sock spray perfume lotion cream pack packet sheet tin cardboard
""".split()

# CLIP's pre-tokenizer: each digit is its own word, runs of punctuation are one word.
CLIP_WORD_PATTERN = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")

# The scheduler of timbrooks/instruct-pix2pix.
INSTRUCT_PIX2PIX_SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    steps_offset=1,
)

# The scheduler of Stable Diffusion 1.5.
TEXT_TO_IMAGE_SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)


def prompt_words() -> list[str]:
    """Every word of every task template, its prompt with progress, and the common placeholder nouns."""
    texts = [build_prompt(template, add_progress=True, input_frame_idx=0, num_frames=1)
             for templates in TASK_TEMPLATES.values() for template in templates]
    words = CLIP_WORD_PATTERN.findall(" ".join(texts + PLACEHOLDER_WORDS).lower())
    return sorted({word for word in words if word.isalpha()})


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable character map (printable ASCII maps to itself)."""
    byte_values = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    char_codes = byte_values[:]
    unprintable = [byte for byte in range(256) if byte not in byte_values]
    byte_values += unprintable
    char_codes += [256 + offset for offset in range(len(unprintable))]
    return dict(zip(byte_values, map(chr, char_codes)))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE training until every word is one symbol, so that replaying the merges rebuilds each word whole."""
    # Merging left to right per word would collide across words (a later word's pair can outrank an
    # earlier word's prefix); merges learned jointly are exactly what BPE encoding replays.
    segmentations = [list(word[:-1]) + [word[-1] + "</w>"] for word in words]
    merges = []
    while True:
        pairs = Counter(pair for symbols in segmentations for pair in zip(symbols, symbols[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        segmentations = [merge_pair(symbols, best) for symbols in segmentations]


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace each occurrence of `pair`, left to right, by its concatenation."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def write_tiny_clip_tokenizer(folder) -> CLIPTokenizer:
    """Write a CLIP BPE vocab.json and merges.txt with whole-word tokens for the prompt words; returns it loaded."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(prompt_words())
    # As in CLIP: every byte alone and at a word end, then the merged tokens, then the special tokens.
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += [left + right for left, right in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def build_tiny_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """Two-layer CLIP text encoder (width 32) over the tiny tokenizer's vocabulary."""
    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_tiny_unet(in_channels: int) -> UNet2DConditionModel:
    """SD-style UNet, two resolutions; 8 input channels for InstructPix2Pix (noisy latent + image latent)."""
    return UNet2DConditionModel(
        in_channels=in_channels,
        out_channels=4,
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
    )


def build_tiny_vae(block_out_channels: Sequence[int] = VAE_BLOCK_OUT_CHANNELS) -> AutoencoderKL:
    """SD-style VAE, one block per entry of `block_out_channels` (each after the first halves the size), 4 latent channels."""
    return AutoencoderKL(
        block_out_channels=tuple(block_out_channels),
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        latent_channels=4,
        # SD's 32 groups where the widths allow it, fewer for narrower blocks (every width must divide into the groups).
        norm_num_groups=math.gcd(32, *block_out_channels),
        sample_size=32,
    )


def build_tiny_components(unet_in_channels: int, seed: int, tokenizer_folder, vae_block_out_channels: Sequence[int] = VAE_BLOCK_OUT_CHANNELS) -> dict:
    """UNet, VAE, text encoder and tokenizer; the same seed gives identical weights."""
    tokenizer = write_tiny_clip_tokenizer(tokenizer_folder)
    # A private RNG stream keeps the weights independent of, and harmless to, the caller's RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_tiny_unet(unet_in_channels)
        vae = build_tiny_vae(vae_block_out_channels)
        text_encoder = build_tiny_text_encoder(tokenizer)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)


def build_tiny_instruct_pix2pix_pipeline(seed: int = 0, vae_block_out_channels: Sequence[int] = VAE_BLOCK_OUT_CHANNELS,
                                         prediction_type: str = "epsilon") -> StableDiffusionInstructPix2PixPipeline:
    """InstructPix2Pix pipeline (8-channel UNet, Euler ancestral) with tiny random weights; its UNet is to predict `prediction_type`."""
    with tempfile.TemporaryDirectory() as tokenizer_folder:
        components = build_tiny_components(8, seed, tokenizer_folder, vae_block_out_channels)
    return StableDiffusionInstructPix2PixPipeline(
        **components,
        scheduler=EulerAncestralDiscreteScheduler(**{**INSTRUCT_PIX2PIX_SCHEDULER_CONFIG, "prediction_type": prediction_type}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_text_to_image_pipeline(seed: int = 0, vae_block_out_channels: Sequence[int] = VAE_BLOCK_OUT_CHANNELS,
                                      prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    """Stable Diffusion 1.5-style text-to-image pipeline (4-channel UNet, PNDM) with tiny random weights; its UNet is to predict `prediction_type`."""
    with tempfile.TemporaryDirectory() as tokenizer_folder:
        components = build_tiny_components(4, seed, tokenizer_folder, vae_block_out_channels)
    return StableDiffusionPipeline(
        **components,
        scheduler=PNDMScheduler(**TEXT_TO_IMAGE_SCHEDULER_CONFIG, prediction_type=prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


PIPELINE_BUILDERS = {
    "instruct_pix2pix": build_tiny_instruct_pix2pix_pipeline,
    "text_to_image": build_tiny_text_to_image_pipeline,
}


def video_frame_folders(frames_dir, annotations_file=None) -> list[list[Path]]:
    """The PNG frames, in order, of every video folder in `frames_dir` (pecn.video_loader's layout), or of the videos `annotations_file` lists."""
    frames_dir = Path(frames_dir)
    if not frames_dir.is_dir():
        raise ValueError(f"{frames_dir}: frames folder does not exist; run `python -m pecn.video_loader` first")
    if annotations_file is None:
        folders = sorted(path for path in frames_dir.iterdir() if path.is_dir() and not path.name.startswith("."))
    else:
        folders = [frames_dir / str(entry["id"]) for entry in load_annotations(annotations_file)]
    # Videos whose extraction failed have no folder: nothing of them to fit to.
    return [frames for folder in folders if (frames := sorted(folder.glob("*.png")))]


def save_tiny_pipeline(kind: str, output_dir, seed: int = 0, vae_block_out_channels: Sequence[int] = VAE_BLOCK_OUT_CHANNELS,
                       vae_videos: Optional[list[list[Path]]] = None, fitting: FitSettings = VAE_FIT_DEFAULTS,
                       prediction_type: str = "epsilon") -> Path:
    """Build the tiny pipeline of `kind`, fit its VAE to `vae_videos` (lists of frame files) if given, and save it (safetensors)."""
    if kind not in PIPELINE_BUILDERS:
        raise ValueError(f"unknown tiny pipeline kind {kind!r}; expected one of {sorted(PIPELINE_BUILDERS)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {list(PREDICTION_TYPES)}")
    output_dir = Path(output_dir)
    pipeline = PIPELINE_BUILDERS[kind](seed, vae_block_out_channels, prediction_type)
    if vae_videos is not None:
        # Images, not clips: this VAE decodes every frame on its own.
        print(fit_vae_to_videos(pipeline.vae, vae_videos, 1, fitting, source="--fit_vae_frames").summary())
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    # Keep CLIP's own vocabulary files beside tokenizer.json, as the hub's Stable Diffusion folders do.
    write_tiny_clip_tokenizer(output_dir / "tokenizer")
    share_saved_pipeline(output_dir)
    return output_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description="Save a tiny random InstructPix2Pix or text-to-image pipeline, its VAE optionally fitted to frames.")
    parser.add_argument("--output_dir", required=True, help="Folder to save the pipeline to.")
    parser.add_argument("--kind", choices=sorted(PIPELINE_BUILDERS), default="instruct_pix2pix",
                        help="instruct_pix2pix: 8-channel UNet; text_to_image: 4-channel UNet (conv_in is expanded when training).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights (and of the VAE fit).")
    parser.add_argument("--prediction_type", choices=PREDICTION_TYPES, default="epsilon",
                        help="What the UNet is trained to predict (the scheduler's prediction_type): epsilon, as timbrooks/instruct-pix2pix and SD 1.5; "
                             "v_prediction, as SD 2.x, suits a UNet trained from scratch: at t=999 an epsilon error reaches the estimated target 15 times larger.")
    parser.add_argument("--vae_block_out_channels", type=int, nargs="+", default=list(VAE_BLOCK_OUT_CHANNELS),
                        help="Widths of the VAE's blocks; each block after the first halves the size (16 32 64: 4x downsampling).")
    fitting = add_vae_fitting_args(parser, "Fit the VAE to the frames in this folder first (a frames_<W>x<H> folder of pecn.video_loader).", VAE_FIT_DEFAULTS)
    fitting.add_argument("--fit_vae_annotations", type=str, default=None,
                        help="Fit only to the videos this annotation file lists (e.g. train_filtered.json, so validation frames stay unseen); default every video in --fit_vae_frames.")
    args = parser.parse_args(argv)
    if args.fit_vae_annotations and not args.fit_vae_frames:
        raise ValueError("--fit_vae_annotations: needs --fit_vae_frames")
    vae_videos = video_frame_folders(args.fit_vae_frames, args.fit_vae_annotations) if args.fit_vae_frames else None
    print(save_tiny_pipeline(args.kind, args.output_dir, args.seed, args.vae_block_out_channels, vae_videos, fit_settings(args), args.prediction_type))


if __name__ == "__main__":
    run_cli(main)
