"""Logging validation media to TensorBoard and Weights & Biases, whichever are active."""

from pathlib import Path

import numpy as np

from common.video import evenly_spaced_indices


def video_strip(frames: np.ndarray, max_frames: int = 8) -> np.ndarray:
    """Evenly chosen frames of a [T,H,W,3] uint8 video side by side, for TensorBoard's image tab."""
    indices = evenly_spaced_indices(len(frames), max_frames)
    return np.concatenate([frames[i] for i in indices], axis=1)


def log_validation_videos(accelerator, videos: dict[str, Path], frames: dict[str, np.ndarray], step: int) -> None:
    """Log mp4 files (wandb plays them) and their frame strips (TensorBoard shows them)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for name, video in frames.items():
                tracker.writer.add_image(f"validation/{name}", video_strip(video), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Video(str(path), caption=name, format="mp4") for name, path in videos.items()]}, step=step)


def log_validation_images(accelerator, images: dict[str, np.ndarray], step: int) -> None:
    """Log [H,W,3] uint8 images to every active tracker."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for name, image in images.items():
                tracker.writer.add_image(f"validation/{name}", image, step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(image, caption=name) for name, image in images.items()]}, step=step)
