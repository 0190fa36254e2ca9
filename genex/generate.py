"""Generating exploration videos from one panorama, for validation, the sampler and the evaluation."""

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.images import to_rgb
from genex.spherical import rotate_yaw

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def list_images(folder, limit=None) -> list[Path]:
    """Image files of a folder, sorted by name, at most `limit`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: validation images folder does not exist")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the validation images folder")
    return images[:limit]


def load_rgb(path) -> Image.Image:
    """An image as 8-bit RGB, converted as training frames are (16-bit scaled, alpha over white)."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except OSError as error:
        raise ValueError(f"{path}: cannot read image ({error})") from None


@torch.no_grad()
def generate_video(pipeline, image: Image.Image, width: int, height: int, num_frames: int, fps: int,
                   motion_bucket_id: int, num_inference_steps: int, decode_chunk_size: int, generator=None) -> np.ndarray:
    """Run the SVD pipeline on `image` resized to width x height; returns uint8 frames [T,H,W,3].

    The pipeline feeds `fps - 1` to the UNet, as training does for the same --fps.
    """
    frames = pipeline(
        image.resize((width, height), Image.Resampling.LANCZOS),
        height=height,
        width=width,
        num_frames=num_frames,
        fps=fps,
        motion_bucket_id=motion_bucket_id,
        num_inference_steps=num_inference_steps,
        decode_chunk_size=decode_chunk_size,
        generator=generator,
        output_type="np",
    ).frames[0]
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def resize_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize every frame of a [T,H,W,3] uint8 video."""
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.LANCZOS)) for f in frames])


def parse_trajectory(text: str) -> list[tuple[float, int]]:
    """Segments [(yaw degrees, frames), ...] of a path written "yaw:frames,yaw:frames", e.g. "0:25,180:25"."""
    segments = []
    for part in text.split(","):
        yaw, sep, frames = part.strip().partition(":")
        try:
            segment = (float(yaw), int(frames))
        except ValueError:
            segment = None
        if not sep or segment is None or not math.isfinite(segment[0]) or segment[1] < 1:
            raise ValueError(f"{part.strip()!r} is not yaw:frames (degrees, then a frame count >= 1), in {text!r}")
        segments.append(segment)
    return segments


def explore_path(pipeline, panorama: Image.Image, segments, width: int, height: int, fps: int, motion_bucket_id: int,
                 num_inference_steps: int, decode_chunk_size: int, generator=None) -> np.ndarray:
    """Frames uint8 [sum of the segments' frames, height, width, 3] of a path of segments (yaw degrees, frames).

    Each segment turns the current view by its yaw (rotate_yaw: the rotation of SCL and --yaw) and
    walks forward from it; the current view is the panorama for the first segment and the last frame of
    the segment before for the others. A segment keeps all its frames, its first one too (the turned
    view as the model renders it), so the path is exactly as long as its segments' frames add up to.
    """
    if not segments:
        raise ValueError("a path needs at least one segment")
    view, videos = np.asarray(panorama), []
    for yaw, num_frames in segments:
        view = rotate_yaw(view, yaw, width_axis=1)
        videos.append(generate_video(pipeline, Image.fromarray(view), width, height, num_frames, fps, motion_bucket_id,
                                     num_inference_steps, decode_chunk_size, generator))
        view = videos[-1][-1]
    return np.concatenate(videos)
