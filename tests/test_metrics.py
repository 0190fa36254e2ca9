"""common.metrics against independent references: scikit-image for PSNR/SSIM, scipy's sqrtm and closed forms
for the Fréchet distance; LPIPS and I3D through stand-ins (torchvision cannot run here), checking the plumbing."""

import math
import statistics
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from common import metrics


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
    """Stands in for lpips.LPIPS: records its arguments and the torch hub folder it was built under, scores mean absolute difference."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs
        self.hub_dir = torch.hub.get_dir()

    def forward(self, prediction, target):
        assert prediction.shape[:2] == (1, 3) and -1 <= prediction.min() and prediction.max() <= 1
        return (prediction - target).abs().mean(dim=(1, 2, 3), keepdim=True)


@pytest.fixture
def fake_lpips(monkeypatch, tmp_path):
    """A fake lpips package shipping its linear weights, and a default torch hub folder under tmp_path."""
    package = tmp_path / "lpips"
    module = types.ModuleType("lpips")
    module.__file__ = str(package / "__init__.py")
    module.LPIPS = FakeLpips
    linear = package / "weights" / "v0.1" / "alex.pth"
    linear.parent.mkdir(parents=True)
    linear.touch()
    monkeypatch.setitem(sys.modules, "lpips", module)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path


def put_backbone(hub_dir):
    (hub_dir / "checkpoints").mkdir(parents=True)
    (hub_dir / "checkpoints" / metrics.ALEXNET_CHECKPOINT).touch()


def test_lpips_needs_local_backbone_weights(fake_lpips):
    scorer, reason = metrics.LpipsScorer.try_load()
    assert scorer is None
    assert reason.startswith("LPIPS not computed:") and metrics.ALEXNET_CHECKPOINT in reason and "--allow_download" in reason


def test_lpips_needs_the_packages_linear_weights(fake_lpips):
    put_backbone(fake_lpips / "hub")
    (fake_lpips / "lpips" / "weights" / "v0.1" / "alex.pth").unlink()
    scorer, reason = metrics.LpipsScorer.try_load()
    assert scorer is None and "alex.pth" in reason


def test_lpips_scores_when_weights_are_in_the_default_hub(fake_lpips):
    put_backbone(fake_lpips / "hub")
    scorer, reason = metrics.LpipsScorer.try_load()
    assert scorer is not None and reason == ""
    linear = fake_lpips / "lpips" / "weights" / "v0.1" / "alex.pth"
    assert scorer.model.kwargs["net"] == "alex" and scorer.model.kwargs["model_path"] == str(linear)
    prediction, target = image_pairs()["noisy"]
    expected = np.abs(prediction.astype(float) - target.astype(float)).mean() / 127.5
    assert scorer(prediction, target) == pytest.approx(expected, rel=1e-5)


def test_lpips_weights_dir_is_the_hub_while_building_then_restored(fake_lpips):
    weights = fake_lpips / "my_weights"
    put_backbone(weights)
    scorer, reason = metrics.LpipsScorer.try_load(weights_dir=weights)
    assert reason == "" and scorer.model.hub_dir == str(weights)
    assert torch.hub.get_dir() == str(fake_lpips / "hub")
    # The same folder without the backbone is named in the reason.
    scorer, reason = metrics.LpipsScorer.try_load(weights_dir=fake_lpips / "empty")
    assert scorer is None and str(fake_lpips / "empty" / "checkpoints" / metrics.ALEXNET_CHECKPOINT) in reason


def test_lpips_allow_download_builds_without_the_backbone_on_disk(fake_lpips):
    scorer, reason = metrics.LpipsScorer.try_load(allow_download=True)
    assert reason == "" and scorer.model.hub_dir == str(fake_lpips / "hub")


def test_lpips_that_fails_to_build_is_a_reason_not_a_crash(fake_lpips, monkeypatch):
    def no_network(**kwargs):
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(sys.modules["lpips"], "LPIPS", no_network)
    scorer, reason = metrics.LpipsScorer.try_load(allow_download=True)
    assert scorer is None and reason.startswith("LPIPS not computed:") and "name resolution" in reason
    assert torch.hub.get_dir() == str(fake_lpips / "hub")


def gaussian_features(rng, mean, covariance, count):
    return rng.multivariate_normal(mean, covariance, size=count)


def random_covariance(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def scipy_frechet(mu1, sigma1, mu2, sigma2):
    """The textbook formula with scipy's general matrix square root (as StyleGAN-V computes it)."""
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * root.real))


def test_feature_statistics_are_the_population_mean_and_covariance():
    features = np.random.default_rng(1).normal(size=(50, 4))
    mu, sigma = metrics.feature_statistics(features)
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False, bias=True), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.feature_statistics(features[:1])


@pytest.mark.parametrize("dim", [1, 5, 32])
def test_frechet_distance_matches_scipy_sqrtm_on_random_gaussian_features(dim):
    rng = np.random.default_rng(dim)
    real = gaussian_features(rng, rng.normal(size=dim), random_covariance(rng, dim), 400)
    fake = gaussian_features(rng, rng.normal(size=dim), random_covariance(rng, dim), 300)
    stats_real, stats_fake = metrics.feature_statistics(real), metrics.feature_statistics(fake)
    expected = scipy_frechet(*stats_fake, *stats_real)
    assert metrics.frechet_distance(*stats_fake, *stats_real) == pytest.approx(expected, rel=1e-8)
    assert metrics.fvd(real, fake) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_samples_approaches_the_distance_of_their_gaussians():
    rng = np.random.default_rng(7)
    mu1, mu2 = np.zeros(3), np.array([1.0, -2.0, 0.5])
    sigma1, sigma2 = random_covariance(rng, 3), random_covariance(rng, 3)
    population = scipy_frechet(mu1, sigma1, mu2, sigma2)
    samples = metrics.fvd(gaussian_features(rng, mu1, sigma1, 200_000), gaussian_features(rng, mu2, sigma2, 200_000))
    assert samples == pytest.approx(population, rel=0.02)


def test_frechet_distance_closed_forms():
    # Diagonal covariances: |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([3.0, 1.0, -2.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = 9 + 0 + 16 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0.5) ** 2
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # A scaled covariance k^2 S: (1 - k)^2 tr(S); the same Gaussian: 0.
    sigma = random_covariance(np.random.default_rng(3), 6)
    assert metrics.frechet_distance(np.zeros(6), sigma, np.zeros(6), 9 * sigma) == pytest.approx(4 * np.trace(sigma), rel=1e-10)
    assert metrics.frechet_distance(np.ones(6), sigma, np.ones(6), sigma) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="do not match"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


class FakeI3D(torch.nn.Module):
    """Stands in for StyleGAN-V's TorchScript I3D: checks the call, returns each channel's mean per frame."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        assert rescale and resize and return_features, "called without StyleGAN-V's detector kwargs"
        assert x.dtype == torch.uint8, "clips must reach the detector as uint8"
        return (x.float() / 127.5 - 1).mean(dim=(3, 4)).flatten(1)


def test_i3d_without_a_path_or_with_a_broken_file_is_a_reason(tmp_path):
    extractor, reason = metrics.I3DFeatures.try_load(None)
    assert extractor is None and reason.startswith("FVD not computed:") and "--i3d_path" in reason
    broken = tmp_path / "i3d_torchscript.pt"
    broken.write_bytes(b"not a torchscript archive")
    extractor, reason = metrics.I3DFeatures.try_load(broken)
    assert extractor is None and reason.startswith("FVD not computed:") and str(broken) in reason


def test_i3d_gets_clips_as_stylegan_v_feeds_them(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(FakeI3D()).save(str(path))
    extractor, reason = metrics.I3DFeatures.try_load(path)
    assert reason == ""
    clips = np.random.default_rng(0).integers(0, 256, (2, 4, 8, 10, 3), dtype=np.uint8)  # [B,T,H,W,3]
    features = extractor(clips)
    # [B,3,T] per-channel frame means, computed here from the [B,T,H,W,3] layout.
    expected = (clips / 127.5 - 1).mean(axis=(2, 3)).transpose(0, 2, 1).reshape(2, -1)
    assert features.shape == (2, 12) and features.dtype == np.float64
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        extractor(clips.astype(np.float32))


def test_finite_mean_leaves_out_and_counts_infinite_values():
    assert metrics.finite_mean([1.0, math.inf, 3.0]) == (2.0, 1)
    assert metrics.finite_mean([math.inf, math.inf]) == (math.inf, 2)
    mean, num_inf = metrics.finite_mean([])
    assert math.isnan(mean) and num_inf == 0


RECORDS = [
    {"id": "1", "task": "move_object", "progress": 60, "model_psnr": 20.0, "model_ssim": 0.5, "copy_psnr": 25.0, "copy_ssim": 0.8},
    {"id": "2", "task": "drop_object", "progress": 60, "model_psnr": 18.0, "model_ssim": 0.4, "copy_psnr": 22.0, "copy_ssim": 0.7},
    {"id": "3", "task": "move_object", "progress": 30, "model_psnr": 23.0, "model_ssim": 0.7, "copy_psnr": math.inf, "copy_ssim": 1.0},
]
KEYS = ("model_psnr", "copy_psnr", "model_ssim", "copy_ssim", "model_lpips")


def test_summarize_groups_and_skips_infinite_psnr():
    rows = metrics.summarize(RECORDS, KEYS, group_keys=("task",))
    assert [row["task"] for row in rows] == ["move_object", "drop_object"]
    move = rows[0]
    assert move["count"] == 2
    assert move["model_psnr"] == pytest.approx(statistics.mean([20.0, 23.0]))
    assert move["copy_psnr"] == pytest.approx(25.0) and move["copy_psnr_num_inf"] == 1
    assert move["copy_ssim"] == pytest.approx(statistics.mean([0.8, 1.0])) and move["copy_ssim_num_inf"] == 0
    assert "model_lpips" not in move


def test_summarize_overall_and_by_two_keys():
    (overall,) = metrics.summarize(RECORDS, KEYS)
    assert overall["count"] == 3 and overall["model_ssim"] == pytest.approx(statistics.mean([0.5, 0.4, 0.7]))
    rows = metrics.summarize(RECORDS, KEYS, group_keys=("task", "progress"))
    assert [(row["task"], row["progress"], row["count"]) for row in rows] == [
        ("move_object", 60, 1), ("drop_object", 60, 1), ("move_object", 30, 1)
    ]


def test_summarize_missing_group_key_is_an_error():
    with pytest.raises(ValueError, match="record 1 lacks the group keys"):
        metrics.summarize(RECORDS, KEYS, group_keys=("scene",))


def test_summarize_all_infinite_is_nan_counted_and_shown_as_inf():
    records = [{"id": "1", "copy_psnr": math.inf}, {"id": "2", "copy_psnr": math.inf}]
    (row,) = metrics.summarize(records, ("copy_psnr",))
    assert math.isnan(row["copy_psnr"]) and row["copy_psnr_num_inf"] == 2
    assert metrics.format_cell(row, "copy_psnr", 2) == "inf"
    assert metrics.format_cell({"count": 3, "x": 21.456, "x_num_inf": 1}, "x", 2) == "21.46 (1 inf)"


def test_json_safe_and_markdown_table():
    assert metrics.json_safe({"a": [1.0, math.inf, math.nan], "b": "x"}) == {"a": [1.0, None, None], "b": "x"}
    assert metrics.markdown_table(["row", "n"], [["model", 2]]) == ["| row | n |", "|---|---:|", "| model | 2 |"]
