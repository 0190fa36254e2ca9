"""Logging validation media to TensorBoard and Weights & Biases, whichever are active; whether wandb can log at all."""

import netrc
import os
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import numpy as np

from common.video import evenly_spaced_indices


WANDB_LOCAL_MODES = ("offline", "disabled", "dryrun")


def netrc_file() -> Optional[Path]:
    """The .netrc that `wandb login` writes its key into (as wandb looks for it: $NETRC, ~/.netrc, ~/_netrc)."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    for name in ("~/.netrc", "~/_netrc"):
        if Path(name).expanduser().is_file():
            return Path(name).expanduser()
    return None


def wandb_login_problem() -> Optional[str]:
    """Why wandb.init would fail before the first step (no API key and not offline), as the line a user acts on; None if it can log.

    Looks where wandb looks, without a network call: WANDB_MODE, WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, the .netrc entry
    of WANDB_BASE_URL's host.
    """
    if os.environ.get("WANDB_MODE", "").lower() in WANDB_LOCAL_MODES or os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return None
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    path = netrc_file()
    try:
        if path is not None and host and (entry := netrc.netrc(path).authenticators(host)) and entry[2]:
            return None
    except (netrc.NetrcParseError, OSError):
        pass
    return (f"not logged in to Weights & Biases (no WANDB_API_KEY, no {host} entry in {path or '~/.netrc'}): run `wandb login` once, "
            "or set WANDB_MODE=offline to log locally (upload later with `wandb sync`), or use --report_to tensorboard")


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
