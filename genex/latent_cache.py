"""Cached VAE posteriors and CLIP embeddings of GenEx frames, so a training step encodes only the first frame.

SVD's VAE encodes every frame on its own, so a frame's posterior N(mean, std^2) can be computed once and
a training step draws z0 = (mean + std * eps) * scaling_factor from it: the distribution of
`vae.encode(frames).latent_dist.sample() * scaling_factor`, with the same eps for the same generator.
The conditioning frame is still encoded every step, because its noise augmentation is drawn per step.

Per frame folder, one safetensors file `<cache_dir>/<folder relative to base_folder>/latents.safetensors`:
"latent_mean", "latent_std" (fp16, [N,4,h,w], unscaled) and "clip_embedding" (fp32, [N,D]) for all N
frames, with metadata: the fingerprint of the models and resolution, and each frame file's size and mtime.
An entry is valid only while all of these match.

    python -m genex.cache_latents --pretrained_model_name_or_path ... --base_folder ./Genex-DB --width 1024 --height 576
"""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from tqdm.auto import tqdm

from common.files import write_atomic
from common.pixels import to_model_range
from genex.conditioning import clip_image_embedding, frame_latent_statistics, sample_latents
from genex.data import FrameFolderDataset, find_frame_folders, load_frame

logger = logging.getLogger(__name__)

CACHE_FILE_NAME = "latents.safetensors"
# Hidden, so find_frame_folders (and so the frame dataset) never takes the cache for a video.
DEFAULT_CACHE_FOLDER = ".latent_cache"


def default_cache_dir(base_folder) -> Path:
    return Path(base_folder) / DEFAULT_CACHE_FOLDER


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameter and buffer names, dtypes, shapes and bytes (device independent)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_fingerprint(vae, image_encoder, feature_extractor, width: int, height: int) -> str:
    """What a cache entry depends on besides its frames: VAE, image encoder, CLIP normalisation, resolution.

    Take it from the models as loaded, before they are cast to a mixed-precision dtype.
    """
    vae_config = {key: value for key, value in vae.config.items() if not key.startswith("_")}
    vae_part = hashlib.sha256((json.dumps(vae_config, sort_keys=True, default=str) + weights_digest(vae)).encode()).hexdigest()
    normalisation = json.dumps([list(feature_extractor.image_mean), list(feature_extractor.image_std)])
    clip_part = hashlib.sha256((normalisation + weights_digest(image_encoder)).encode()).hexdigest()
    return f"vae {vae_part[:16]}, image encoder {clip_part[:16]}, {width}x{height}"


def frame_stamps(frames: list[Path]) -> list[list]:
    """[name, size, mtime_ns] of each frame file: a changed, added or removed frame changes the list."""
    stamps = []
    for path in frames:
        stat = path.stat()
        stamps.append([path.name, stat.st_size, stat.st_mtime_ns])
    return stamps


def cache_entry_path(cache_dir, base_folder, folder) -> Path:
    return Path(cache_dir) / Path(folder).relative_to(base_folder) / CACHE_FILE_NAME


def cache_entry_problem(path: Path, stamps: list[list], fingerprint=None):
    """Why the entry at `path` cannot serve these frames (and this fingerprint when given), or None when it can."""
    if not path.is_file():
        return "has no entry"
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            keys = set(handle.keys())
    except (OSError, SafetensorError) as error:
        return f"entry {path} is unreadable ({error})"
    if not {"latent_mean", "latent_std", "clip_embedding"} <= keys or "frames" not in metadata:
        return f"entry {path} is not a latent cache file"
    if fingerprint is not None and metadata.get("fingerprint") != fingerprint:
        return f"was built for {metadata.get('fingerprint')}, this run needs {fingerprint}"
    if json.loads(metadata["frames"]) != stamps:
        return "is stale: the frames changed since it was built"
    return None


@torch.no_grad()
def encode_folder(frames, vae, image_encoder, feature_extractor, width, height, device, dtype, chunk_size) -> dict:
    """Posterior mean and std (fp16) and CLIP embedding (fp32) of every frame, `chunk_size` frames at a time."""
    means, stds, embeddings = [], [], []
    for start in range(0, len(frames), chunk_size):
        clip = np.stack([load_frame(path, width, height) for path in frames[start : start + chunk_size]])
        pixels = to_model_range(torch.from_numpy(clip).permute(0, 3, 1, 2).to(device), dtype)
        mean, std = frame_latent_statistics(vae, pixels, chunk_size)
        means.append(mean.half().cpu())
        stds.append(std.half().cpu())
        embeddings.append(clip_image_embedding(image_encoder, feature_extractor, pixels)[:, 0].float().cpu())
    return {"latent_mean": torch.cat(means), "latent_std": torch.cat(stds), "clip_embedding": torch.cat(embeddings)}


def build_latent_cache(base_folder, cache_dir, vae, image_encoder, feature_extractor, width: int, height: int,
                       device, dtype=torch.float32, chunk_size: int = 8) -> tuple[int, int]:
    """Write a cache entry for every frame folder under `base_folder` that has no valid one; returns (written, reused).

    `vae` and `image_encoder` are taken as loaded (the fingerprint is computed first), then moved to `device` in `dtype`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    folders = find_frame_folders(base_folder)
    if not folders:
        raise ValueError(f"{base_folder}: no folder of frame images found under it")
    fingerprint = cache_fingerprint(vae, image_encoder, feature_extractor, width, height)
    for module in (vae, image_encoder):
        module.requires_grad_(False).to(device)
        if module.dtype != dtype:
            module.to(dtype=dtype)
    written = reused = 0
    for folder, frames in tqdm(folders.items(), desc="caching latents", unit="video"):
        path = cache_entry_path(cache_dir, base_folder, folder)
        stamps = frame_stamps(frames)
        if cache_entry_problem(path, stamps, fingerprint) is None:
            reused += 1
            continue
        tensors = encode_folder(frames, vae, image_encoder, feature_extractor, width, height, device, dtype, chunk_size)
        metadata = {"fingerprint": fingerprint, "frames": json.dumps(stamps), "width": str(width), "height": str(height)}
        # Written beside the final name and renamed: an interrupted run never leaves a half entry.
        write_atomic(path, save(tensors, metadata=metadata))
        written += 1
    logger.info("latent cache %s: %d entries written, %d reused (%s)", cache_dir, written, reused, fingerprint)
    return written, reused


class LatentCacheDataset(FrameFolderDataset):
    """FrameFolderDataset's videos and windows, with cached posteriors in place of the frames.

    Items: "latent_mean", "latent_std" [F,4,h,w] fp16 (unscaled), "clip_embedding" [D] of the window's first
    frame, "first_frame" uint8 [3,H,W] and, with `with_pixels` (for SCL), "pixel_values" uint8 [F,3,H,W].
    Without `with_pixels` only the first frame's image file is read. Every entry is checked when the dataset
    is built; with `fingerprint`, also that it was built by the same models at the same resolution.
    """

    def __init__(self, base_folder, cache_dir, num_frames: int, width: int, height: int, seed: int = 0,
                 with_pixels: bool = False, fingerprint=None):
        super().__init__(base_folder, num_frames, width, height, seed)
        self.cache_dir, self.with_pixels = Path(cache_dir), with_pixels
        self.entries = []
        for folder, frames in self.videos:
            path = cache_entry_path(self.cache_dir, self.base_folder, folder)
            problem = cache_entry_problem(path, frame_stamps(frames), fingerprint)
            if problem is not None:
                raise ValueError(
                    f"{folder}: the latent cache in {self.cache_dir} {problem}; rerun python -m genex.cache_latents "
                    f"--base_folder {self.base_folder} --cache_dir {self.cache_dir} --width {width} --height {height} "
                    "with this run's --pretrained_model_name_or_path"
                )
            self.entries.append(path)

    def read_clip(self, index: int) -> dict:
        """Item `index` from the cache (FrameFolderDataset.__getitem__ skips it like a clip when its first frame is unreadable)."""
        folder, frames = self.videos[index]
        start = self.window_start(index)
        window = slice(start, start + self.num_frames)
        with safe_open(str(self.entries[index]), framework="pt") as handle:
            item = {
                "latent_mean": handle.get_slice("latent_mean")[window],
                "latent_std": handle.get_slice("latent_std")[window],
                "clip_embedding": handle.get_slice("clip_embedding")[start : start + 1][0],
                "folder": str(folder),
            }
        if self.with_pixels:
            item["pixel_values"] = super().read_clip(index)["pixel_values"]
            item["first_frame"] = item["pixel_values"][0]
        else:
            item["first_frame"] = torch.from_numpy(load_frame(frames[start], self.width, self.height)).permute(2, 0, 1)
        return item
