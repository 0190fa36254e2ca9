"""Bad input to prepare_dataset.py (Genex-DB videos -> frame folders): a bad video is listed in the summary and
the others go on; a scene table that cannot be read stops that scene. The matrix's rules: tests/bad_inputs_support.py."""

from functools import partial
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bad_inputs_support import (DECODE_FAILURE, HEIGHT, WIDTH, Built, Case, Env, cut_before_first_frame, cut_mid_stream, image_bytes,
                                noise_frames, params, try_case, write_frame_folder, write_video)

ENTRY = "prepare_dataset.py"
CASES: list[Case] = []


def prepare_argv(dataset: Path, output: Path, frames: int = 4) -> list[str]:
    return ["--dataset_path", str(dataset), "--output_dir", str(output), "--scene_types", "realistic",
            "--frames_per_video", str(frames), "--num_workers", "1", "--image_size", str(WIDTH), str(HEIGHT), "--quiet"]


def mp4_frames(seed: int, count: int = 12):
    return noise_frames(count, WIDTH, HEIGHT, seed)


def finished_video(output: Path, name: str) -> list[Path]:
    """A video folder a previous run completed: a rerun must leave its bytes alone."""
    folder = write_frame_folder(output / "realistic" / name, 4, seed=5)
    return sorted(folder.iterdir())


def beside_good_videos(tmp: Path, env: Env, bad_name: str, make_bad: Callable[[Path], None]) -> Built:
    """Realistic/<bad_name>, written by `make_bad`, beside two good videos; video_00002 is finished from a previous run."""
    dataset, output = tmp / "Genex-DB-src", tmp / "out"
    make_bad(dataset / "Realistic" / bad_name)
    write_video(dataset / "Realistic" / "b_good.mp4", mp4_frames(1))
    write_video(dataset / "Realistic" / "c_good.mp4", mp4_frames(2))
    keep = finished_video(output, "video_00002")
    return Built(prepare_argv(dataset, output), {"bad": f"Realistic/{bad_name}"}, keep)


def write_truncated_mp4(path: Path) -> None:
    cut_mid_stream(write_video(path, mp4_frames(0, 24)))


CASES.append(Case("prepare-mp4-truncated", ENTRY, partial(beside_good_videos, bad_name="a_cut.mp4", make_bad=write_truncated_mp4), "skip",
                  (r"realistic: 1 written .*1 skipped as already done, 1 failed", r"failed: realistic/video_00001 \({bad}\): .*(" + DECODE_FAILURE + ")")))


def write_mp4_without_frames(path: Path) -> None:
    cut_before_first_frame(write_video(path, mp4_frames(0)))


CASES.append(Case("prepare-mp4-zero-frames", ENTRY, partial(beside_good_videos, bad_name="a_empty.mp4", make_bad=write_mp4_without_frames), "skip",
                  (r"1 failed", r"failed: realistic/video_00001 \({bad}\): .*(" + DECODE_FAILURE + ")")))


def write_png_as_mp4(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes("PNG"))


CASES.append(Case("prepare-mp4-is-an-image", ENTRY, partial(beside_good_videos, bad_name="a_still.mp4", make_bad=write_png_as_mp4), "skip",
                  (r"1 failed", r"failed: realistic/video_00001 \({bad}\): .*an image")))


def mp4_shorter_than_frames_per_video(tmp: Path, env: Env) -> Built:
    dataset, output = tmp / "src", tmp / "out"
    write_video(dataset / "Realistic" / "short.mp4", mp4_frames(0, 2))
    return Built(prepare_argv(dataset, output, frames=4), {"bad": "Realistic/short.mp4"})


CASES.append(Case("prepare-frames_per_video-beyond-video", ENTRY, mp4_shorter_than_frames_per_video, "skip",
                  (r"1 written \(1 short\)", r"short: realistic/video_00001 \({bad}\): 2 of 4 frames")))


def write_parquet(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=1)
    return path


def parquet_truncated_row(tmp: Path, env: Env) -> Built:
    dataset, output = tmp / "src", tmp / "out"
    good = write_video(tmp / "good.mp4", mp4_frames(1)).read_bytes()
    cut = cut_mid_stream(write_video(tmp / "cut.mp4", mp4_frames(0, 24))).read_bytes()
    write_parquet(dataset / "Realistic" / "train-00000-of-00001.parquet", {"video": pa.array([good, cut], pa.binary())})
    return Built(prepare_argv(dataset, output), {"bad": "Realistic/train-00000-of-00001.parquet row 1"})


CASES.append(Case("prepare-parquet-row-truncated", ENTRY, parquet_truncated_row, "skip",
                  (r"1 written .*1 failed", r"failed: realistic/video_00002 \({bad}\): .*(" + DECODE_FAILURE + ")")))


def parquet_without_video_column(tmp: Path, env: Env) -> Built:
    dataset, output = tmp / "src", tmp / "out"
    good = write_video(tmp / "good.mp4", mp4_frames(1)).read_bytes()
    path = write_parquet(dataset / "Realistic" / "train-00000-of-00001.parquet", {"mp4": pa.array([good], pa.binary()), "caption": ["a walk"]})
    return Built(prepare_argv(dataset, output), {"bad": str(path)})


CASES.append(Case("prepare-parquet-without-video-column", ENTRY, parquet_without_video_column, "stopped",
                  (r"stopped reading this scene: {bad}: no 'video' column \(columns: mp4, caption\)", r"1 scene\(s\) stopped early")))


def scene_table_text(tmp: Path, env: Env, name: str, text: str) -> Built:
    """The Realistic scene's only table, Realistic/<name>, holding `text`."""
    dataset, output = tmp / "src", tmp / "out"
    path = dataset / "Realistic" / name
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return Built(prepare_argv(dataset, output), {"bad": str(path)})


LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 123456\n"  # what a clone without `git lfs pull` holds
CASES.append(Case("prepare-parquet-is-lfs-pointer", ENTRY, partial(scene_table_text, name="train-00000-of-00001.parquet", text=LFS_POINTER), "stopped",
                  (r"stopped reading this scene: {bad}: not a readable parquet file .*git lfs pull",)))
CASES.append(Case("prepare-csv-without-video-column", ENTRY, partial(scene_table_text, name="train.csv", text="clip,caption\nb'x',a walk\n"), "stopped",
                  (r"stopped reading this scene: {bad}: no 'video' column",)))


def dataset_path_missing(tmp: Path, env: Env) -> Built:
    return Built(prepare_argv(tmp / "nowhere", tmp / "out"), {"bad": str(tmp / "nowhere")})


CASES.append(Case("prepare-dataset-path-missing", ENTRY, dataset_path_missing, "error", (r"{bad}", r"does not exist")))


def no_scene_found(tmp: Path, env: Env) -> Built:
    (tmp / "src" / "Cartoon").mkdir(parents=True)
    return Built(prepare_argv(tmp / "src", tmp / "out"), {"bad": str(tmp / "src")})


CASES.append(Case("prepare-no-scene-found", ENTRY, no_scene_found, "error", (r"{bad}", r"none of the scene types realistic found", r"Cartoon")))


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case, matrix_env, tmp_path, capsys, caplog):
    try_case(case, matrix_env, tmp_path, capsys, caplog)
