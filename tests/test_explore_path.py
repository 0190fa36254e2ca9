"""Exploration paths (genex.generate.explore_path) and sample_world_explorer.py --trajectory, which uses them."""

from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from PIL import Image

import sample_world_explorer
from genex.generate import explore_path, parse_trajectory
from genex.tiny import save_tiny_svd_pipeline

WIDTH, HEIGHT = 64, 32
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_svd_pipeline(tmp_path_factory.mktemp("svd") / "model")


class RecordingPipeline:
    """Stands in for the SVD pipeline: records each conditioning image, returns it darkening frame by frame."""

    def __init__(self):
        self.conditions = []

    def __call__(self, image, height, width, num_frames, output_type, **kwargs):
        self.conditions.append(np.asarray(image))
        base = np.asarray(image, dtype=np.float64) / 255
        return SimpleNamespace(frames=[np.stack([base * (1 - 0.1 * t) for t in range(num_frames)])])


def test_explore_path_turns_and_walks_from_each_segments_last_frame():
    panorama = Image.fromarray(np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    pipeline = RecordingPipeline()
    path = explore_path(pipeline, panorama, [(90.0, 3), (180.0, 2), (0.0, 4)], WIDTH, HEIGHT, 7, 127, 1, 8)
    assert path.shape == (9, HEIGHT, WIDTH, 3) and path.dtype == np.uint8
    # Segment 1 starts from the panorama turned by 90 degrees: a roll of a quarter of the width.
    np.testing.assert_array_equal(pipeline.conditions[0], np.roll(np.asarray(panorama), WIDTH // 4, axis=1))
    # Later segments start from the last frame of the one before, turned by their yaw.
    np.testing.assert_array_equal(pipeline.conditions[1], np.roll(path[2], WIDTH // 2, axis=1))
    np.testing.assert_array_equal(pipeline.conditions[2], path[4])
    # Every segment keeps its first frame (the turned view): segment 2's first frame is its conditioning image.
    np.testing.assert_array_equal(path[3], pipeline.conditions[1])


def test_sampler_trajectory_writes_the_whole_path(model_dir, tmp_path):
    panorama = tmp_path / "pano.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(panorama)
    out = tmp_path / "path.mp4"
    sample_world_explorer.main(["--model_dir", str(model_dir), "--panorama", str(panorama), "--output", str(out), "--width", str(WIDTH),
                                "--height", str(HEIGHT), "--num_inference_steps", "1", "--trajectory", "0:2,180:3", "--device", "cpu"])
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5


def test_trajectory_flags(capsys):
    base = ["--model_dir", "m", "--panorama", "p.png", "--output", "o.mp4"]
    assert sample_world_explorer.parse_args(base).segments == [(0.0, 25)]
    assert sample_world_explorer.parse_args([*base, "--yaw", "90", "--num_frames", "9"]).segments == [(90.0, 9)]
    assert sample_world_explorer.parse_args([*base, "--trajectory", "0:25, -45.5:10"]).segments == [(0.0, 25), (-45.5, 10)]
    for extra, message in ((["--trajectory", "0:25", "--yaw", "90"], "--trajectory and --yaw"),
                           (["--trajectory", "0:25", "--num_frames", "9"], "--trajectory and --num_frames"),
                           (["--trajectory", "0:25,180"], "'180' is not yaw:frames"),
                           (["--trajectory", "0:0"], "'0:0' is not yaw:frames")):
        with pytest.raises(SystemExit):
            sample_world_explorer.parse_args([*base, *extra])
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in error and "error:" in error, error
    assert parse_trajectory("0:25,180:25") == [(0.0, 25), (180.0, 25)]


@pytest.mark.parametrize("flag", ["--num_frames", "--num_inference_steps", "--width", "--decode_chunk_size"])
def test_sampler_counts_below_one_are_one_line_errors_before_the_model_loads(flag, tmp_path, capsys):
    import sample_world_explorer
    from conftest import one_line_error

    argv = ["--model_dir", str(tmp_path / "no_model"), "--panorama", str(tmp_path / "pano.png"), "--output", str(tmp_path / "walk.mp4"), flag, "0"]
    assert one_line_error(sample_world_explorer.main, argv, capsys) == f"error: {flag} must be at least 1, got 0"


def test_a_mistyped_model_folder_is_named_before_the_settings_line(tmp_path, capsys):
    """The settings line would show SVD-xt's 1024x576 defaults for a folder that does not exist (found by a newcomer's typo)."""
    import sample_world_explorer
    from conftest import one_line_error

    missing = tmp_path / "genex_explore"
    argv = ["--model_dir", str(missing), "--panorama", str(tmp_path / "pano.png"), "--output", str(tmp_path / "walk.mp4")]
    assert one_line_error(sample_world_explorer.main, argv, capsys) == f"error: --model_dir {missing}: folder does not exist"
