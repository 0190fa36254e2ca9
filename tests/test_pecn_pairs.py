"""The pair dataset (pecn.pairs) from a synthetic SSv2 after filtering and frame extraction."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pecn import dataset, video_loader
from pecn.pairs import PairDatasetError, build_pair_dataset
from pecn.prompts import build_prompt
from pecn.synthetic import SHORT_NUM_FRAMES, write_synthetic_ssv2
from pecn.video_loader import frame_path

NUM_FRAMES = 24
SIZE = 32
INPUT, TARGET = 20, 21  # the default pair of DESIGN.md
PREFIX = "Generate a future frame of this action: "


def read(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def pixels(image_or_path) -> np.ndarray:
    image = image_or_path if isinstance(image_or_path, Image.Image) else Image.open(image_or_path)
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    data = write_synthetic_ssv2(root, train_per_class=0, val_per_class=2, test_videos=0, num_frames=NUM_FRAMES, width=SIZE, height=SIZE, short_videos=3)
    annotations = root / "annotations"
    dataset.main(["--data_root", str(root), "--train_per_task", "0", "--val_per_task", "100"])
    unextracted = root / "val_unextracted.json"
    shutil.copy(annotations / "val_filtered.json", unextracted)
    entries = read(unextracted)
    lengths = data.num_frames

    # One long video is lost before extraction, one long video loses its target frame after it.
    long_ids = [e["id"] for e in entries if lengths[e["id"]] == NUM_FRAMES]
    failed, frame_gone = long_ids[0], long_ids[1]
    (root / "videos" / f"{failed}.webm").unlink()
    annotation_file = annotations / "val_filtered.json"
    video_loader.main(["--data_root", str(root), "--annotation_files", str(annotation_file), "--sizes", f"{SIZE}x{SIZE}", "--num_workers", "1"])
    frames_dir = root / f"frames_{SIZE}x{SIZE}"
    frame_path(frames_dir, frame_gone, TARGET).unlink()
    return {
        "root": root, "annotation_file": annotation_file, "frames_dir": frames_dir, "unextracted": unextracted,
        "entries": read(annotation_file), "lengths": lengths, "failed": failed, "frame_gone": frame_gone,
    }


@pytest.fixture(scope="module")
def pairs(ssv2):
    return build_pair_dataset(ssv2["annotation_file"], ssv2["frames_dir"], INPUT, TARGET)


def expected_ids(ssv2, input_idx, target_idx):
    """Ids that give a pair, in annotation order, by the definition: extracted, long enough, frame files present."""
    return [
        e["id"] for e in ssv2["entries"]
        if e["id"] != ssv2["failed"] and ssv2["lengths"][e["id"]] > target_idx
        and not (e["id"] == ssv2["frame_gone"] and TARGET in (input_idx, target_idx))
    ]


def test_fixture_covers_every_case(ssv2):
    ids = [e["id"] for e in ssv2["entries"]]
    assert {e["task"] for e in ssv2["entries"]} == {"move_object", "drop_object", "cover_object"}
    assert sum(ssv2["lengths"][i] == SHORT_NUM_FRAMES for i in ids) >= 2
    assert SHORT_NUM_FRAMES <= TARGET < NUM_FRAMES


def test_skipped_videos_are_counted_by_reason(ssv2, pairs):
    dataset_, skipped = pairs
    ids = [e["id"] for e in ssv2["entries"]]
    num_short = sum(ssv2["lengths"][i] <= TARGET for i in ids)
    by_kind = {kind: [count for reason, count in skipped.items() if kind in reason] for kind in ("fail", "shorter", "missing")}
    assert by_kind == {"fail": [1], "shorter": [num_short], "missing": [1]}
    assert len(skipped) == 3
    assert len(dataset_) + sum(skipped.values()) == len(ids)


def test_rows_are_the_frame_files_in_annotation_order(ssv2, pairs):
    dataset_, _ = pairs
    assert dataset_["id"] == expected_ids(ssv2, INPUT, TARGET)
    for row in dataset_:
        input_png = pixels(frame_path(ssv2["frames_dir"], row["id"], INPUT))
        target_png = pixels(frame_path(ssv2["frames_dir"], row["id"], TARGET))
        np.testing.assert_array_equal(pixels(row["input_image"]), input_png)
        np.testing.assert_array_equal(pixels(row["edited_image"]), target_png)
        assert row["input_image"].size == (SIZE, SIZE)
    # Control: consecutive frames differ, so swapped or shifted indices would be caught.
    row = dataset_[0]
    assert not np.array_equal(pixels(row["input_image"]), pixels(frame_path(ssv2["frames_dir"], row["id"], INPUT - 1)))
    assert not np.array_equal(pixels(row["input_image"]), pixels(row["edited_image"]))


def test_columns_and_prompt_without_progress(ssv2, pairs):
    dataset_, _ = pairs
    by_id = {e["id"]: e for e in ssv2["entries"]}
    for row in dataset_:
        entry = by_id[row["id"]]
        assert row["edit_prompt"] == PREFIX + entry["label"] == build_prompt(entry["label"])
        assert (row["label"], row["task"], row["num_frames"], row["progress"]) == (entry["label"], entry["task"], NUM_FRAMES, -1)


def test_prompt_with_progress(ssv2):
    dataset_, _ = build_pair_dataset(ssv2["annotation_file"], ssv2["frames_dir"], INPUT, TARGET, add_progress=True)
    assert len(dataset_) > 0
    for row in dataset_:
        # 20 / 24 = 0.833 -> 80 %.
        assert row["progress"] == 80
        assert row["edit_prompt"] == f"{PREFIX}{row['label']}. And 80% of the action has been completed."
        assert row["edit_prompt"] == build_prompt(row["label"], True, INPUT, row["num_frames"])


def test_other_indices_include_short_videos(ssv2):
    dataset_, skipped = build_pair_dataset(ssv2["annotation_file"], ssv2["frames_dir"], 5, 10, add_progress=True)
    assert dataset_["id"] == expected_ids(ssv2, 5, 10)
    assert sum(skipped.values()) == 1  # only the failed extraction
    # 5 / 24 = 0.208 -> 20 %; 5 / 16 = 0.3125 -> 30 %.
    expected = {NUM_FRAMES: 20, SHORT_NUM_FRAMES: 30}
    assert {row["num_frames"] for row in dataset_} == {NUM_FRAMES, SHORT_NUM_FRAMES}
    for row in dataset_:
        assert row["progress"] == expected[row["num_frames"]]
        assert row["edit_prompt"].endswith(f". And {expected[row['num_frames']]}% of the action has been completed.")
    row = dataset_[0]
    np.testing.assert_array_equal(pixels(row["edited_image"]), pixels(frame_path(ssv2["frames_dir"], row["id"], 10)))


def test_target_index_equal_to_length_is_short(ssv2):
    # A video of 16 frames has frames 0..15: target 16 is past its end (0-based), so it is short, not "missing files".
    dataset_, skipped = build_pair_dataset(ssv2["annotation_file"], ssv2["frames_dir"], SHORT_NUM_FRAMES - 1, SHORT_NUM_FRAMES)
    num_short = sum(ssv2["lengths"][e["id"]] == SHORT_NUM_FRAMES for e in ssv2["entries"])
    assert [count for reason, count in skipped.items() if "shorter" in reason] == [num_short]
    assert not any("missing" in reason for reason in skipped)
    assert dataset_["id"] == expected_ids(ssv2, SHORT_NUM_FRAMES - 1, SHORT_NUM_FRAMES)


def test_max_samples_keeps_the_first_rows(ssv2, pairs):
    full, _ = pairs
    small, skipped = build_pair_dataset(ssv2["annotation_file"], ssv2["frames_dir"], INPUT, TARGET, max_samples=2)
    assert small["id"] == full["id"][:2]
    assert skipped == pairs[1]
    assert len(build_pair_dataset(ssv2["annotation_file"], ssv2["frames_dir"], INPUT, TARGET, max_samples=10_000)[0]) == len(full)


def test_no_pair_at_all_is_an_error_naming_the_file(ssv2):
    with pytest.raises(PairDatasetError) as error:
        build_pair_dataset(ssv2["annotation_file"], ssv2["frames_dir"], NUM_FRAMES - 1, NUM_FRAMES)
    assert str(ssv2["annotation_file"]) in str(error.value)


def test_annotations_without_num_frames_ask_for_the_video_loader(ssv2):
    with pytest.raises(PairDatasetError, match=r"pecn\.video_loader") as error:
        build_pair_dataset(ssv2["unextracted"], ssv2["frames_dir"], INPUT, TARGET)
    assert str(ssv2["unextracted"]) in str(error.value)


def test_missing_frames_dir_is_an_error(ssv2):
    with pytest.raises(PairDatasetError, match="frames_64x64"):
        build_pair_dataset(ssv2["annotation_file"], ssv2["root"] / "frames_64x64", INPUT, TARGET)


@pytest.mark.parametrize("input_idx, target_idx", [(21, 20), (20, 20), (-1, 5)])
def test_bad_indices_are_an_error(ssv2, input_idx, target_idx):
    with pytest.raises(PairDatasetError, match="input_frame_idx"):
        build_pair_dataset(ssv2["annotation_file"], ssv2["frames_dir"], input_idx, target_idx)
