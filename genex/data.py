"""Training clips for GenEx-Explorer: contiguous windows of frames from folders of frame images.

Every folder that directly holds frame images, at any depth under `base_folder`
(e.g. `<base>/realistic/video_00001/frame_0001.jpg` from prepare_dataset.py), is one video.
Hidden folders are skipped: prepare_dataset.py writes unfinished videos into `.video_XXXXX.partial`.
"""

import io
import logging
import os
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from common.images import to_rgb

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def natural_key(name: str) -> list:
    """Sort key that orders numbers by value: frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def find_frame_folders(base_folder) -> dict[Path, list[Path]]:
    """Folders directly holding frame images -> their images in frame order; folders in natural order."""
    folders = {}
    for dirpath, dirnames, filenames in os.walk(base_folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        frames = [name for name in filenames if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")]
        if frames:
            folders[Path(dirpath)] = [Path(dirpath) / name for name in sorted(frames, key=natural_key)]
    return dict(sorted(folders.items(), key=lambda item: natural_key(item[0].relative_to(base_folder).as_posix())))


def decode_frame(path: Path) -> np.ndarray:
    """One frame as RGB uint8 [H, W, 3] at the file's own size."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            # 8-bit RGB or grey JPEGs (what prepare_dataset.py writes): OpenCV decodes straight into an array,
            # twice as fast as Pillow's decode and copy, with the same pixels. Other modes need to_rgb.
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
                if array is not None:
                    return array
            return np.asarray(to_rgb(image))
    except (OSError, ValueError) as error:
        raise OSError(f"{path}: cannot read image ({error})") from None


def load_frame(path: Path, width: int, height: int) -> np.ndarray:
    """One frame as RGB uint8 [height, width, 3]; resized (bicubic) only when its size differs."""
    frame = decode_frame(path)
    if frame.shape[:2] != (height, width):
        frame = np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))
    return frame


def frame_number(path: Path):
    """The frame's number: the last run of digits in its file name (frame_0012.jpg -> 12), None without one."""
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else None


def window_starts(frames: list[Path], num_frames: int) -> list[int]:
    """Starts of every window of `num_frames` consecutively numbered frames (all starts when frames carry no numbers)."""
    numbers = [frame_number(path) for path in frames]
    if None in numbers:
        return list(range(len(frames) - num_frames + 1))
    # run_start[i]: index where the run of consecutive numbers holding frame i begins.
    run_start = [0] * len(frames)
    for i in range(1, len(frames)):
        run_start[i] = run_start[i - 1] if numbers[i] == numbers[i - 1] + 1 else i
    return [end - num_frames + 1 for end in range(num_frames - 1, len(frames)) if run_start[end] <= end - num_frames + 1]


def first_gap(frames: list[Path]):
    """(frame number before the gap, frame number after it) of the first gap in the numbering, None without one."""
    numbers = [frame_number(path) for path in frames]
    if None in numbers:
        return None
    return next(((a, b) for a, b in zip(numbers, numbers[1:]) if b != a + 1), None)


class FrameFolderDataset(Dataset):
    """Random contiguous windows of `num_frames` frames, one folder per item, as uint8 [F,3,H,W] tensors.

    Scaling to [-1, 1] is left to the training loop (`to_model_range` on the device): a quarter of the
    bytes cross to the accelerator, and no float work is done in the DataLoader workers.

    The window start of item `index` in epoch `epoch` is drawn from default_rng((seed, epoch, index)):
    the same on every run, in every DataLoader worker, and after resuming. Call `set_epoch` before
    iterating an epoch (with persistent_workers, workers keep the epoch they started with).
    """

    def __init__(self, base_folder, num_frames: int, width: int, height: int, seed: int = 0):
        if num_frames < 1 or width < 1 or height < 1:
            raise ValueError(f"need num_frames, width and height >= 1; got {num_frames}, {width}, {height}")
        self.base_folder = Path(base_folder)
        if not self.base_folder.is_dir():
            raise ValueError(f"{self.base_folder}: base folder does not exist")
        self.num_frames, self.width, self.height, self.seed = num_frames, width, height, seed
        self.epoch = 0
        self.unreadable_clips = 0
        folders = find_frame_folders(self.base_folder)
        if not folders:
            raise ValueError(f"{self.base_folder}: no folder of frame images ({', '.join(IMAGE_EXTENSIONS)}) found under it")
        # A window never joins frames across a gap in the numbering (a frame missing from the folder).
        starts = {folder: window_starts(frames, num_frames) for folder, frames in folders.items()}
        gapped = {folder: gap for folder, frames in folders.items() if (gap := first_gap(frames))}
        self.videos = [(folder, frames) for folder, frames in folders.items() if starts[folder]]
        self.starts = [starts[folder] for folder, _ in self.videos]
        skipped = len(folders) - len(self.videos)
        if not self.videos:
            longest, frames = max(folders.items(), key=lambda item: len(item[1]))
            raise ValueError(f"{self.base_folder}: no frame folder has num_frames={num_frames} frames; the longest, {longest}, has {len(frames)}")
        if skipped:
            warnings.warn(f"{self.base_folder}: skipped {skipped} of {len(folders)} frame folders with fewer than num_frames={num_frames} consecutive frames", stacklevel=2)
        if gapped:
            folder, (before, after) = next(iter(gapped.items()))
            warnings.warn(f"{self.base_folder}: {len(gapped)} frame folders have a gap in their frame numbering (e.g. {folder}: frame {before} "
                          f"is followed by frame {after}); windows stay inside runs of consecutive frames", stacklevel=2)
        logger.info("%s: %d videos of at least %d frames", self.base_folder, len(self.videos), num_frames)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def window_start(self, index: int) -> int:
        """First frame of item `index`'s window in the current epoch."""
        starts = self.starts[index]
        return starts[int(np.random.default_rng((self.seed, self.epoch, index)).integers(0, len(starts)))]

    def read_clip(self, index: int) -> dict:
        folder, frames = self.videos[index]
        start = self.window_start(index)
        clip = np.empty((self.num_frames, self.height, self.width, 3), np.uint8)
        for i, path in enumerate(frames[start : start + self.num_frames]):
            clip[i] = load_frame(path, self.width, self.height)
        # A channels-last view: the DataLoader's collate stacks it into a contiguous [B,F,3,H,W] batch.
        return {"pixel_values": torch.from_numpy(clip).permute(0, 3, 1, 2), "folder": str(folder)}

    def __getitem__(self, index: int) -> dict:
        """Item `index`; a clip with an unreadable frame is skipped (logged, counted) for the next readable one.

        The substitute is a function of the index alone, so a run and its resumption read the same clips.
        """
        index = range(len(self))[index]
        first_error = None
        for offset in range(len(self)):
            try:
                return self.read_clip((index + offset) % len(self))
            except OSError as error:
                first_error = first_error or error
                self.unreadable_clips += 1
                logger.warning("%s; that clip is skipped for the next one (%d unreadable clips so far in this process)", error, self.unreadable_clips)
        raise ValueError(f"{first_error}; no clip under {self.base_folder} could be read")


def first_clips(dataset: Dataset, count: int) -> list[dict]:
    """The first `count` items of `dataset` (all of them if it has fewer), each a batch of one, on the CPU."""
    return [default_collate([dataset[index]]) for index in range(min(count, len(dataset)))]
