"""Bad input to prepare_dataset.py (Genex-DB videos -> frame folders): a bad video is listed in the summary and
the others go on; a scene table that cannot be read stops that scene. The matrix's rules: tests/bad_inputs_support.py."""

import json
from functools import partial
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bad_inputs_support import (DECODE_FAILURE, HEIGHT, UNWRITABLE, WIDTH, Built, Case, Env, Outcome, cut_before_first_frame, cut_mid_stream,
                                files_under, image_bytes, noise_frames, params, try_case, unwritable_folder, write_video)
from common.video import encode_video_bytes
from genex.prepare import extract_video, prepare_dataset
from genex.synthetic import write_genex_db

ENTRY = "prepare_dataset.py"
CASES: list[Case] = []


def prepare_argv(dataset: Path, output: Path, frames: int = 4, size: tuple[int, int] = (WIDTH, HEIGHT), scenes: tuple[str, ...] = ("realistic",)) -> list[str]:
    return ["--dataset_path", str(dataset), "--output_dir", str(output), "--scene_types", *scenes,
            "--frames_per_video", str(frames), "--num_workers", "1", "--image_size", str(size[0]), str(size[1]), "--quiet"]


def mp4_frames(seed: int, count: int = 12):
    return noise_frames(count, WIDTH, HEIGHT, seed)


def finished_video(output: Path, name: str) -> list[Path]:
    """A video folder a previous run completed with this run's settings (4 frames of WIDTH x HEIGHT, its prepare.json): a rerun
    must leave its bytes alone."""
    folder = output / "realistic" / name
    extract_video(encode_video_bytes(mp4_frames(5), fps=12), folder, 4, (WIDTH, HEIGHT), "an earlier run's source")
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


def output_unwritable(tmp: Path, env: Env) -> Built:
    dataset = tmp / "src"
    write_video(dataset / "Realistic" / "a.mp4", mp4_frames(0))
    output = unwritable_folder(tmp / "out")
    return Built(prepare_argv(dataset, output), {"bad": str(output)})


CASES.append(Case("prepare-output-unwritable", ENTRY, output_unwritable, "error", (r"--output_dir {bad}", UNWRITABLE), code=2))


# ----------------------------------------------------------------------------- a rerun into the same --output_dir


def rerun(tmp: Path, env: Env, frames: int, size: tuple[int, int], extra: tuple[str, ...] = ()) -> Built:
    """A finished run (4 frames per video at WIDTH x HEIGHT) over three videos, rerun with `frames` and `size`; the first run's
    files must stay byte for byte as they were unless the rerun asks to redo them."""
    dataset, output = tmp / "src", tmp / "out"
    for seed, name in enumerate(("a.mp4", "b.mp4", "c.mp4")):
        write_video(dataset / "Realistic" / name, mp4_frames(seed))
    prepare_dataset(dataset, output, ["realistic"], frames_per_video=4, image_size=(WIDTH, HEIGHT), num_workers=1, show_progress=False)
    keep = files_under(output) if "--redo_other_settings" not in extra else []
    return Built(prepare_argv(dataset, output, frames, size) + list(extra), {"video": str(output / "realistic" / "video_00001"),
                                                                             "output": str(output)}, keep)


CASES.append(Case("prepare-rerun-same-settings", ENTRY, partial(rerun, frames=4, size=(WIDTH, HEIGHT)), "works",
                  (r"realistic: 0 written \(0 short\), 3 skipped as already done, 0 failed",), code=0))
CASES.append(Case("prepare-rerun-other-frames_per_video", ENTRY, partial(rerun, frames=6, size=(WIDTH, HEIGHT)), "error",
                  (r"{video}: made with --frames_per_video 4 --image_size 64 32, this run asks --frames_per_video 6 --image_size 64 32",
                   r"3 finished video\(s\) differ", r"--redo_other_settings"), code=2))
CASES.append(Case("prepare-rerun-other-image_size", ENTRY, partial(rerun, frames=4, size=(2 * WIDTH, 2 * HEIGHT)), "error",
                  (r"{video}: made with --frames_per_video 4 --image_size 64 32, this run asks --frames_per_video 4 --image_size 128 64",
                   r"--redo_other_settings"), code=2))


def redone_with_new_settings(built: Built, outcome: Outcome) -> None:
    """Every video holds 6 frames of the new size and records it; no half-replaced folder is left."""
    scene = Path(built.names["output"]) / "realistic"
    assert sorted(p.name for p in scene.iterdir()) == ["video_00001", "video_00002", "video_00003"]
    for folder in scene.iterdir():
        assert sorted(p.name for p in folder.glob("frame_*.jpg")) == [f"frame_{k:04d}.jpg" for k in range(1, 7)]
        assert json.loads((folder / "prepare.json").read_text())["frames_per_video"] == 6


CASES.append(Case("prepare-rerun-redo-other-settings", ENTRY, partial(rerun, frames=6, size=(WIDTH, HEIGHT), extra=("--redo_other_settings",)),
                  "works", (r"3 written \(0 short, 3 redone with the new settings\)",), redone_with_new_settings, code=0))


# ----------------------------------------------------------------------------- the one-table layout (data/train-*.parquet with a label column)


def labelled_clone(tmp: Path, env: Env, scenes: tuple[str, ...] = ("anime",), first_run: bool = False, frames: int = 4) -> Built:
    """The one-table layout: realistic, anime and low_texture rows (3 each) in shards of 2 rows, so shards hold two scenes."""
    dataset, output = tmp / "src", tmp / "out"
    write_genex_db(dataset, "labelled", ["realistic", "anime", "low_texture"], videos_per_scene=3, num_frames=8, width=WIDTH, height=HEIGHT)
    keep = []
    if first_run:
        prepare_dataset(dataset, output, list(scenes), frames_per_video=4, image_size=(WIDTH, HEIGHT), num_workers=1, show_progress=False)
        keep = files_under(output)
    return Built(prepare_argv(dataset, output, frames, scenes=scenes), {"output": str(output), "dataset": str(dataset),
                                                                       "video": str(output / "anime" / "video_00001")}, keep)


def anime_rows_extracted(built: Built, outcome: Outcome) -> None:
    """anime's three rows, numbered 1..3 in table order, each from a row whose label is anime, none from another scene."""
    dataset, scene = Path(built.names["dataset"]), Path(built.names["output"]) / "anime"
    assert sorted(p.name for p in Path(built.names["output"]).iterdir()) == ["anime"]
    sources = []
    for number in (1, 2, 3):
        record = json.loads((scene / f"video_{number:05d}" / "prepare.json").read_text())
        file, row = record["source"].rsplit(" row ", 1)
        table = pq.read_table(dataset / file)
        names = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"]
        assert names[table.column("label")[int(row)].as_py()] == "anime"
        assert len(list((scene / f"video_{number:05d}").glob("frame_*.jpg"))) == 4
        sources.append((file, int(row)))
    assert sources == sorted(sources) and len(set(sources)) == 3


CASES.append(Case("prepare-labelled-table", ENTRY, labelled_clone, "works", (r"anime: 3 written \(0 short\), 0 skipped",), anime_rows_extracted, code=0))
CASES.append(Case("prepare-labelled-table-rerun", ENTRY, partial(labelled_clone, first_run=True), "works",
                  (r"anime: 0 written \(0 short\), 3 skipped as already done",), code=0))
CASES.append(Case("prepare-labelled-table-rerun-other-frames_per_video", ENTRY, partial(labelled_clone, first_run=True, frames=5), "error",
                  (r"{video}: made with --frames_per_video 4", r"this run asks --frames_per_video 5"), code=2))
CASES.append(Case("prepare-labelled-table-unknown-scene", ENTRY, partial(labelled_clone, scenes=("geometry",)), "error",
                  (r"{dataset}: none of the scene types geometry found", r"class names in its tables: anime, low_texture, realistic"), code=2))


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case, matrix_env, tmp_path, capsys, caplog, monkeypatch):
    try_case(case, matrix_env, tmp_path, capsys, caplog, monkeypatch)
