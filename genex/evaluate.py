"""GenEx-Explorer evaluation: exploration videos generated from held-out Genex-DB first frames, scored
against the frames that follow.

Rows, on the same videos: `model` (the pipeline under test), `base` (a second pipeline, e.g. the untuned
SVD, when given), `copy` (frame 1 for every frame: a model that does not move, the bar to beat) and `vae`
(frames 1..F through the model's VAE: the ceiling of any generation through that VAE). PSNR, SSIM and
LPIPS per frame, averaged over frames 2..F of a video (frame 1 is the input), then over videos, per
scene type and overall; FVD over all videos. Motion: how far each frame of a row is from the row's own
frame 1 (copy's is 0, vae's the ground truth's own motion as its VAE shows it): whether a row moves as
much as the scene does, which PSNR against the truth cannot tell from hedging (grain that changes from
frame to frame counts too: the side-by-side videos tell the two apart). Loop consistency: forward F
frames, turn 180 degrees, forward F frames, turn back; the last frame against frame 1.
"""

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from common.metrics import FVD_NUM_FRAMES, finite_mean, format_cell, fvd, markdown_table, psnr, ssim, summarize
from common.pixels import to_model_range
from genex.data import find_frame_folders, load_frame, window_starts
from genex.generate import explore_path
from genex.spherical import rotate_yaw, scl_encode

GENERATED_ROWS = ("model", "base")
FRAME_METRICS = ("psnr", "ssim", "lpips", "motion")
LOOP_METRICS = ("psnr", "ssim", "lpips", "latent_mse")
LOOP_TURN = 180.0
METRIC_NAMES = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "motion": "motion", "fvd": "FVD", "latent_mse": "latent MSE"}
DECIMALS = {"psnr": 2, "ssim": 3, "lpips": 3, "motion": 1, "fvd": 1, "latent_mse": 4}


@dataclass(frozen=True)
class HeldOutVideo:
    """A held-out frame folder: its path under --base_folder, its scene type and its first F consecutive frames."""

    id: str
    scene: str
    index: int  # position among all frame folders under --base_folder: the offset of its seed
    frames: tuple


def scene_type(base_folder: Path, folder: Path) -> str:
    """The folder's parent under the base folder (realistic, anime, ...); the base folder's name for a video directly in it."""
    parent = folder.relative_to(base_folder).parent
    return parent.as_posix() if parent != Path(".") else base_folder.resolve().name


def held_out_videos(base_folder, num_frames: int) -> tuple[list[HeldOutVideo], list[dict]]:
    """Every frame folder under `base_folder` with its first run of `num_frames` consecutively numbered frames,
    found as the training data loader finds them; the folders without such a run, as skipped records."""
    base = Path(base_folder)
    if not base.is_dir():
        raise ValueError(f"{base}: --base_folder is not a folder")
    folders = find_frame_folders(base)
    if not folders:
        raise ValueError(f"{base}: no folder of frame images under --base_folder")
    videos, skipped = [], []
    for index, (folder, frames) in enumerate(folders.items()):
        name = folder.relative_to(base).as_posix()
        starts = window_starts(frames, num_frames)
        if not starts:
            skipped.append({"video": name, "reason": f"no {num_frames} consecutively numbered frames (frames found: {len(frames)})"})
            continue
        videos.append(HeldOutVideo(name, scene_type(base, folder), index, tuple(frames[starts[0] : starts[0] + num_frames])))
    if not videos:
        raise ValueError(f"{base}: no frame folder has --num_frames={num_frames} consecutively numbered frames ({len(folders)} folders)")
    return videos, skipped


def read_clips(videos: list[HeldOutVideo], width: int, height: int, limit: Optional[int], skipped: list) -> Iterator[tuple[HeldOutVideo, np.ndarray]]:
    """(video, frames uint8 [F,H,W,3]) of the first `limit` readable videos (all when None), read and resized as in training.

    A video with an unreadable frame is appended to `skipped` and the next one is read in its place.
    """
    read = 0
    for video in videos:
        if limit is not None and read >= limit:
            return
        try:
            clip = np.stack([load_frame(path, width, height) for path in video.frames])
        except OSError as error:
            skipped.append({"video": video.id, "reason": str(error)})
            continue
        read += 1
        yield video, clip


def loop_segments(num_frames: int) -> list[tuple[float, int]]:
    """The turn-around path: forward `num_frames` frames, turn 180 degrees, forward `num_frames` frames."""
    return [(0.0, num_frames), (LOOP_TURN, num_frames)]


def explore_with_loop(pipeline, first_frame: np.ndarray, num_frames: int, generation: dict, generator=None) -> tuple[np.ndarray, np.ndarray]:
    """(the video [F,H,W,3] walked from `first_frame`, the loop's end: the turn-around path's last frame turned back).

    The path's first segment does not turn, so it is the video itself: one path gives both.
    """
    path = explore_path(pipeline, Image.fromarray(first_frame), loop_segments(num_frames), generator=generator, **generation)
    return path[:num_frames], rotate_yaw(path[-1], -LOOP_TURN, width_axis=1)


def copy_video(clip: np.ndarray) -> np.ndarray:
    """The copy baseline: frame 1 for every frame."""
    return np.repeat(clip[:1], len(clip), axis=0)


def motion_from_first_frame(video: np.ndarray) -> list[float]:
    """Mean absolute difference of every frame of a uint8 video [F,H,W,3] from its frame 1, in 0-255 levels."""
    frames = video.astype(np.float64)
    return [float(np.abs(frame - frames[0]).mean()) for frame in frames]


def frame_scores(video: np.ndarray, real: np.ndarray, lpips_scorer=None) -> dict[str, list[float]]:
    """PSNR, SSIM (and LPIPS) of every frame of `video` against the same frame of `real`, and its motion from its own frame 1."""
    scores = {"psnr": [psnr(v, r) for v, r in zip(video, real)], "ssim": [ssim(v, r) for v, r in zip(video, real)]}
    if lpips_scorer is not None:
        scores["lpips"] = [lpips_scorer(v, r) for v, r in zip(video, real)]
    scores["motion"] = motion_from_first_frame(video)
    return scores


@torch.no_grad()
def loop_scores(end: np.ndarray, start: np.ndarray, vae, lpips_scorer=None) -> dict[str, float]:
    """The loop's end against its start: PSNR, SSIM, (LPIPS) and the MSE of their scaled VAE latents (posterior mode)."""
    scores = {"psnr": psnr(end, start), "ssim": ssim(end, start)}
    if lpips_scorer is not None:
        scores["lpips"] = lpips_scorer(end, start)
    pixels = to_model_range(torch.from_numpy(np.stack([start, end])).permute(0, 3, 1, 2))[None].to(vae.device, vae.dtype)
    latents = scl_encode(vae, pixels, chunk_size=2, gradient_checkpointing=False)[0]
    scores["latent_mse"] = float(((latents[1] - latents[0]) ** 2).mean())
    return scores


def video_record(video: HeldOutVideo, per_frame: dict[str, dict], loop: dict[str, dict]) -> dict:
    """One video's results: per row and metric the mean over frames 2..F, the loop scores, and the per-frame values."""
    record = {"id": video.id, "scene": video.scene}
    for row, scores in per_frame.items():
        for metric, values in scores.items():
            record[f"{row}_{metric}"], num_inf = finite_mean(values[1:])
            if num_inf:
                record[f"{row}_{metric}_infinite_frames"] = num_inf
    for row, scores in loop.items():
        record.update({f"loop_{row}_{metric}": value for metric, value in scores.items()})
    record["frames"] = per_frame
    return record


def by_row(summary: dict, rows, metrics, prefix: str = "") -> dict[str, dict]:
    """A summarize() row of `<prefix><row>_<metric>` keys regrouped as {row: {count, metric, metric_num_inf}}."""
    grouped = {}
    for row in rows:
        entry = {"count": summary["count"]}
        for metric in metrics:
            key = f"{prefix}{row}_{metric}"
            if key in summary:
                entry[metric], entry[f"{metric}_num_inf"] = summary[key], summary[f"{key}_num_inf"]
        grouped[row] = entry
    return grouped


def mean_curves(records: list[dict], rows) -> dict[str, dict[str, list[float]]]:
    """Per row and metric, the mean over videos of each frame's value (frame 1 included): error against distance."""
    curves = {}
    for row in rows:
        metrics = records[0]["frames"][row]
        curves[row] = {metric: [finite_mean([r["frames"][row][metric][t] for r in records])[0] for t in range(len(values))]
                       for metric, values in metrics.items()}
    return curves


def fvd_clip(frames: np.ndarray) -> np.ndarray:
    """The clip FVD scores of a video: its first FVD_NUM_FRAMES frames, as a batch of one [1,T,H,W,3]."""
    return frames[None, :FVD_NUM_FRAMES]


def fvd_scores(features: dict[str, list]) -> dict[str, float]:
    """FVD of each row's clips against the real clips, from their I3D features (key "real" for the ground truth)."""
    real = np.concatenate(features["real"])
    return {row: fvd(real, np.concatenate(rows)) for row, rows in features.items() if row != "real"}


def fvd_unavailable(i3d_reason: str, num_frames: int) -> str:
    """Why FVD cannot be computed before any video is generated ("" when it can)."""
    if i3d_reason:
        return i3d_reason
    if num_frames < FVD_NUM_FRAMES:
        return f"FVD not computed: StyleGAN-V's FVD takes clips of {FVD_NUM_FRAMES} frames, --num_frames is {num_frames}"
    return ""


def summarize_results(records: list[dict], rows, fvd_values: Optional[dict]) -> dict:
    """overall, per_scene and loop means, and the per-frame curves, of the per-video records."""
    keys = [f"{row}_{metric}" for row in rows for metric in FRAME_METRICS]
    overall = by_row(summarize(records, keys)[0], rows, FRAME_METRICS)
    for row, value in (fvd_values or {}).items():
        overall[row]["fvd"] = value
    per_scene = {summary.pop("scene"): by_row(summary, rows, FRAME_METRICS) for summary in summarize(records, keys, ("scene",))}
    loop_rows = [row for row in GENERATED_ROWS if row in rows]
    loop_keys = [f"loop_{row}_{metric}" for row in loop_rows for metric in LOOP_METRICS]
    loop = by_row(summarize(records, loop_keys)[0], loop_rows, LOOP_METRICS, prefix="loop_")
    return {"overall": overall, "per_scene": per_scene, "loop": loop, "curves": mean_curves(records, rows)}


def metric_cells(entry: dict, metrics) -> list[str]:
    return [format_cell(entry, metric, DECIMALS[metric]) for metric in metrics]


def results_markdown(results: dict) -> str:
    """The tables of results.md: overall, per scene type, loop consistency, then what was skipped or not computed."""
    settings, rows = results["settings"], results["rows"]
    scored_metrics = ["psnr", "ssim"] + (["lpips"] if results["lpips"]["computed"] else [])
    frame_metrics = scored_metrics + ["motion"]
    overall_metrics = frame_metrics + (["fvd"] if results["fvd"]["computed"] else [])
    loop_metrics = scored_metrics + ["latent_mse"]
    num_videos = results["overall"][rows[0]]["count"]
    lines = [
        f"# GenEx-Explorer evaluation of {settings['model_dir']}",
        "",
        f"{num_videos} held-out videos of {settings['base_folder']}, {settings['num_frames']} frames at {settings['width']}x{settings['height']}, "
        f"seed {settings['seed']}, {settings['num_inference_steps']} steps, fps {settings['fps']}, motion bucket {settings['motion_bucket_id']}"
        + (f"; base: {settings['base_model_dir']}." if settings["base_model_dir"] else "."),
        "Rows: model = the pipeline above; " + ("base = the base pipeline; " if "base" in rows else "")
        + "copy = frame 1 for every frame (a model that does not move: the bar to beat); vae = the ground truth through the model's VAE "
        "(posterior mode, decoded): the ceiling of any generation through that VAE. PSNR in dB and SSIM: higher is better, mean over "
        "frames 2..F of a video, then over videos; LPIPS and FVD: lower is better. motion: mean absolute change of a frame from the row's "
        "own frame 1 (0-255), over frames 2..F: copy's is 0, vae's is the ground truth's own motion; a row that walks moves about as much as vae "
        "(grain that changes from frame to frame counts too: videos/ shows which it is).",
        "",
        "## Overall",
        "",
        *markdown_table(["row", "n", *(METRIC_NAMES[m] for m in overall_metrics)],
                        [[row, entry["count"], *metric_cells(entry, overall_metrics)] for row, entry in results["overall"].items()]),
        "",
        "## Per scene type",
        "",
        *markdown_table(["scene", "row", "n", *(METRIC_NAMES[m] for m in frame_metrics)],
                        [[scene, row, entry["count"], *metric_cells(entry, frame_metrics)]
                         for scene, per_row in results["per_scene"].items() for row, entry in per_row.items()]),
        "",
        f"## Loop consistency (forward {settings['num_frames']} frames, turn 180°, forward {settings['num_frames']}, turn back: the last frame against frame 1)",
        "",
        *markdown_table(["row", "n", *(METRIC_NAMES[m] for m in loop_metrics)],
                        [[row, entry["count"], *metric_cells(entry, loop_metrics)] for row, entry in results["loop"].items()]),
        "",
    ]
    skipped = results["skipped"]
    shown = "; ".join(f"{s['video']} ({s['reason']})" for s in skipped[:10]) + (f"; ... ({len(skipped) - 10} more)" if len(skipped) > 10 else "")
    lines += [f"Skipped folders: {len(skipped)}" + (f": {shown}." if skipped else "."),
              results["lpips"]["reason"] or "LPIPS: AlexNet (lpips package).",
              results["fvd"]["reason"] or f"FVD: StyleGAN-V's I3D on the first {FVD_NUM_FRAMES} frames of every video, against the same frames of the ground truth."]
    return "\n".join(lines) + "\n"


def curves_png(curves: dict[str, dict[str, list[float]]]) -> bytes:
    """A PNG of each metric against the frame index, one line per row (Agg backend, no display needed)."""
    metrics = list(next(iter(curves.values())))
    figure = Figure(figsize=(5 * len(metrics), 3.6))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for axis, metric in zip(axes, metrics):
        for row, series in curves.items():
            # Infinite PSNR (identical frames, e.g. copy's frame 1) is a gap in the line.
            values = [value if value is not None and math.isfinite(value) else math.nan for value in series[metric]]
            axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=row)
        axis.set_xlabel("frame")
        axis.set_ylabel(METRIC_NAMES[metric])
        axis.set_title(f"{METRIC_NAMES[metric]} per frame, mean over videos")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def side_by_side(videos) -> np.ndarray:
    """Videos [F,H,W,3] of the same size next to each other, left to right: [F,H,n*W,3]."""
    return np.concatenate(videos, axis=2)


def video_file_name(video: HeldOutVideo) -> str:
    """The side-by-side mp4's name: the folder's path under --base_folder, flattened."""
    return video.id.replace("/", "__") + ".mp4"
