"""Frame prediction metrics on RGB uint8 images [H,W,3] (data range 255), and their per-group summary.

PSNR of identical images is infinite (as in scikit-image); `summarize` averages the finite
values and counts the infinite ones in `<metric>_num_inf`, so one perfect frame cannot
turn a mean into inf. SSIM follows scikit-image's defaults. LPIPS is computed only when
the `lpips` package and its weights are already on disk: nothing is downloaded.
"""

import functools
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from scipy.ndimage import uniform_filter

DATA_RANGE = 255.0
SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# The ImageNet AlexNet checkpoint torchvision would download for lpips.LPIPS(net="alex").
ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"

METRIC_KEYS = ("model_psnr", "copy_psnr", "model_ssim", "copy_ssim", "model_lpips", "copy_lpips")


def check_image_pair(prediction, target) -> tuple[np.ndarray, np.ndarray]:
    """Both as uint8 [H,W,3] arrays of the same shape, at least as large as the SSIM window."""
    prediction, target = np.asarray(prediction), np.asarray(target)
    for name, image in (("prediction", prediction), ("target", target)):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name} must be an RGB uint8 image [H,W,3], got {image.dtype} {image.shape}")
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    if min(prediction.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"images {prediction.shape} are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window")
    return prediction, target


def psnr(prediction, target) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels; inf for identical images."""
    prediction, target = check_image_pair(prediction, target)
    mse = np.mean((prediction.astype(np.float64) - target.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else float(10 * np.log10(DATA_RANGE**2 / mse))


def ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM of one float64 channel: 7x7 uniform window, sample covariance, valid area only."""
    mean = functools.partial(uniform_filter, size=SSIM_WINDOW)
    mu_x, mu_y = mean(x), mean(y)
    # Unbiased (N-1) covariances, as scikit-image's use_sample_covariance=True.
    cov_norm = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    var_x = cov_norm * (mean(x * x) - mu_x * mu_x)
    var_y = cov_norm * (mean(y * y) - mu_y * mu_y)
    cov_xy = cov_norm * (mean(x * y) - mu_x * mu_y)
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    # Wang et al. 2004, eq. 13.
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    # Only windows that lie wholly inside the image count.
    pad = SSIM_WINDOW // 2
    return float(ssim_map[pad:-pad, pad:-pad].mean(dtype=np.float64))


def ssim(prediction, target) -> float:
    """Structural similarity, mean over channels; equals skimage's structural_similarity(channel_axis=-1, data_range=255)."""
    prediction, target = check_image_pair(prediction, target)
    prediction, target = prediction.astype(np.float64), target.astype(np.float64)
    return float(np.mean([ssim_channel(prediction[..., c], target[..., c]) for c in range(prediction.shape[2])]))


class LpipsScorer:
    """LPIPS (AlexNet) distance between two RGB uint8 images; lower is closer."""

    def __init__(self, model, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.device = device

    @classmethod
    def try_load(cls, weights_path=None, device: str = "cpu") -> tuple[Optional["LpipsScorer"], str]:
        """(scorer, "") when lpips, torchvision and all weights are on disk, else (None, "LPIPS not computed: <why>")."""
        try:
            import lpips
        except ImportError as error:
            return None, f"LPIPS not computed: the lpips package (which needs torchvision) cannot be imported ({error})"
        backbone = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT
        if not backbone.is_file():
            return None, f"LPIPS not computed: AlexNet backbone weights {backbone} are not on disk (nothing is downloaded)"
        linear = Path(weights_path or Path(os.path.dirname(lpips.__file__)) / "weights" / "v0.1" / "alex.pth")
        if not linear.is_file():
            return None, f"LPIPS not computed: LPIPS linear-layer weights {linear} are not on disk"
        model = lpips.LPIPS(pretrained=True, net="alex", model_path=str(linear), verbose=False)
        return cls(model, device), ""

    def __call__(self, prediction, target) -> float:
        prediction, target = check_image_pair(prediction, target)
        with torch.no_grad():
            distance = self.model(to_lpips_input(prediction, self.device), to_lpips_input(target, self.device))
        return float(distance.mean())


def to_lpips_input(image: np.ndarray, device: str) -> torch.Tensor:
    """uint8 [H,W,3] to the [1,3,H,W] tensor in [-1, 1] that LPIPS expects."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(device)


def summarize(records: list[dict], group_keys=(), metric_keys=METRIC_KEYS) -> list[dict]:
    """Per group of `group_keys` values (in order of first appearance): count and the mean of each metric present."""
    present = [key for key in metric_keys if any(key in record for record in records)]
    groups = defaultdict(list)
    for record in records:
        missing = [key for key in group_keys if key not in record]
        if missing:
            raise ValueError(f"record {record.get('id', '?')} lacks the group keys {missing}")
        groups[tuple(record[key] for key in group_keys)].append(record)
    rows = []
    for group_values, members in groups.items():
        row = dict(zip(group_keys, group_values), count=len(members))
        for key in present:
            values = np.array([record[key] for record in members if key in record], dtype=np.float64)
            finite = values[np.isfinite(values)]
            row[key] = float(finite.mean()) if finite.size else math.nan
            row[f"{key}_num_inf"] = int(np.isinf(values).sum())
        rows.append(row)
    return rows
