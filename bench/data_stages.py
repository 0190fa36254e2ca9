#!/usr/bin/env python
"""Data stages: the project's code against faithful re-implementations of the predecessors' method.

    python -m bench.data_stages [--repeats 3] [--quick] [--stages genex_extraction clip_loading ssv2_extraction]

Every stage generates its own data in a temporary folder (textured content, so the codecs do real work):
- genex_extraction: 1024x576 H.264 mp4s of 50 and 150 frames -> 50 frames each. Predecessor: OpenCV
  seeks to every wanted frame (CAP_PROP_POS_FRAMES) and writes PNG. Project: genex.prepare.extract_video.
  Target: >= 10x the predecessor and within 3x of a decode-only pass.
- clip_loading: 25 JPEG frames at 1024x576 -> one training clip. Predecessor: Pillow open/resize per
  frame into a float tensor in [-1, 1]. Project: genex.data.FrameFolderDataset[i] (uint8), plus the
  copy to the GPU and to_model_range there when one is present. Target: >= 2.5x.
- ssv2_extraction: a 427x240 VP9 webm of 45 frames -> every frame as PNG at 96x96 and 128x128.
  Predecessor: one decode per size, Pillow PNG at compress_level 6. Project: pecn.video_loader.extract_video.
  Target: >= 2x with identical pixels (both outputs decoded and compared).

Candidates run interleaved (bench.timing); the table gives median seconds per video or clip.
"""

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import av
import cv2
import numpy as np
import torch
from PIL import Image

from bench.timing import interleaved_medians, report
from common.video import encode_video_bytes, iter_video_frames, write_mp4
from common.pixels import to_model_range
from genex.data import FrameFolderDataset
from genex.prepare import extract_video as extract_genex_video
from genex.synthetic import CAMERA_HEIGHT, make_room, render_room
from pecn.synthetic import make_background, render_video
from pecn.video_loader import extract_video as extract_ssv2_video
from pecn.video_loader import frames_dir_name, resize_frame

STAGES = ("genex_extraction", "clip_loading", "ssv2_extraction")
COLUMNS = ["stage", "predecessor_s", "project_s", "decode_only_s", "speedup", "project_vs_decode", "pixels_identical", "target", "pass"]
SSV2_TEMPLATE = "Pushing something from left to right"
PREDECESSOR_PNG_LEVEL = 6


@dataclass(frozen=True)
class Sizes:
    """What each stage works on; --quick shrinks everything so the smoke test takes seconds."""

    genex_size: tuple[int, int]  # (width, height)
    genex_lengths: tuple[int, ...]
    frames_per_video: int
    clip_frames: int
    ssv2_size: tuple[int, int]
    ssv2_frames: int
    ssv2_outputs: tuple[tuple[int, int], ...]


FULL = Sizes((1024, 576), (50, 150), 50, 25, (427, 240), 45, ((96, 96), (128, 128)))
QUICK = Sizes((128, 64), (6, 12), 4, 3, (64, 36), 6, ((16, 16), (24, 24)))


# ----------------------------------------------------------------------------- generated data


def genex_frames(num_frames: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """A forward walk through a synthetic room, rendered at half size and upscaled, with sensor grain."""
    width, height = size
    room = make_room(seed, "realistic", path_length=0.06 * num_frames)
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(num_frames):
        # Half-size rendering keeps generation at seconds; grain gives the encoder fine detail to keep.
        frame = render_room(room, width // 2, height // 2, (0.0, CAMERA_HEIGHT, 0.06 * t), supersample=1)
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC)
        frames.append(_add_grain(frame, rng, 2))
    return frames


def ssv2_frames(num_frames: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """A pushed object over a textured wall and table, with sensor grain, like a phone recording."""
    width, height = size
    rng = np.random.default_rng(seed)
    background = make_background(width, height, rng).astype(np.int16)
    # Smooth blotches of a few pixels: wallpaper and wood grain that a codec cannot flatten away.
    blotches = cv2.GaussianBlur(rng.normal(0, 40, (height, width, 1)).astype(np.float32), (0, 0), 2.0)
    background = np.clip(background + blotches[..., None].astype(np.int16), 0, 255).astype(np.uint8)
    return [_add_grain(frame, rng, 3) for frame in render_video(SSV2_TEMPLATE, ["red block"], num_frames, width, height, background)]


def _add_grain(frame: np.ndarray, rng: np.random.Generator, amplitude: int) -> np.ndarray:
    grain = rng.integers(-amplitude, amplitude + 1, frame.shape[:2] + (1,), dtype=np.int16)
    return np.clip(frame.astype(np.int16) + grain, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the predecessors' way


def predecessor_genex_extract(video_path: Path, out_dir: Path, frames_per_video: int, size: tuple[int, int]) -> None:
    """GenEx's preparation: OpenCV seeks to each evenly spaced frame, resizes and writes a PNG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    capture = cv2.VideoCapture(str(video_path))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    for number, index in enumerate(np.linspace(0, total - 1, frames_per_video).astype(int), start=1):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        if not ok:
            break
        cv2.imwrite(str(out_dir / f"frame_{number:04d}.png"), cv2.resize(frame, size))
    capture.release()


def predecessor_clip(frame_paths: list[Path], size: tuple[int, int]) -> torch.Tensor:
    """SVD-Xtend's dataset item: per frame Pillow open, resize, float tensor scaled to [-1, 1] in the worker."""
    width, height = size
    pixel_values = torch.empty((len(frame_paths), 3, height, width))
    for i, path in enumerate(frame_paths):
        with Image.open(path) as image:
            resized = image.resize((width, height))
            tensor = torch.from_numpy(np.array(resized)).float()
            pixel_values[i] = (tensor / 127.5 - 1).permute(2, 0, 1)
    return pixel_values


def predecessor_ssv2_extract(video_path: Path, frames_dirs: dict[tuple[int, int], Path], video_id: str) -> None:
    """PECN's extraction: the video decoded once per size, each frame resized and saved by Pillow at level 6."""
    for size, frames_dir in frames_dirs.items():
        out_dir = frames_dir / video_id
        out_dir.mkdir(parents=True, exist_ok=True)
        with av.open(str(video_path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                image = Image.fromarray(resize_frame(frame.to_ndarray(format="rgb24"), size))
                image.save(out_dir / f"{index:05d}.png", compress_level=PREDECESSOR_PNG_LEVEL)


# ----------------------------------------------------------------------------- stages


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def _decode_only(path: Path) -> Callable[[], int]:
    return lambda: sum(1 for _ in iter_video_frames(path))


def _row(stage: str, times: dict[str, float], target: str, identical: Optional[bool] = None) -> dict:
    """One table row; the caller adds "pass" since each stage has its own target."""
    row = {"stage": stage, "predecessor_s": times["predecessor"], "project_s": times["project"], "speedup": times["predecessor"] / times["project"]}
    if "decode_only" in times:
        row["decode_only_s"] = times["decode_only"]
        row["project_vs_decode"] = times["project"] / times["decode_only"]
    if identical is not None:
        row["pixels_identical"] = identical
    row["target"] = target
    return row


def bench_genex_extraction(work: Path, sizes: Sizes, repeats: int) -> list[dict]:
    rows = []
    for length in sizes.genex_lengths:
        video = write_mp4(genex_frames(length, sizes.genex_size), work / f"genex_{length}.mp4", fps=12)
        out = work / f"genex_{length}_out"
        times = interleaved_medians(
            {
                "predecessor": lambda: predecessor_genex_extract(video, _fresh(out / "predecessor"), sizes.frames_per_video, sizes.genex_size),
                "project": lambda: extract_genex_video(video, _fresh(out / "project"), sizes.frames_per_video, sizes.genex_size),
                "decode_only": _decode_only(video),
            },
            repeats,
        )
        row = _row(f"genex extraction {sizes.genex_size[0]}x{sizes.genex_size[1]}, {length} frames", times, ">= 10x, <= 3x decode")
        row["pass"] = row["speedup"] >= 10 and row["project_vs_decode"] <= 3
        rows.append(row)
    return rows


def bench_clip_loading(work: Path, sizes: Sizes, repeats: int) -> list[dict]:
    width, height = sizes.genex_size
    base = work / "clips"
    extract_genex_video(write_mp4(genex_frames(sizes.clip_frames, sizes.genex_size, seed=1), work / "clip.mp4", fps=12), base / "video_00001", sizes.clip_frames, sizes.genex_size)
    dataset = FrameFolderDataset(base, sizes.clip_frames, width, height)
    frame_paths = sorted((base / "video_00001").glob("frame_*.jpg"))
    if torch.cuda.is_available():
        # What the training step sees: the clip on the device in [-1, 1]; uint8 crosses, the GPU scales.
        device = torch.device("cuda")
        candidates = {
            "predecessor": lambda: predecessor_clip(frame_paths, sizes.genex_size).to(device),
            "project": lambda: to_model_range(dataset[0]["pixel_values"].to(device), torch.float32),
        }
        synchronize, where = torch.cuda.synchronize, "item + to GPU"
    else:
        # No accelerator: what a DataLoader worker does per item.
        candidates = {"predecessor": lambda: predecessor_clip(frame_paths, sizes.genex_size), "project": lambda: dataset[0]}
        synchronize, where = (lambda: None), "item"
    times = interleaved_medians(candidates, repeats, synchronize=synchronize)
    row = _row(f"clip loading {sizes.clip_frames} JPEG {width}x{height}, {where}", times, ">= 2.5x")
    row["pass"] = row["speedup"] >= 2.5
    return [row]


def png_pixels_identical(first: Path, second: Path) -> bool:
    """Same PNG names under both folders and the same decoded pixels in every one."""
    names = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    if not names or names != sorted(p.relative_to(second) for p in second.rglob("*.png")):
        return False
    return all(np.array_equal(cv2.imread(str(first / n), cv2.IMREAD_UNCHANGED), cv2.imread(str(second / n), cv2.IMREAD_UNCHANGED)) for n in names)


def bench_ssv2_extraction(work: Path, sizes: Sizes, repeats: int) -> list[dict]:
    video = work / "ssv2" / "videos" / "1.webm"
    video.parent.mkdir(parents=True)
    video.write_bytes(encode_video_bytes(ssv2_frames(sizes.ssv2_frames, sizes.ssv2_size), codec="libvpx-vp9", fps=12, container_format="webm"))

    def frames_dirs(who: str) -> dict[tuple[int, int], Path]:
        return {size: work / "ssv2" / who / frames_dir_name(size) for size in sizes.ssv2_outputs}

    def project() -> None:
        result = extract_ssv2_video(video, "1", {size: _fresh(path) for size, path in frames_dirs("project").items()})
        if result.status != "extracted":
            raise RuntimeError(f"{video}: project extraction {result.status}: {result.error}")

    times = interleaved_medians(
        {
            "predecessor": lambda: predecessor_ssv2_extract(video, {size: _fresh(path) for size, path in frames_dirs("predecessor").items()}, "1"),
            "project": project,
            "decode_only": _decode_only(video),
        },
        repeats,
    )
    identical = png_pixels_identical(work / "ssv2" / "predecessor", work / "ssv2" / "project")
    sizes_text = " and ".join(f"{w}x{h}" for w, h in sizes.ssv2_outputs)
    row = _row(f"ssv2 extraction {sizes.ssv2_size[0]}x{sizes.ssv2_size[1]} VP9, {sizes.ssv2_frames} frames -> {sizes_text} PNG", times, ">= 2x, identical pixels", identical)
    row["pass"] = row["speedup"] >= 2 and identical
    return [row]


BENCHES = {"genex_extraction": bench_genex_extraction, "clip_loading": bench_clip_loading, "ssv2_extraction": bench_ssv2_extraction}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time the data stages against the predecessors' method; print a table and one JSON line.")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved timed rounds per stage (after one warm-up round); medians are reported.")
    parser.add_argument("--quick", action="store_true", help="Tiny videos and few frames: checks that every stage runs and reports, in seconds.")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="Stages to run.")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_stages_") as work:
        for stage in args.stages:
            print(f"running {stage} ...", file=sys.stderr, flush=True)
            rows += BENCHES[stage](Path(work), sizes, args.repeats)
    report("data_stages" + (" (quick)" if args.quick else ""), rows, COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
