"""Metrics of both pipelines: PSNR, SSIM and LPIPS on RGB uint8 images [H,W,3] (data range 255), the
Fréchet distance and FVD's I3D features for videos, and the per-group summary and table cells.

PSNR of identical images is infinite (as in scikit-image); means leave infinite values out and count
them in `<metric>_num_inf`, so one perfect frame cannot turn a mean into inf. SSIM follows
scikit-image's defaults. LPIPS and FVD run only when their networks are on disk: nothing is
downloaded unless the caller allows it (LPIPS) or points at the file (FVD's I3D).
"""

import functools
import math
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

# The ImageNet AlexNet checkpoint torchvision downloads for lpips.LPIPS(net="alex"), under <torch hub>/checkpoints/.
ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"

# StyleGAN-V's FVD (src/metrics/frechet_video_distance.py, fvd2048_16f): clips of 16 consecutive frames,
# uint8 [B,3,T,H,W] in [0, 255]; the TorchScript I3D rescales them to [-1, 1], resizes them to 224x224
# and returns its 400 features before the softmax.
FVD_NUM_FRAMES = 16
I3D_KWARGS = dict(rescale=True, resize=True, return_features=True)


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
    def try_load(cls, weights_dir=None, allow_download: bool = False, device: str = "cpu") -> tuple[Optional["LpipsScorer"], str]:
        """(scorer, "") when LPIPS can run, else (None, "LPIPS not computed: <why>"); never raises.

        `weights_dir` is a torch hub folder whose checkpoints/ holds the AlexNet backbone (default: the
        torch hub cache); the linear layers ship with the lpips package. `allow_download` lets
        torchvision fetch a missing backbone into that folder.
        """
        try:
            import lpips
        except ImportError as error:
            return None, f"LPIPS not computed: the lpips package (which needs torchvision) cannot be imported ({error})"
        hub_dir = Path(weights_dir) if weights_dir is not None else Path(torch.hub.get_dir())
        backbone = hub_dir / "checkpoints" / ALEXNET_CHECKPOINT
        if not backbone.is_file() and not allow_download:
            return None, (f"LPIPS not computed: AlexNet backbone weights {backbone} are not on disk "
                          "(nothing is downloaded unless --allow_download; or pass --lpips_weights DIR holding checkpoints/" + ALEXNET_CHECKPOINT + ")")
        linear = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
        if not linear.is_file():
            return None, f"LPIPS not computed: LPIPS linear-layer weights {linear} are not on disk (reinstall the lpips package)"
        # torchvision reads (and with allow_download, writes) the backbone under the torch hub folder.
        previous_hub_dir = torch.hub.get_dir()
        torch.hub.set_dir(str(hub_dir))
        try:
            model = lpips.LPIPS(pretrained=True, net="alex", model_path=str(linear), verbose=False)
        except Exception as error:
            return None, f"LPIPS not computed: loading the AlexNet LPIPS model failed ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        finally:
            torch.hub.set_dir(previous_hub_dir)
        return cls(model, device), ""

    def __call__(self, prediction, target) -> float:
        prediction, target = check_image_pair(prediction, target)
        with torch.no_grad():
            distance = self.model(to_lpips_input(prediction, self.device), to_lpips_input(target, self.device))
        return float(distance.mean())


def add_lpips_arguments(parser) -> None:
    """The LPIPS flags of both evaluations: where its weights are, and whether it may fetch them."""
    parser.add_argument("--lpips_weights", default=None, metavar="DIR",
                        help=f"Torch hub folder whose checkpoints/ holds torchvision's AlexNet ({ALEXNET_CHECKPOINT}) for LPIPS; default the torch hub cache. "
                             "Without the weights there, LPIPS is reported as not computed.")
    parser.add_argument("--allow_download", action="store_true",
                        help="Let the lpips package (with torchvision) download the AlexNet weights once into that folder; nothing is downloaded otherwise.")


def to_lpips_input(image: np.ndarray, device: str) -> torch.Tensor:
    """uint8 [H,W,3] to the [1,3,H,W] tensor in [-1, 1] that LPIPS expects."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(device)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D,D] of features [N,D], normalised by N as StyleGAN-V's FeatureStats does."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need features [N,D] with N >= 2 for a covariance, got shape {features.shape}")
    mu = features.mean(axis=0)
    centred = features - mu
    return mu, centred.T @ centred / len(features)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of two Gaussians: |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    Tr((sigma1 sigma2)^(1/2)) = Tr((A sigma2 A)^(1/2)) with A = sigma1^(1/2): the square roots of the
    eigenvalues of a symmetric positive semi-definite matrix, so no complex round-off is left to discard.
    """
    mu1, mu2, sigma1, sigma2 = (np.asarray(x, dtype=np.float64) for x in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"means {mu1.shape}, {mu2.shape} and covariances {sigma1.shape}, {sigma2.shape} do not match")
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root1 @ sigma2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


def fvd(real_features, generated_features) -> float:
    """Fréchet video distance between the I3D features [N,D] of real and of generated clips."""
    return frechet_distance(*feature_statistics(generated_features), *feature_statistics(real_features))


class I3DFeatures:
    """StyleGAN-V's TorchScript I3D (i3d_torchscript.pt), called as its FVD calls it: features [B,400] of clips."""

    def __init__(self, model, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.device = device

    @classmethod
    def try_load(cls, path, device: str = "cpu") -> tuple[Optional["I3DFeatures"], str]:
        """(extractor, "") when `path` loads as TorchScript, else (None, "FVD not computed: <why>"); never raises."""
        if path is None:
            return None, "FVD not computed: no --i3d_path given (StyleGAN-V's TorchScript I3D, i3d_torchscript.pt)"
        try:
            model = torch.jit.load(str(path), map_location=device)
        except Exception as error:
            return None, f"FVD not computed: {path}: not a TorchScript I3D ({str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__})"
        return cls(model, device), ""

    def __call__(self, clips) -> np.ndarray:
        """Features [B,D] float64 of uint8 clips [B,T,H,W,3]."""
        clips = np.asarray(clips)
        if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"clips must be uint8 [B,T,H,W,3], got {clips.dtype} {clips.shape}")
        # [B,T,H,W,3] -> [B,3,T,H,W], the layout StyleGAN-V hands to the detector.
        videos = torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 4, 1, 2, 3).contiguous().to(self.device)
        with torch.no_grad():
            features = self.model(videos, **I3D_KWARGS)
        return features.double().cpu().numpy()


def finite_mean(values) -> tuple[float, int]:
    """(mean of the finite values, number of infinite ones); the mean is inf when all are inf, nan when there are none."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    num_inf = int(np.isinf(values).sum())
    if finite.size:
        return float(finite.mean()), num_inf
    return (math.inf if num_inf else math.nan), num_inf


def summarize(records: list[dict], metric_keys, group_keys=()) -> list[dict]:
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
            row[key], row[f"{key}_num_inf"] = finite_mean([record[key] for record in members if key in record])
            # A mean over no finite value is reported as missing, not as a number.
            if math.isinf(row[key]):
                row[key] = math.nan
        rows.append(row)
    return rows


def json_safe(value):
    """Strict JSON: infinite or undefined floats become null (their count is in <metric>_num_inf)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def format_cell(row: dict, key: str, decimals: int) -> str:
    """The mean over finite values, then how many were infinite (identical images); "inf" when all were."""
    value, num_inf = row.get(key, math.nan), row.get(f"{key}_num_inf", 0)
    if value is None:
        value = math.nan
    if num_inf and num_inf == row.get("count"):
        return "inf"
    text = f"{value:.{decimals}f}" if math.isfinite(value) else "n/a"
    return f"{text} ({num_inf} inf)" if num_inf else text


def markdown_table(header, rows) -> list[str]:
    """Lines of a markdown table; the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
