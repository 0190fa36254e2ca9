"""Extract every frame of the filtered SSv2 videos as PNG, at each requested size.

    python -m pecn.video_loader --data_root data/sthv2

Each video is decoded once and written to <data_root>/frames_<W>x<H>/<id>/<frame>.png,
frame numbers 0-based and zero-padded (00020.png is frame 20; see `frame_path`). Frames are
resized straight to W x H with cv2.INTER_AREA, without cropping: SSv2's 427x240 (or similar)
frames are squeezed to the square training size, the same for input, target and prediction.
Afterwards "num_frames" is written into every entry of the annotation files; a video that
cannot be extracted keeps its entry, marked with "num_frames": 0 and "extract_error".
"""

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import cv2
import numpy as np
from tqdm.auto import tqdm

from common.files import DiskFullError, WorkerDied, WorkerPool, atomic_folder, remove_stale_temps, write_file
from common.video import VideoDecodeError, iter_video_frames
from pecn.dataset import AnnotationError, load_annotations, write_json_atomic

Size = tuple[int, int]  # (width, height)
DEFAULT_SIZES = ["96x96", "128x128"]
# zlib level 1: lossless like any level, and several times faster to write than Pillow's default 6.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]


@dataclass(frozen=True)
class ExtractResult:
    """Outcome for one video: status is "extracted", "skipped" (already done) or "failed"."""

    video_id: str
    status: str
    num_frames: int = 0
    error: str = ""


def frame_path(frames_dir: os.PathLike, video_id: str, frame_idx: int) -> Path:
    """Path of 0-based frame `frame_idx` of a video: <frames_dir>/<id>/00020.png."""
    return Path(frames_dir) / str(video_id) / f"{frame_idx:05d}.png"


def frames_dir_name(size: Size) -> str:
    """Folder name for one frame size, e.g. frames_128x128."""
    return f"frames_{size[0]}x{size[1]}"


def parse_size(text: str) -> Size:
    """"96x96" -> (96, 96), as (width, height)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 128x128 (WxH), got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return width, height


def count_frames(video_frames_dir: Path) -> int:
    """Number of PNG frames in one video's finished folder (0 when the folder is absent)."""
    if not video_frames_dir.is_dir():
        return 0
    return sum(1 for entry in os.scandir(video_frames_dir) if entry.name.endswith(".png"))


def resize_frame(frame: np.ndarray, size: Size) -> np.ndarray:
    """Resize straight to (width, height); INTER_AREA averages pixels, so downscaling does not alias."""
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def write_png(path: Path, bgr: np.ndarray) -> None:
    """Lossless PNG of a BGR frame; a full disk raises DiskFullError naming the file."""
    ok, encoded = cv2.imencode(".png", bgr, PNG_PARAMS)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    write_file(path, encoded)


def write_frames(video_path: Path, temp_dirs: dict[Size, Path]) -> int:
    """Decode `video_path` once, write every frame at every size into `temp_dirs`; returns the frame count."""
    num_frames = 0
    for frame_idx, frame in enumerate(iter_video_frames(video_path)):
        # cv2 writes BGR; the decoder gives RGB.
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        for size, temp_dir in temp_dirs.items():
            write_png(temp_dir / f"{frame_idx:05d}.png", resize_frame(bgr, size))
        num_frames += 1
    return num_frames


def extract_video(video_path: os.PathLike, video_id: str, frames_dirs: dict[Size, Path]) -> ExtractResult:
    """Extract one video into each frames dir, skipping sizes already finished; raises only DiskFullError."""
    video_path = Path(video_path)
    finished = {size: count_frames(Path(root) / video_id) for size, root in frames_dirs.items()}
    todo = [size for size, count in finished.items() if count == 0]
    known_counts = {count for count in finished.values() if count > 0}
    if len(known_counts) > 1:
        return ExtractResult(video_id, "failed", error=f"frame folders of different sizes hold different frame counts {sorted(known_counts)}; delete them and rerun")
    if not todo:
        return ExtractResult(video_id, "skipped", known_counts.pop())
    if not video_path.is_file():
        return ExtractResult(video_id, "failed", error=f"{video_path}: video file not found")

    # Frames go to hidden folders renamed when complete, so an interrupted run leaves no half video.
    try:
        with contextlib.ExitStack() as stack:
            temp_dirs = {size: stack.enter_context(atomic_folder(Path(frames_dirs[size]) / video_id)) for size in todo}
            num_frames = write_frames(video_path, temp_dirs)
            if num_frames == 0:
                raise VideoDecodeError(f"{video_path}: no frames decoded")
            if known_counts and num_frames not in known_counts:
                raise VideoDecodeError(f"{video_path}: decoded {num_frames} frames but {known_counts.pop()} were extracted before")
    except DiskFullError:
        # Every later video would fail the same way: the run stops instead of marking them all bad.
        raise
    except (VideoDecodeError, OSError) as error:
        return ExtractResult(video_id, "failed", error=str(error))
    return ExtractResult(video_id, "extracted", num_frames)


def extract_all(video_ids: Iterable[str], videos_dir: os.PathLike, frames_dirs: dict[Size, Path], num_workers: int = 1) -> dict[str, ExtractResult]:
    """Extract <videos_dir>/<id>.webm for every id, in `num_workers` processes."""
    jobs = [(Path(videos_dir) / f"{video_id}.webm", video_id, frames_dirs) for video_id in dict.fromkeys(video_ids)]
    results = {}
    # A full disk or Ctrl-C stops the run now, not after every queued video has been tried.
    with tqdm(total=len(jobs), desc="extracting frames", unit="video") as progress, WorkerPool(num_workers) as workers:
        for (_, video_id, _), result in workers.run(extract_video, jobs):
            results[video_id] = ExtractResult(video_id, "failed", error=str(result)) if isinstance(result, WorkerDied) else result
            progress.update()
    return results


def mark_annotations(entries: list[dict], results: dict[str, ExtractResult]) -> list[dict]:
    """Copies of `entries` with "num_frames"; failed videos get 0 and their "extract_error"."""
    marked = []
    for entry in entries:
        entry = dict(entry)
        result = results[entry["id"]]
        entry["num_frames"] = result.num_frames
        if result.status == "failed":
            entry["extract_error"] = result.error
        else:
            entry.pop("extract_error", None)
        marked.append(entry)
    return marked


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Extract every frame of the filtered SSv2 videos as PNG and record num_frames.")
    parser.add_argument("--data_root", default="data/sthv2", help="SSv2 root; frames go to <data_root>/frames_<W>x<H>/<id>/.")
    parser.add_argument("--annotation_files", nargs="+", default=None, help="Filtered annotation files to extract and update (default: <data_root>/annotations/train_filtered.json and val_filtered.json).")
    parser.add_argument("--videos_dir", default=None, help="Folder of <id>.webm videos (default: <data_root>/videos).")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[parse_size(s) for s in DEFAULT_SIZES], help="Frame sizes WxH to write, each to its own frames_<W>x<H> folder.")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1, help="Processes decoding videos in parallel (1: decode in this process).")
    args = parser.parse_args(argv)
    if args.num_workers < 1:
        parser.error(f"--num_workers must be at least 1, got {args.num_workers}")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    data_root = Path(args.data_root)
    annotation_files = [Path(p) for p in args.annotation_files or [data_root / "annotations" / name for name in ("train_filtered.json", "val_filtered.json")]]
    videos_dir = Path(args.videos_dir or data_root / "videos")
    frames_dirs = {size: data_root / frames_dir_name(size) for size in dict.fromkeys(args.sizes)}

    try:
        annotations = {path: load_annotations(path) for path in annotation_files}
    except AnnotationError as error:
        sys.exit(f"error: {error}")
    if not videos_dir.is_dir():
        print(f"warning: {videos_dir} does not exist; every video will be reported missing", file=sys.stderr)

    video_ids = [entry["id"] for entries in annotations.values() for entry in entries]
    try:
        results = extract_all(video_ids, videos_dir, frames_dirs, args.num_workers)
    except DiskFullError as error:
        # The annotation files are left as they were: no video is marked bad for a disk that was full.
        sys.exit(f"error: {error}")

    statuses = [result.status for result in results.values()]
    print(f"extracted {statuses.count('extracted')}, skipped {statuses.count('skipped')} (already done), failed {statuses.count('failed')}")
    for result in results.values():
        if result.status == "failed":
            print(f"failed {result.video_id}: {result.error}")

    for path, entries in annotations.items():
        try:
            # A run killed while writing this file left its temporary copy: the file itself is whole.
            remove_stale_temps(path)
            write_json_atomic(path, mark_annotations(entries, results))
        except OSError as error:
            sys.exit(f"error: {error}")
        print(f"wrote num_frames into {path}")


if __name__ == "__main__":
    main()
