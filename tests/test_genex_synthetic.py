"""The synthetic Genex-DB: panoramas that wrap, motion that goes forward, files in the published formats."""

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.video import iter_video_frames
from genex.synthetic import (
    CAMERA_HEIGHT,
    END_WALL,
    SCENE_TYPES,
    cast_rays,
    equirectangular_directions,
    make_room,
    render_forward_video,
    render_panorama,
    write_genex_db,
    write_validation_panoramas,
)


def seam_percentile(image: np.ndarray) -> float:
    """Fraction of neighbouring-column differences smaller than the last-to-first column difference."""
    image = image.astype(np.float64)
    neighbours = np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))
    seam = np.abs(image[:, -1] - image[:, 0]).mean()
    return float((neighbours < seam).mean())


def test_panorama_shape_dtype_and_determinism():
    a = render_panorama(64, 32, seed=3, scene_type="anime")
    assert a.shape == (32, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, render_panorama(64, 32, seed=3, scene_type="anime"))
    assert not np.array_equal(a, render_panorama(64, 32, seed=4, scene_type="anime"))
    assert a.std() > 5, "a panorama should have visible texture"


def test_yaw_rotation_is_a_circular_shift():
    # Turning the camera must equal rolling the panorama: the seam column pair is rendered as interior neighbours.
    for scene_type in SCENE_TYPES:
        image = render_panorama(64, 32, seed=1, scene_type=scene_type)
        for shift in (5, 32):
            turned = render_panorama(64, 32, seed=1, scene_type=scene_type, yaw=2 * np.pi * shift / 64)
            np.testing.assert_array_equal(turned, np.roll(image, -shift, axis=1))


def test_left_and_right_edges_meet():
    wrapped, cropped = [], []
    for scene_type in SCENE_TYPES:
        for seed in range(3):
            image = render_panorama(64, 32, seed=seed, scene_type=scene_type)
            wrapped.append(seam_percentile(image))
            cropped.append(seam_percentile(image[:, :58]))
    # At the seam the image changes like between any two neighbouring columns, not like a cut.
    assert np.mean(wrapped) < 0.6
    assert np.mean(cropped) > 0.6, "control: an image that does not wrap must show a seam"


def _median_shift(frames: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    grey = frames.astype(np.float32).mean(-1)
    shifts = [cv2.phaseCorrelate(grey[t][rows, cols].copy(), grey[t + 1][rows, cols].copy())[0] for t in range(len(grey) - 1)]
    return np.median(np.array(shifts), axis=0)


@pytest.mark.parametrize("scene_type", SCENE_TYPES)
def test_motion_is_forward(scene_type):
    frames = render_forward_video(10, 128, 64, seed=2, step=0.25, scene_type=scene_type)
    assert frames.shape == (10, 64, 128, 3)
    # Walking forward, features on the right side (longitude +90 deg) slide right, toward the back,
    # and those on the left slide left: the view expands away from the forward direction.
    right_dx = _median_shift(frames, slice(16, 48), slice(80, 112))[0]
    left_dx = _median_shift(frames, slice(16, 48), slice(16, 48))[0]
    assert right_dx > 0.5 and left_dx < -0.5
    assert _median_shift(frames[::-1], slice(16, 48), slice(80, 112))[0] < -0.5, "control: the reversed walk flows the other way"


def test_wall_ahead_grows_and_wall_behind_shrinks():
    room = make_room(seed=0, path_length=6.0)
    directions = equirectangular_directions(64, 32)
    ahead = directions[:, 2] > 0

    def end_wall_pixels(z):
        _, surface, _ = cast_rays(room, np.array([0.0, CAMERA_HEIGHT, z], np.float32), directions)
        wall = surface == END_WALL
        return (wall & ahead).sum(), (wall & ~ahead).sum()

    counts = [end_wall_pixels(z) for z in (0.0, 3.0, 6.0)]
    assert counts[0][0] < counts[1][0] < counts[2][0]
    assert counts[0][1] > counts[1][1] > counts[2][1]


def test_forward_video_is_fast():
    import time

    start = time.perf_counter()
    render_forward_video(30, 128, 64, seed=0)
    assert time.perf_counter() - start < 5.0, "30 small frames should take well under a second"


def _decoded_frame_count(source) -> int:
    return sum(1 for _ in iter_video_frames(source))


def test_folder_layout_uses_published_names_and_plays(tmp_path):
    written = write_genex_db(tmp_path, "folder", scene_types=("real_world", "low_texture"), videos_per_scene=2, num_frames=6, width=64, height=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Low-Texture", "Real-World"]
    assert [p.name for p in written["real_world"]] == ["00000.mp4", "00001.mp4"]
    frames = list(iter_video_frames(written["real_world"][0]))
    assert len(frames) == 6 and frames[0].shape == (32, 64, 3)
    # Different videos of one scene type are different walks.
    assert not np.array_equal(frames[0], next(iter_video_frames(written["real_world"][1])))


@pytest.mark.parametrize("video_type", ["binary", "struct"])
def test_parquet_layout_holds_mp4_bytes(tmp_path, video_type):
    written = write_genex_db(tmp_path, "parquet", scene_types=("anime",), videos_per_scene=3, num_frames=5, width=64, height=32, parquet_video_type=video_type, rows_per_shard=2)
    paths = written["anime"]
    assert [p.name for p in paths] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    table = pq.read_table(paths[0])
    assert table.num_rows == 2 and pq.read_table(paths[1]).num_rows == 1
    cell = table.column("video")[0].as_py()
    if video_type == "struct":
        assert pa.types.is_struct(table.schema.field("video").type)
        assert cell["path"] == "00000.mp4"
        cell = cell["bytes"]
    else:
        assert pa.types.is_binary(table.schema.field("video").type)
    assert _decoded_frame_count(cell) == 5


def test_labelled_layout_is_what_hf_datasets_writes_and_reads(tmp_path):
    """One table for all scenes: HF datasets reads our shards back as a Video and a ClassLabel feature, rows scene after scene."""
    import datasets

    written = write_genex_db(tmp_path, "labelled", scene_types=("realistic", "anime"), videos_per_scene=3, num_frames=4, width=64, height=32, rows_per_shard=2)
    shards = sorted((tmp_path / "data").glob("*.parquet"))
    assert [p.name for p in shards] == [f"train-0000{k}-of-00003.parquet" for k in range(3)]
    assert written == {"realistic": shards[:2], "anime": shards[1:]}
    table = datasets.Dataset.from_parquet([str(p) for p in shards])
    assert table.features["label"] == datasets.ClassLabel(names=["realistic", "anime"])
    assert isinstance(table.features["video"], datasets.Video)
    assert table["label"][:] == [0, 0, 0, 1, 1, 1]
    cell = pq.read_table(shards[1]).column("video")[1].as_py()
    assert cell["path"] == "00003.mp4" and _decoded_frame_count(cell["bytes"]) == 4


def test_validation_panoramas_are_2_to_1_pngs(tmp_path):
    paths = write_validation_panoramas(tmp_path / "val", count=3, width=64, height=32, seed=5)
    assert len(paths) == 3
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (64, 32) and image.mode == "RGB"
    with pytest.raises(ValueError, match="2:1"):
        write_validation_panoramas(tmp_path / "bad", count=1, width=64, height=48)


def test_cli_writes_dataset(tmp_path):
    from genex.synthetic import main

    main(["--output_dir", str(tmp_path), "--layout", "folder", "--scene_types", "anime", "--videos_per_scene", "1", "--num_frames", "3", "--width", "32", "--height", "16", "--num_validation_panoramas", "1"])
    assert (tmp_path / "Anime" / "00000.mp4").is_file()
    assert len(list((tmp_path / "validation_panoramas").glob("*.png"))) == 1


def test_texture_scale_multiplies_the_texture_periods_and_nothing_else():
    fine, coarse = make_room(seed=4, scene_type="anime"), make_room(seed=4, scene_type="anime", texture_scale=4.0)
    assert coarse.period == pytest.approx(4.0 * fine.period)
    assert coarse.half_width == fine.half_width and coarse.front == fine.front
    np.testing.assert_array_equal(coarse.pillars, fine.pillars)
    np.testing.assert_array_equal(coarse.palette, fine.palette)
    for bad in (0.0, float("nan")):
        with pytest.raises(ValueError, match="texture_scale"):
            make_room(seed=4, texture_scale=bad)
    with pytest.raises(ValueError, match="forward step > 0"):
        render_forward_video(2, 16, 8, step=float("nan"))


def test_coarse_textures_change_less_between_neighbouring_pixels():
    # What the flag is for: at a small size fine textures alias, coarse ones stay regions of one colour.
    def neighbour_change(texture_scale):
        return np.mean([np.abs(np.diff(render_panorama(32, 16, seed=seed, scene_type="realistic", texture_scale=texture_scale).astype(int), axis=1)).mean()
                        for seed in range(4)])

    assert neighbour_change(4.0) < 0.7 * neighbour_change(1.0)


@pytest.mark.parametrize("scene_type", ["realistic", "anime"])
def test_a_coarse_long_stride_walk_still_flows_forward(scene_type):
    frames = render_forward_video(6, 128, 64, seed=3, step=0.4, scene_type=scene_type, texture_scale=4.0)
    right_dx = _median_shift(frames, slice(16, 48), slice(80, 112))[0]
    left_dx = _median_shift(frames, slice(16, 48), slice(16, 48))[0]
    assert right_dx > 0.5 and left_dx < -0.5


def test_cli_step_and_texture_scale_reach_the_videos_and_panoramas(tmp_path):
    from genex.synthetic import main

    main(["--output_dir", str(tmp_path), "--layout", "folder", "--scene_types", "realistic", "--videos_per_scene", "1", "--num_frames", "4",
          "--width", "64", "--height", "32", "--step", "0.5", "--texture_scale", "3", "--num_validation_panoramas", "1"])
    decoded = np.stack(list(iter_video_frames(tmp_path / "Realistic" / "00000.mp4"))).astype(float)
    # The first room of the realistic scene has seed 0 * 1000 + 0 * 100 + 0 = 0.
    asked = render_forward_video(4, 64, 32, seed=0, step=0.5, texture_scale=3.0).astype(float)
    default = render_forward_video(4, 64, 32, seed=0).astype(float)
    assert np.abs(decoded - asked).mean() < 0.5 * np.abs(decoded - default).mean()
    with Image.open(next((tmp_path / "validation_panoramas").glob("*.png"))) as image:
        np.testing.assert_array_equal(np.asarray(image), render_panorama(64, 32, seed=0, scene_type=SCENE_TYPES[0], texture_scale=3.0))


@pytest.mark.parametrize("flag, value", [("--step", "0"), ("--step", "-0.1"), ("--texture_scale", "0"), ("--texture_scale", "nan")])
def test_cli_refuses_a_step_or_texture_scale_that_is_not_positive_before_writing(tmp_path, capsys, flag, value):
    from genex.synthetic import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--output_dir", str(tmp_path / "out"), flag, value])
    assert exit_info.value.code == 2
    assert f"error: {flag} must be positive, got" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
