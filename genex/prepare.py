"""Genex-DB-World-Exploration -> frame folders for GenEx-Explorer training.

Reads both published layouts of the dataset: per scene, parquet (or CSV) files whose `video`
column holds mp4 bytes, or folders of video files. Scene names match case-insensitively ignoring
punctuation, so `--scene_types real_world` finds `Real-World/`. Writes

    <output_dir>/<scene>/video_00001/frame_0001.jpg ... frame_0050.jpg

with frames evenly spaced over the whole video. Videos are numbered in sorted source order, so a
rerun maps each video to the same folder and skips the ones already written. Each video is
written into a hidden `.video_XXXXX.partial` folder and renamed when complete: an interrupted run
never leaves a folder that looks finished, and the next run removes its leftovers.
"""

import ast
import csv
import io
import itertools
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from common.files import DiskFullError, WorkerDied, WorkerPool, atomic_folder, clean_staging_folders, write_file
from common.video import VideoDecodeError, VideoSource, evenly_spaced_indices, iter_video_frames, video_stream

SCENE_TYPES = ("realistic", "low_texture", "anime", "real_world")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi")
TABLE_EXTENSIONS = (".parquet", ".csv")
VIDEO_COLUMN = "video"
JPEG_QUALITY = 95
# How deep below --dataset_path scene folders or files are looked for (a hub snapshot nests them).
SEARCH_DEPTH = 3
# Sharded file names such as realistic-00000-of-00004.parquet name their scene before the suffix.
SHARD_SUFFIX = re.compile(r"[-_]\d+[-_]of[-_]\d+$")
LFS_POINTER = b"version https://git-lfs"


class DatasetLayoutError(ValueError):
    """The dataset path, a requested scene or one of its files cannot be found or read as a table."""


def default_num_workers() -> int:
    return min(8, os.cpu_count() or 1)


def scene_key(name: str) -> str:
    """Scene name compared case-insensitively ignoring punctuation: 'Real-World' == 'real_world'."""
    return "".join(c for c in name.lower() if c.isalnum())


# ----------------------------------------------------------------------------- finding the videos


def _is_source(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS + TABLE_EXTENSIONS


def _source_files(folder: Path) -> list[Path]:
    """Video, parquet and CSV files anywhere under `folder`, hidden folders skipped, in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".") and _is_source(Path(f))]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def find_scene_sources(dataset_path, scene_types: Sequence[str]) -> dict[str, list[Path]]:
    """Source files per requested scene type (empty list: not found).

    A folder named after a scene claims every source file under it; a parquet/CSV/video file named
    after a scene (shard suffix ignored) belongs to it too.
    """
    root = Path(dataset_path)
    wanted = {scene_key(scene): scene for scene in scene_types}
    found: dict[str, list[Path]] = {scene: [] for scene in scene_types}
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in list(dirnames):
            scene = wanted.get(scene_key(name))
            if scene is not None:
                found[scene] += _source_files(Path(dirpath) / name)
                dirnames.remove(name)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            scene = wanted.get(scene_key(SHARD_SUFFIX.sub("", path.stem)))
            if scene is not None and _is_source(path):
                found[scene].append(path)
        if depth + 1 >= SEARCH_DEPTH:
            dirnames.clear()
    return found


@dataclass(frozen=True)
class VideoJob:
    """One video of a scene: its number, where it comes from, and its data (None once done or unreadable)."""

    number: int
    origin: str
    source: Optional[VideoSource] = None
    error: Optional[str] = None


def video_from_cell(cell, base_dir: Path) -> VideoSource:
    """The mp4 bytes (or the video file path) held by one `video` cell of a parquet or CSV table.

    Handles plain bytes, the {"bytes", "path"} struct of HF datasets, a path relative to the table,
    and what a CSV export of these looks like: a bytes literal "b'...'" or a dict repr "{'bytes': ...}".
    """
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        if cell.get("path"):
            return _resolve(cell["path"], base_dir)
        raise ValueError("video cell holds neither bytes nor a path")
    if isinstance(cell, str) and cell.strip():
        text = cell.strip()
        if text[:2] in ("b'", 'b"') or text.startswith("{"):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError) as error:
                raise ValueError(f"video cell looks like a Python literal but does not parse ({type(error).__name__})") from None
            if not isinstance(value, (bytes, dict)):
                raise ValueError(f"video cell holds a {type(value).__name__}, not bytes or a dict")
            return video_from_cell(value, base_dir)
        return _resolve(text, base_dir)
    raise ValueError(f"empty or unsupported video cell ({type(cell).__name__})")


def _resolve(path: str, base_dir: Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else base_dir / path


def _lfs_hint(head: bytes) -> str:
    return " (a git-lfs pointer, not the data: run `git lfs pull`)" if head.startswith(LFS_POINTER) else ""


def _file_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(LFS_POINTER))
    except OSError:
        return b""


def _parquet_jobs(path: Path, origin: str, numbers: Iterator[int], is_done: Callable[[int], bool]) -> Iterator[VideoJob]:
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DatasetLayoutError(f"{path}: not a readable parquet file ({error}){_lfs_hint(_file_head(path))}") from None
    if VIDEO_COLUMN not in table.schema_arrow.names:
        raise DatasetLayoutError(f"{path}: no '{VIDEO_COLUMN}' column (columns: {', '.join(table.schema_arrow.names)})")
    row = 0
    for group in range(table.num_row_groups):
        group_numbers = [next(numbers) for _ in range(table.metadata.row_group(group).num_rows)]
        pending = [not is_done(number) for number in group_numbers]
        # Read a row group's bytes only if one of its videos still needs writing, a few rows at a time.
        cells = _read_cells(table, group, path) if any(pending) else itertools.repeat(None)
        for number, needed, cell in zip(group_numbers, pending, cells):
            yield _job(number, f"{origin} row {row}", cell if needed else None, path.parent, needed)
            row += 1


def _read_cells(table: pq.ParquetFile, group: int, path: Path) -> Iterator:
    try:
        for batch in table.iter_batches(batch_size=4, row_groups=[group], columns=[VIDEO_COLUMN]):
            yield from batch.column(0).to_pylist()
    except (pa.ArrowException, OSError) as error:
        raise DatasetLayoutError(f"{path}: row group {group} cannot be read ({error})") from None


def _csv_jobs(path: Path, origin: str, numbers: Iterator[int], is_done: Callable[[int], bool]) -> Iterator[VideoJob]:
    # A CSV export of mp4 bytes has cells of megabytes; the csv module's default limit is 128 KiB.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or VIDEO_COLUMN not in reader.fieldnames:
            raise DatasetLayoutError(f"{path}: no '{VIDEO_COLUMN}' column (header: {', '.join(reader.fieldnames or [])}){_lfs_hint(_file_head(path))}")
        for row, record in enumerate(reader):
            number = next(numbers)
            needed = not is_done(number)
            yield _job(number, f"{origin} row {row}", record[VIDEO_COLUMN] if needed else None, path.parent, needed)


def _job(number: int, origin: str, cell, base_dir: Path, needed: bool) -> VideoJob:
    if not needed:
        return VideoJob(number, origin)
    try:
        return VideoJob(number, origin, source=video_from_cell(cell, base_dir))
    except ValueError as error:
        return VideoJob(number, origin, error=str(error))


def iter_video_jobs(files: Sequence[Path], root: Path, is_done: Callable[[int], bool]) -> Iterator[VideoJob]:
    """Every video of a scene in stable order, numbered from 1; data is read only for videos not done."""
    numbers = itertools.count(1)
    for path in files:
        origin = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            yield from _parquet_jobs(path, origin, numbers, is_done)
        elif suffix == ".csv":
            yield from _csv_jobs(path, origin, numbers, is_done)
        else:
            number = next(numbers)
            yield VideoJob(number, origin, None if is_done(number) else path)


def count_videos(files: Sequence[Path]) -> Optional[int]:
    """Number of videos without reading any video data; None when a CSV would have to be read to know."""
    total = 0
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return None
        if suffix == ".parquet":
            try:
                total += pq.ParquetFile(path).metadata.num_rows
            except (pa.ArrowException, OSError):
                return None
        else:
            total += 1
    return total


# ----------------------------------------------------------------------------- one video -> frames


def count_frames(source: VideoSource) -> int:
    """Frame count from the container, without decoding: its metadata, else by counting packets."""
    name = f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source)
    head = source[: len(LFS_POINTER)] if isinstance(source, bytes) else _file_head(source)
    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
            stream = video_stream(container, name)
            if stream.frames > 0:
                return stream.frames
            return sum(1 for packet in container.demux(stream) if packet.size)
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoDecodeError(f"{name}: cannot open video ({error}){_lfs_hint(head)}") from None


def _write_jpeg(frame: np.ndarray, path: Path) -> None:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"{path}: JPEG encoding failed")
    write_file(path, encoded)


def write_frames(source: VideoSource, folder: Path, frames_per_video: int, image_size: tuple[int, int], num_available: int) -> tuple[int, int]:
    """Decode once, front to back, writing the evenly spaced frames as they pass; return (written, decoded)."""
    frame_number = {index: k for k, index in enumerate(evenly_spaced_indices(num_available, frames_per_video), start=1)}
    written = decoded = 0
    for index, frame in enumerate(iter_video_frames(source)):
        decoded += 1
        k = frame_number.get(index)
        if k is not None:
            if frame.shape[1::-1] != tuple(image_size):
                frame = cv2.resize(frame, image_size, interpolation=cv2.INTER_AREA)
            _write_jpeg(frame, folder / f"frame_{k:04d}.jpg")
            written += 1
    return written, decoded


def extract_video(source: VideoSource, video_dir: Path, frames_per_video: int, image_size: tuple[int, int]) -> int:
    """Write `frames_per_video` evenly spaced frames (all, if the video is shorter) into `video_dir`; return how many."""
    with atomic_folder(video_dir) as partial:
        expected = count_frames(source)
        written, decoded = write_frames(source, partial, frames_per_video, image_size, expected)
        if decoded != expected and decoded > 0:
            # The container's count was wrong: the spacing was too, so decode again with the true count.
            shutil.rmtree(partial)
            partial.mkdir()
            written, decoded = write_frames(source, partial, frames_per_video, image_size, decoded)
        if written == 0:
            raise VideoDecodeError(f"{video_dir.name}: the video has no decodable frames")
    return written


def _extract_reporting(source: VideoSource, video_dir: Path, frames_per_video: int, image_size: tuple[int, int]) -> tuple[Optional[int], Optional[str]]:
    try:
        return extract_video(source, video_dir, frames_per_video, image_size), None
    except DiskFullError:
        # Every later video would fail the same way: the run stops instead of marking them all bad.
        raise
    except Exception as error:  # one bad video must not end a run over thousands: it is reported by name
        return None, str(error) or type(error).__name__


# ----------------------------------------------------------------------------- a whole dataset


@dataclass
class SceneReport:
    scene: str
    written: int = 0
    skipped: int = 0
    short: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    cleaned_partials: int = 0
    error: Optional[str] = None


@dataclass
class PrepareSummary:
    frames_per_video: int
    scenes: list[SceneReport]
    missing: list[str]


def _prepare_scene(workers: WorkerPool, scene: str, files: list[Path], root: Path, output_dir: Path, frames_per_video: int, image_size: tuple[int, int], show_progress: bool) -> SceneReport:
    report = SceneReport(scene)
    scene_dir = output_dir / scene
    scene_dir.mkdir(parents=True, exist_ok=True)
    report.cleaned_partials = clean_staging_folders(scene_dir, "video_*")
    done = {p.name for p in scene_dir.iterdir() if p.is_dir()}

    def is_done(number: int) -> bool:
        return f"video_{number:05d}" in done

    names: dict[Path, str] = {}
    bar = tqdm(total=count_videos(files), desc=scene, unit="video", disable=not show_progress)

    def extraction_jobs():
        """The videos still to extract; the ones already done or unreadable at the source are counted here."""
        for job in iter_video_jobs(files, root, is_done):
            name = f"{scene}/video_{job.number:05d} ({job.origin})"
            if job.error is not None:
                report.failed.append((name, job.error))
                bar.update()
            elif job.source is None:
                report.skipped += 1
                bar.update()
            else:
                video_dir = scene_dir / f"video_{job.number:05d}"
                names[video_dir] = name
                yield job.source, video_dir, frames_per_video, image_size

    try:
        for (_, video_dir, _, _), result in workers.run(_extract_reporting, extraction_jobs()):
            written, error = (None, str(result)) if isinstance(result, WorkerDied) else result
            if error is not None:
                report.failed.append((names[video_dir], error))
            else:
                report.written += 1
                if written < frames_per_video:
                    report.short.append((names[video_dir], written))
            bar.update()
    except DatasetLayoutError as error:
        report.error = str(error)
    finally:
        bar.close()
    return report


def prepare_dataset(
    dataset_path,
    output_dir,
    scene_types: Sequence[str] = SCENE_TYPES,
    frames_per_video: int = 50,
    image_size: tuple[int, int] = (1024, 576),
    num_workers: Optional[int] = None,
    show_progress: bool = True,
) -> PrepareSummary:
    """Extract frame folders for every video of the requested scenes; see the module docstring.

    Raises DatasetLayoutError when `dataset_path` is missing or none of the scenes is found there.
    """
    root = Path(dataset_path)
    num_workers = num_workers or default_num_workers()
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: dataset path does not exist or is not a folder")
    if frames_per_video < 1 or min(image_size) < 1 or num_workers < 1:
        raise ValueError(f"need frames_per_video >= 1, a positive image size and num_workers >= 1; got {frames_per_video}, {image_size}, {num_workers}")
    scene_types = list(dict((scene_key(s), s) for s in scene_types).values())
    sources = find_scene_sources(root, scene_types)
    missing = [scene for scene in scene_types if not sources[scene]]
    if len(missing) == len(scene_types):
        entries = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))[:20]
        raise DatasetLayoutError(
            f"{root}: none of the scene types {', '.join(scene_types)} found (looked for folders or parquet/csv/video files named after them; "
            f"found: {', '.join(entries) or 'nothing'})"
        )
    output_dir = Path(output_dir)
    reports = []
    # On Ctrl-C the queued videos are dropped; their hidden partial folders are cleaned by the next run.
    with WorkerPool(num_workers) as workers:
        for scene in scene_types:
            if sources[scene]:
                reports.append(_prepare_scene(workers, scene, sources[scene], root, output_dir, frames_per_video, tuple(image_size), show_progress))
    return PrepareSummary(frames_per_video, reports, missing)


def format_summary(summary: PrepareSummary, dataset_path=None) -> str:
    """The closing report: per scene written / skipped / short / failed, with names and reasons."""
    lines = []
    for report in summary.scenes:
        lines.append(
            f"{report.scene}: {report.written} written ({len(report.short)} short), {report.skipped} skipped as already done, {len(report.failed)} failed"
            + (f"; removed {report.cleaned_partials} unfinished folder(s) of an interrupted run" if report.cleaned_partials else "")
        )
        lines += [f"  short: {name}: {count} of {summary.frames_per_video} frames (the video has no more)" for name, count in report.short]
        lines += [f"  failed: {name}: {reason}" for name, reason in report.failed]
        if report.error:
            lines.append(f"  stopped reading this scene: {report.error}")
    where = f" under {dataset_path}" if dataset_path else ""
    lines += [f"{scene}: not found{where} (no folder or parquet/csv/video file named like it)" for scene in summary.missing]
    totals = [sum(getattr(r, key) for r in summary.scenes) for key in ("written", "skipped")]
    stopped = sum(1 for r in summary.scenes if r.error)
    lines.append(
        f"total: {totals[0]} written, {totals[1]} skipped, {sum(len(r.short) for r in summary.scenes)} short, {sum(len(r.failed) for r in summary.scenes)} failed"
        + (f", {stopped} scene(s) stopped early" if stopped else "")
    )
    return "\n".join(lines)
