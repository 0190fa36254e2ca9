import math
import statistics
import sys
import types

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pecn import metrics


def smooth_image(rng, height, width):
    """A natural-looking image: blurred noise stretched to the full uint8 range."""
    image = gaussian_filter(rng.normal(size=(height, width, 3)), sigma=(3, 3, 0))
    image = (image - image.min()) / (image.max() - image.min())
    return (255 * image).astype(np.uint8)


def image_pairs():
    rng = np.random.default_rng(0)
    scene = smooth_image(rng, 64, 64)
    wide = smooth_image(rng, 96, 128)
    noisy = np.clip(scene + rng.normal(0, 20, scene.shape), 0, 255).astype(np.uint8)
    return {
        "random": (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        "shifted": (scene, np.roll(scene, 3, axis=1)),
        "noisy": (noisy, scene),
        "constant": (np.full((32, 32, 3), 40, np.uint8), np.full((32, 32, 3), 200, np.uint8)),
        "constant_vs_scene": (np.full((64, 64, 3), 128, np.uint8), scene),
        "non_square_128x96": (wide, np.clip(wide.astype(int) + 9, 0, 255).astype(np.uint8)),
        "window_sized": (scene[:7, :7], noisy[:7, :7]),
    }


@pytest.mark.parametrize("name", list(image_pairs()))
def test_psnr_and_ssim_match_scikit_image(name):
    prediction, target = image_pairs()[name]
    assert metrics.psnr(prediction, target) == pytest.approx(peak_signal_noise_ratio(target, prediction, data_range=255), rel=1e-12)
    reference_ssim = structural_similarity(prediction, target, channel_axis=-1, data_range=255)
    assert metrics.ssim(prediction, target) == pytest.approx(reference_ssim, abs=1e-12)


def test_identical_images():
    image = image_pairs()["shifted"][0]
    assert metrics.psnr(image, image.copy()) == math.inf
    assert metrics.ssim(image, image.copy()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "prediction, message",
    [
        (np.zeros((16, 16, 3), np.float32), "uint8"),
        (np.zeros((16, 16), np.uint8), "RGB"),
        (np.zeros((16, 12, 3), np.uint8), "differ in shape"),
    ],
)
def test_bad_images_are_errors(prediction, message):
    with pytest.raises(ValueError, match=message):
        metrics.psnr(prediction, np.zeros((16, 16, 3), np.uint8))


def test_images_smaller_than_the_window_are_errors():
    with pytest.raises(ValueError, match="7x7 SSIM window"):
        metrics.ssim(np.zeros((6, 16, 3), np.uint8), np.zeros((6, 16, 3), np.uint8))


def test_lpips_unavailable_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)
    scorer, reason = metrics.LpipsScorer.try_load()
    assert scorer is None
    assert reason.startswith("LPIPS not computed:") and "lpips" in reason


class FakeLpips(torch.nn.Module):
    """Stands in for lpips.LPIPS: records its arguments, scores mean absolute difference."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, prediction, target):
        assert prediction.shape[:2] == (1, 3) and -1 <= prediction.min() and prediction.max() <= 1
        return (prediction - target).abs().mean(dim=(1, 2, 3), keepdim=True)


@pytest.fixture
def fake_lpips(monkeypatch, tmp_path):
    package = tmp_path / "lpips"
    module = types.ModuleType("lpips")
    module.__file__ = str(package / "__init__.py")
    module.LPIPS = FakeLpips
    monkeypatch.setitem(sys.modules, "lpips", module)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path


def test_lpips_needs_local_backbone_weights(fake_lpips):
    scorer, reason = metrics.LpipsScorer.try_load()
    assert scorer is None
    assert reason.startswith("LPIPS not computed:") and metrics.ALEXNET_CHECKPOINT in reason


def test_lpips_needs_local_linear_weights(fake_lpips):
    (fake_lpips / "hub" / "checkpoints").mkdir(parents=True)
    (fake_lpips / "hub" / "checkpoints" / metrics.ALEXNET_CHECKPOINT).touch()
    scorer, reason = metrics.LpipsScorer.try_load(weights_path=fake_lpips / "missing.pth")
    assert scorer is None and "missing.pth" in reason


def test_lpips_scores_when_weights_are_local(fake_lpips):
    (fake_lpips / "hub" / "checkpoints").mkdir(parents=True)
    (fake_lpips / "hub" / "checkpoints" / metrics.ALEXNET_CHECKPOINT).touch()
    linear = fake_lpips / "lpips" / "weights" / "v0.1" / "alex.pth"
    linear.parent.mkdir(parents=True)
    linear.touch()
    scorer, reason = metrics.LpipsScorer.try_load()
    assert scorer is not None and reason == ""
    assert scorer.model.kwargs["net"] == "alex" and scorer.model.kwargs["model_path"] == str(linear)
    prediction, target = image_pairs()["noisy"]
    expected = np.abs(prediction.astype(float) - target.astype(float)).mean() / 127.5
    assert scorer(prediction, target) == pytest.approx(expected, rel=1e-5)


RECORDS = [
    {"id": "1", "task": "move_object", "progress": 60, "model_psnr": 20.0, "model_ssim": 0.5, "copy_psnr": 25.0, "copy_ssim": 0.8},
    {"id": "2", "task": "drop_object", "progress": 60, "model_psnr": 18.0, "model_ssim": 0.4, "copy_psnr": 22.0, "copy_ssim": 0.7},
    {"id": "3", "task": "move_object", "progress": 30, "model_psnr": 23.0, "model_ssim": 0.7, "copy_psnr": math.inf, "copy_ssim": 1.0},
]


def test_summarize_groups_and_skips_infinite_psnr():
    rows = metrics.summarize(RECORDS, group_keys=("task",))
    assert [row["task"] for row in rows] == ["move_object", "drop_object"]
    move = rows[0]
    assert move["count"] == 2
    assert move["model_psnr"] == pytest.approx(statistics.mean([20.0, 23.0]))
    assert move["copy_psnr"] == pytest.approx(25.0) and move["copy_psnr_num_inf"] == 1
    assert move["copy_ssim"] == pytest.approx(statistics.mean([0.8, 1.0])) and move["copy_ssim_num_inf"] == 0
    assert "model_lpips" not in move


def test_summarize_overall_and_by_two_keys():
    (overall,) = metrics.summarize(RECORDS)
    assert overall["count"] == 3 and overall["model_ssim"] == pytest.approx(statistics.mean([0.5, 0.4, 0.7]))
    rows = metrics.summarize(RECORDS, group_keys=("task", "progress"))
    assert [(row["task"], row["progress"], row["count"]) for row in rows] == [
        ("move_object", 60, 1), ("drop_object", 60, 1), ("move_object", 30, 1)
    ]


def test_summarize_missing_group_key_is_an_error():
    with pytest.raises(ValueError, match="record 1 lacks the group keys"):
        metrics.summarize(RECORDS, group_keys=("scene",))
