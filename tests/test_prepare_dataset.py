"""prepare_dataset.py / genex.prepare on tiny Genex-DB layouts that the tests write themselves."""

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import genex.prepare as prepare
from common.video import encode_video_bytes, evenly_spaced_indices
from conftest import REPO_ROOT
from genex.prepare import (
    DatasetLayoutError,
    extract_video,
    find_scene_sources,
    format_summary,
    prepare_dataset,
    scene_key,
    video_from_cell,
)

SIZE = (48, 24)  # output width, height
GREY_STEP = 12


def grey_video(num_frames: int) -> bytes:
    """A 64x32 mp4 whose frame i is uniformly grey at 10 + 12 i, so a written frame tells its source index."""
    frames = [np.full((32, 64, 3), 10 + GREY_STEP * i, np.uint8) for i in range(num_frames)]
    return encode_video_bytes(frames, fps=12)


def source_indices(folder: Path) -> list[int]:
    """The source frame index of every frame_XXXX.jpg in `folder`, read back from its grey level."""
    frames = sorted(folder.glob("frame_*.jpg"))
    return [round((np.asarray(Image.open(f)).mean() - 10) / GREY_STEP) for f in frames]


def write_parquet(path: Path, videos: list[bytes], as_struct: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if as_struct:
        column = pa.array([{"bytes": v, "path": f"{k}.mp4"} for k, v in enumerate(videos)], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        column = pa.array(videos, pa.binary())
    pq.write_table(pa.table({"video": column}), path, row_group_size=2)


def run(dataset: Path, output: Path, scenes, frames: int = 5):
    return prepare_dataset(dataset, output, scenes, frames_per_video=frames, image_size=SIZE, num_workers=2, show_progress=False)


def check_jpegs(folder: Path, count: int) -> None:
    frames = sorted(folder.glob("frame_*.jpg"))
    assert [f.name for f in frames] == [f"frame_{k:04d}.jpg" for k in range(1, count + 1)]
    for frame in frames:
        with Image.open(frame) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == SIZE


def hidden_leftovers(output: Path) -> list[Path]:
    return [p for p in output.rglob(".*")]


@pytest.mark.parametrize("as_struct", [False, True], ids=["binary", "struct"])
def test_parquet_layout(tmp_path, as_struct):
    dataset, output = tmp_path / "db", tmp_path / "out"
    write_parquet(dataset / "Realistic" / "train-00000-of-00002.parquet", [grey_video(20), b"not an mp4 at all", grey_video(3)], as_struct)
    write_parquet(dataset / "Realistic" / "train-00001-of-00002.parquet", [grey_video(9)], as_struct)
    write_parquet(dataset / "Real-World" / "train-00000-of-00001.parquet", [grey_video(6)], as_struct)

    summary = run(dataset, output, ["realistic", "real_world"])
    realistic, real_world = summary.scenes
    assert sorted(p.name for p in (output / "realistic").iterdir()) == ["video_00001", "video_00003", "video_00004"]
    assert [p.name for p in (output / "real_world").iterdir()] == ["video_00001"]
    check_jpegs(output / "realistic" / "video_00001", 5)
    check_jpegs(output / "realistic" / "video_00003", 3)
    # Frames are evenly spaced over the whole video, first and last included.
    assert source_indices(output / "realistic" / "video_00001") == evenly_spaced_indices(20, 5) == [0, 5, 10, 14, 19]
    assert source_indices(output / "realistic" / "video_00004") == [0, 2, 4, 6, 8]
    assert source_indices(output / "realistic" / "video_00003") == [0, 1, 2]

    assert (realistic.written, realistic.skipped, len(realistic.failed)) == (3, 0, 1)
    assert realistic.short == [("realistic/video_00003 (Realistic/train-00000-of-00002.parquet row 2)", 3)]
    failed_name, reason = realistic.failed[0]
    assert "video_00002" in failed_name and "row 1" in failed_name and "cannot open video" in reason
    assert real_world.written == 1 and not hidden_leftovers(output)
    text = format_summary(summary)
    assert "realistic: 3 written (1 short), 0 skipped as already done, 1 failed" in text
    assert "total: 4 written, 0 skipped, 1 short, 1 failed" in text

    rerun = run(dataset, output, ["realistic", "real_world"])
    assert [(r.written, r.skipped, len(r.failed)) for r in rerun.scenes] == [(0, 3, 1), (0, 1, 0)]


def test_folder_layout_rerun_and_interrupted_video(tmp_path):
    dataset, output = tmp_path / "db", tmp_path / "out"
    scene = dataset / "Low-Texture"
    scene.mkdir(parents=True)
    (scene / "b.mp4").write_bytes(grey_video(2))
    (scene / "a.mp4").write_bytes(grey_video(12))
    (scene / "c.mp4").write_bytes(grey_video(12)[:300])  # truncated: unreadable
    (scene / "notes.txt").write_text("not a video")
    (dataset / "Anime").mkdir()
    (dataset / "Anime" / "x.mov").write_bytes(grey_video(7))

    summary = run(dataset, output, ["low_texture", "anime"])
    low, anime = summary.scenes
    # Numbering follows sorted file names: a, b, c.
    assert source_indices(output / "low_texture" / "video_00001") == evenly_spaced_indices(12, 5)
    assert source_indices(output / "low_texture" / "video_00002") == [0, 1]
    assert not (output / "low_texture" / "video_00003").exists()
    assert low.failed[0][0] == "low_texture/video_00003 (Low-Texture/c.mp4)"
    assert low.short == [("low_texture/video_00002 (Low-Texture/b.mp4)", 2)]
    assert anime.written == 1 and check_jpegs(output / "anime" / "video_00001", 5) is None

    # An interrupted run leaves only a hidden partial folder; the rerun must redo that video.
    finished = output / "low_texture" / "video_00001"
    partial = output / "low_texture" / ".video_00001.partial"
    finished.rename(partial)
    (partial / "frame_0005.jpg").unlink()
    rerun = run(dataset, output, ["low_texture", "anime"])
    low, anime = rerun.scenes
    assert (low.written, low.skipped, len(low.failed), low.cleaned_partials) == (1, 1, 1, 1)
    assert (anime.written, anime.skipped) == (0, 1)
    check_jpegs(finished, 5)
    assert not hidden_leftovers(output)


def test_csv_layout(tmp_path):
    dataset, output = tmp_path / "db", tmp_path / "out"
    (dataset / "clips").mkdir(parents=True)
    (dataset / "clips" / "v.mp4").write_bytes(grey_video(8))
    video = grey_video(10)
    with open(dataset / "anime.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "video"])
        writer.writerow([0, repr(video)])  # what pandas writes for a bytes cell
        writer.writerow([1, repr({"bytes": video, "path": "0.mp4"})])  # ... and for an HF Video struct
        writer.writerow([2, "clips/v.mp4"])  # a path relative to the CSV
        writer.writerow([3, repr({"bytes": None, "path": "clips/v.mp4"})])
        writer.writerow([4, "b'\\x00\\x01"])  # a broken literal
    summary = run(dataset, output, ["anime"])
    (report,) = summary.scenes
    assert (report.written, len(report.failed)) == (4, 1)
    assert report.failed[0][0] == "anime/video_00005 (anime.csv row 4)" and "does not parse" in report.failed[0][1]
    assert source_indices(output / "anime" / "video_00001") == evenly_spaced_indices(10, 5)
    assert source_indices(output / "anime" / "video_00002") == evenly_spaced_indices(10, 5)
    assert source_indices(output / "anime" / "video_00003") == evenly_spaced_indices(8, 5)
    assert source_indices(output / "anime" / "video_00004") == evenly_spaced_indices(8, 5)


def test_scene_names_match_loosely(tmp_path):
    assert scene_key("Real-World") == scene_key("real_world") == scene_key("REAL WORLD") == "realworld"
    (tmp_path / "REALISTIC").mkdir()
    (tmp_path / "REALISTIC" / "a.mp4").write_bytes(b"")
    (tmp_path / "data" / "low-texture").mkdir(parents=True)
    (tmp_path / "data" / "low-texture" / "train.parquet").write_bytes(b"")
    (tmp_path / "anime-00000-of-00002.parquet").write_bytes(b"")
    (tmp_path / "Real_World.csv").write_text("video\n")
    (tmp_path / "realistic_extra.mp4").write_bytes(b"")  # not named like any scene
    found = find_scene_sources(tmp_path, ["realistic", "low_texture", "anime", "real_world"])
    names = {scene: [p.relative_to(tmp_path).as_posix() for p in paths] for scene, paths in found.items()}
    assert names == {
        "realistic": ["REALISTIC/a.mp4"],
        "low_texture": ["data/low-texture/train.parquet"],
        "anime": ["anime-00000-of-00002.parquet"],
        "real_world": ["Real_World.csv"],
    }


def test_missing_scene_is_reported_and_no_scene_is_an_error(tmp_path):
    dataset = tmp_path / "db"
    (dataset / "Anime").mkdir(parents=True)
    (dataset / "Anime" / "a.mp4").write_bytes(grey_video(5))
    summary = run(dataset, tmp_path / "out", ["anime", "realistic"])
    assert summary.missing == ["realistic"]
    assert f"realistic: not found under {dataset}" in format_summary(summary, dataset)
    with pytest.raises(DatasetLayoutError, match="none of the scene types low_texture"):
        run(dataset, tmp_path / "out", ["low_texture"])
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        run(tmp_path / "nowhere", tmp_path / "out", ["anime"])


def test_git_lfs_pointers_are_explained(tmp_path):
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"
    dataset = tmp_path / "db"
    (dataset / "Anime").mkdir(parents=True)
    (dataset / "Anime" / "a.mp4").write_bytes(pointer)
    (dataset / "Realistic").mkdir()
    (dataset / "Realistic" / "train.parquet").write_bytes(pointer)
    anime, realistic = run(dataset, tmp_path / "out", ["anime", "realistic"]).scenes
    assert "git lfs pull" in anime.failed[0][1]
    assert "git lfs pull" in realistic.error


def test_video_from_cell(tmp_path):
    data = b"\x00\x00\x00\x18ftypmp42"
    assert video_from_cell(data, tmp_path) == data
    assert video_from_cell({"bytes": data, "path": "x.mp4"}, tmp_path) == data
    assert video_from_cell({"bytes": None, "path": "x.mp4"}, tmp_path) == tmp_path / "x.mp4"
    assert video_from_cell(repr(data), tmp_path) == data
    assert video_from_cell(repr({"bytes": data, "path": None}), tmp_path) == data
    assert video_from_cell("sub/x.mp4", tmp_path) == tmp_path / "sub" / "x.mp4"
    for bad in ("", None, {"bytes": None, "path": None}, "{'a': "):
        with pytest.raises(ValueError):
            video_from_cell(bad, tmp_path)


def test_wrong_container_frame_count_still_spaces_evenly(tmp_path, monkeypatch):
    # Some containers report a wrong frame count; the spacing must follow the frames actually decoded.
    monkeypatch.setattr(prepare, "count_frames", lambda source: 100)
    written = extract_video(grey_video(10), tmp_path / "video_00001", 4, SIZE)
    assert written == 4
    assert source_indices(tmp_path / "video_00001") == evenly_spaced_indices(10, 4)


def test_cli_user_command_and_one_line_errors(tmp_path):
    dataset = tmp_path / "db"
    (dataset / "Real-World").mkdir(parents=True)
    (dataset / "Real-World" / "walk.mp4").write_bytes(grey_video(12))
    command = [sys.executable, "prepare_dataset.py", "--dataset_path", str(dataset), "--output_dir", str(tmp_path / "out"),
               "--scene_types", "realistic", "low_texture", "anime", "real_world", "--frames_per_video", "50", "--num_workers", "8", "--image_size", "1024", "576"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "real_world: 1 written (1 short)" in result.stdout and "realistic: not found" in result.stdout
    frames = sorted((tmp_path / "out" / "real_world" / "video_00001").glob("*.jpg"))
    assert len(frames) == 12 and Image.open(frames[0]).size == (1024, 576)

    missing = subprocess.run([sys.executable, "prepare_dataset.py", "--dataset_path", str(tmp_path / "nowhere")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    assert missing.stderr.strip().count("\n") == 0 and missing.stderr.startswith("error:") and "nowhere" in missing.stderr


def test_video_failing_midway_leaves_no_folder(tmp_path, monkeypatch):
    calls = []

    def failing_write(frame, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(f"{path}: disk full")
        path.write_bytes(b"jpeg")

    monkeypatch.setattr(prepare, "_write_jpeg", failing_write)
    with pytest.raises(OSError, match="disk full"):
        extract_video(grey_video(10), tmp_path / "video_00001", 5, SIZE)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


def test_colours_stay_rgb(tmp_path):
    red = [np.tile(np.array([220, 30, 40], np.uint8), (32, 64, 1)) for _ in range(4)]
    extract_video(encode_video_bytes(red), tmp_path / "video_00001", 2, SIZE)
    mean = np.asarray(Image.open(tmp_path / "video_00001" / "frame_0001.jpg")).reshape(-1, 3).mean(0)
    assert mean[0] > 180 and mean[1] < 80 and mean[2] < 80


def test_a_still_image_is_reported_as_an_image_not_a_short_video(tmp_path):
    # FFmpeg opens a PNG or JPEG as a one-frame video; it must not be written as a one-frame clip.
    dataset, output = tmp_path / "db", tmp_path / "out"
    picture = io.BytesIO()
    Image.new("RGB", (64, 32), (200, 40, 40)).save(picture, format="PNG")
    (dataset / "Anime").mkdir(parents=True)
    (dataset / "Anime" / "a.mp4").write_bytes(picture.getvalue())
    (dataset / "Anime" / "b.mp4").write_bytes(grey_video(6))
    write_parquet(dataset / "Realistic" / "train.parquet", [grey_video(6), picture.getvalue()], as_struct=False)
    anime, realistic = run(dataset, output, ["anime", "realistic"]).scenes
    for report, name in ((anime, "anime/video_00001 (Anime/a.mp4)"), (realistic, "realistic/video_00002 (Realistic/train.parquet row 1)")):
        assert (report.written, report.short) == (1, [])
        assert report.failed == [(name, report.failed[0][1])] and "is an image (png), not a video" in report.failed[0][1]
    assert sorted(p.name for p in (output / "anime").iterdir()) == ["video_00002"]


def test_cli_parquet_without_video_column_is_listed_and_fails_the_run(tmp_path):
    dataset = tmp_path / "db"
    (dataset / "Realistic").mkdir(parents=True)
    shard = dataset / "Realistic" / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"clip": pa.array([grey_video(3)], pa.binary())}), shard)
    result = subprocess.run([sys.executable, "prepare_dataset.py", "--dataset_path", str(dataset), "--output_dir", str(tmp_path / "out"), "--scene_types", "realistic", "--quiet"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"stopped reading this scene: {shard}: no 'video' column (columns: clip)" in result.stdout
    assert "1 scene(s) stopped early" in result.stdout
