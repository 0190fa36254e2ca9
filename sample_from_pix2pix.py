"""Predict future SSv2 frames with a trained PECN InstructPix2Pix and score them beside copying the input.

    python sample_from_pix2pix.py --model_dir outputs/instruct_pix2pix_128 --num_samples all
    MODEL_DIR=outputs/instruct_pix2pix_128 NUM_SAMPLES=10 bash scripts/sample_from_pix2pix.sh

Every flag defaults to its environment variable (MODEL_DIR, FRAMES_DIR, VAL_ANNOTATIONS, OUTPUT_DIR,
INPUT_FRAME_IDX, TARGET_FRAME_IDX, NUM_SAMPLES, SEED, NUM_INFERENCE_STEPS, IMAGE_GUIDANCE_SCALE,
GUIDANCE_SCALE, PROGRESS) when it is set, else to the README's default, so this script and
scripts/sample_from_pix2pix.sh behave the same. Writes under --output_dir:

    predictions/<id>.png   the model's prediction of the target frame
    grids/<id>.png         [input | ground truth | prediction]
    results.json           settings, per-sample metrics, per-task / overall / progress means, skipped pairs
    results.md             the table printed at the end

Copying the input frame is a strong baseline on SSv2 (consecutive frames differ little), so every
mean is shown for the model and for the copy side by side. PSNR of identical images is infinite:
such a value is stored as null, left out of the mean and counted in <metric>_num_inf.
"""

import argparse
import io
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from common.files import write_atomic
from common.cli import SetupError, model_folder_error, run_cli
from common.training import flush_denormals

logger = logging.getLogger("sample_from_pix2pix")

PSNR_SSIM_COLUMNS = (("model PSNR", "model_psnr", 2), ("copy PSNR", "copy_psnr", 2), ("model SSIM", "model_ssim", 3), ("copy SSIM", "copy_ssim", 3))
LPIPS_COLUMNS = (("model LPIPS", "model_lpips", 3), ("copy LPIPS", "copy_lpips", 3))


def env(name: str, default: str) -> str:
    """The environment variable when set and non-empty (as bash's ${NAME:-default}), else the default."""
    return os.environ.get(name) or default


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True/False/1/0, got {text!r}")


def parse_num_samples(text: str):
    """A positive count, or "all" / 0 for every pair of the annotation file (None)."""
    if text.strip().lower() in ("all", "0"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a count or "all", got {text!r}') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'expected a count >= 0 or "all", got {value}')
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # String defaults go through each flag's type, so a bad environment value fails like a bad flag.
    parser.add_argument("--model_dir", default=env("MODEL_DIR", "outputs/instruct_pix2pix_128"), help="InstructPix2Pix pipeline folder saved by train_instruct_pix2pix.py (env MODEL_DIR).")
    parser.add_argument("--frames_dir", default=env("FRAMES_DIR", "data/sthv2/frames_128x128"), help="Frames extracted by python -m pecn.video_loader (env FRAMES_DIR).")
    parser.add_argument("--val_annotations", default=env("VAL_ANNOTATIONS", "data/sthv2/annotations/val_filtered.json"), help="Filtered validation annotations (env VAL_ANNOTATIONS).")
    parser.add_argument("--output_dir", default=env("OUTPUT_DIR", "test_result/baseline"), help="Where predictions/, grids/, results.json and results.md go (env OUTPUT_DIR).")
    parser.add_argument("--input_frame_idx", type=int, default=env("INPUT_FRAME_IDX", "20"), help="0-based input frame N (env INPUT_FRAME_IDX).")
    parser.add_argument("--target_frame_idx", type=int, default=env("TARGET_FRAME_IDX", "21"), help="0-based ground-truth frame N+T (env TARGET_FRAME_IDX).")
    parser.add_argument("--num_samples", type=parse_num_samples, default=env("NUM_SAMPLES", "3"), help='Pairs to predict, from the start of the file; "all" or 0 for every pair (env NUM_SAMPLES).')
    parser.add_argument("--seed", type=int, default=env("SEED", "42"), help="Sample i is drawn with seed + i, so it does not depend on --num_samples (env SEED).")
    parser.add_argument("--num_inference_steps", type=int, default=env("NUM_INFERENCE_STEPS", "20"), help="Diffusion sampling steps (env NUM_INFERENCE_STEPS).")
    parser.add_argument("--image_guidance_scale", type=float, default=env("IMAGE_GUIDANCE_SCALE", "1.5"), help="Classifier-free guidance on the input frame (env IMAGE_GUIDANCE_SCALE).")
    parser.add_argument("--guidance_scale", type=float, default=env("GUIDANCE_SCALE", "7.5"), help="Classifier-free guidance on the prompt (env GUIDANCE_SCALE).")
    parser.add_argument("--add_progress", action=argparse.BooleanOptionalAction, default=None,
                        help='Prompt with ". And <p>%% of the action has been completed.", as the model was trained (env PROGRESS=True/False/1/0, default False).')
    parser.add_argument("--device", default=None, help="Torch device; default cuda when available, else cpu (fp16 on CUDA, fp32 on CPU).")
    args = parser.parse_args(argv)

    if args.add_progress is None:
        try:
            args.add_progress = parse_bool(env("PROGRESS", "False"))
        except argparse.ArgumentTypeError as error:
            parser.error(f"environment variable PROGRESS: {error}")
    if args.num_inference_steps < 1:
        parser.error(f"--num_inference_steps must be at least 1, got {args.num_inference_steps}")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    return args


def load_pipeline(model_dir: str, device: str):
    """The InstructPix2Pix pipeline of `model_dir`, fp16 on CUDA and fp32 elsewhere."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    # A local folder is checked first, so a typo is not sent to the hub as a model id.
    folder = Path(model_dir)
    if not folder.is_dir():
        raise SetupError(f"{model_dir}: model folder not found (train one with train_instruct_pix2pix.py, or set MODEL_DIR)")
    if not (folder / "model_index.json").is_file():
        hint = " (a checkpoint-<step> folder is for resuming training; use the training --output_dir)" if folder.name.startswith("checkpoint-") else ""
        raise SetupError(f"{model_dir}: not an InstructPix2Pix pipeline folder, no model_index.json{hint}")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            folder, dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    except (OSError, ValueError, TypeError) as error:
        raise model_folder_error(model_dir, error, "InstructPix2Pix") from None
    # A text-to-image folder loads too, but its 4-channel UNet cannot take the input-image latents.
    if pipeline.unet.config.in_channels != 8:
        raise SetupError(f"{model_dir}: UNet has {pipeline.unet.config.in_channels} input channels, an InstructPix2Pix UNet has 8 (noisy + input-image latents)")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def predict(pipeline, example: dict, args, index: int):
    """One prediction, drawn with its own generator (seed + index), so it does not depend on the samples before it."""
    from pecn.predict import predict_frame

    generator = torch.Generator(device=args.device).manual_seed(args.seed + index)
    return predict_frame(pipeline, example["input_image"], example["edit_prompt"], args.num_inference_steps,
                         args.image_guidance_scale, args.guidance_scale, generator)


def score(example: dict, prediction, lpips_scorer) -> dict:
    """Per-sample record: the model's prediction and the copied input, each against the ground truth."""
    from pecn.metrics import psnr, ssim

    source, target, predicted = (np.asarray(image.convert("RGB")) for image in (example["input_image"], example["edited_image"], prediction))
    record = {key: example[key] for key in ("id", "task", "label")}
    # The pair dataset writes progress -1 when the prompt has none.
    progress = example["progress"] if example["progress"] >= 0 else None
    record.update(prompt=example["edit_prompt"], num_frames=example["num_frames"], progress=progress)
    record.update(model_psnr=psnr(predicted, target), copy_psnr=psnr(source, target), model_ssim=ssim(predicted, target), copy_ssim=ssim(source, target))
    if lpips_scorer is not None:
        record.update(model_lpips=lpips_scorer(predicted, target), copy_lpips=lpips_scorer(source, target))
    return record


def summaries(records: list[dict], add_progress: bool) -> dict:
    """Overall, per-task and (with progress prompts) per-progress means, model and copy side by side."""
    from pecn.metrics import summarize
    from pecn.tasks import TASK_TEMPLATES

    task_order = {task: i for i, task in enumerate(TASK_TEMPLATES)}
    per_task = sorted(summarize(records, ("task",)), key=lambda row: (task_order.get(row["task"], len(task_order)), row["task"]))
    result = {"overall": summarize(records)[0], "per_task": {row.pop("task"): row for row in per_task}}
    if add_progress:
        per_progress = sorted(summarize(records, ("progress",)), key=lambda row: row["progress"])
        result["per_progress"] = {f"{row.pop('progress')}%": row for row in per_progress}
    return result


def json_safe(value):
    """Strict JSON: infinite or undefined floats become null (their count is in <metric>_num_inf)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def save_png(image, path: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def format_cell(row: dict, key: str, decimals: int) -> str:
    """The mean over finite values, then how many were infinite (identical images); "inf" when all were."""
    value, num_inf = row.get(key, math.nan), row.get(f"{key}_num_inf", 0)
    if num_inf == row["count"]:
        return "inf"
    text = f"{value:.{decimals}f}" if math.isfinite(value) else "n/a"
    return f"{text} ({num_inf} inf)" if num_inf else text


def metrics_table(first_column: str, rows: dict, overall: dict, columns) -> list[str]:
    """A markdown table: one row per group, then the overall row."""
    lines = [f"| {first_column} | n | " + " | ".join(name for name, _, _ in columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for name, row in [*rows.items(), ("**overall**", overall)]:
        lines.append(f"| {name} | {row['count']} | " + " | ".join(format_cell(row, key, decimals) for _, key, decimals in columns) + " |")
    return lines


def results_markdown(args, results: dict) -> str:
    columns = PSNR_SSIM_COLUMNS + (LPIPS_COLUMNS if results["lpips"]["computed"] else ())
    lines = [
        f"# PECN evaluation of {args.model_dir}",
        "",
        f"{results['overall']['count']} pairs of {args.val_annotations}, frame {args.input_frame_idx} -> {args.target_frame_idx}, "
        f"progress prompt {'on' if args.add_progress else 'off'}, seed {args.seed}, {args.num_inference_steps} steps, "
        f"image guidance {args.image_guidance_scale}, text guidance {args.guidance_scale}.",
        '"copy" predicts the input frame itself: the baseline a model has to beat. PSNR in dB (higher is better), SSIM on RGB; "(k inf)": k pairs '
        "with identical images (infinite PSNR), left out of the mean.",
        "",
        *metrics_table("task", results["per_task"], results["overall"], columns),
    ]
    if "per_progress" in results:
        lines += ["", *metrics_table("progress", results["per_progress"], results["overall"], columns)]
    skipped = ", ".join(f"{reason}: {count}" for reason, count in results["skipped"].items() if count) or "none"
    lines += ["", f"Videos of the annotation file with no pair: {skipped}.", results["lpips"]["reason"] or "LPIPS computed (AlexNet, lower is better)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    from pecn.metrics import LpipsScorer
    from pecn.pairs import build_pair_dataset
    from pecn.predict import rgb_frames
    from pecn.visualize import comparison_grid

    args = parse_args(argv)
    flush_denormals()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # Data first: missing annotations, frames or num_frames fail before the model loads.
    pairs, skipped = build_pair_dataset(args.val_annotations, args.frames_dir, args.input_frame_idx, args.target_frame_idx, args.add_progress, args.num_samples)
    pipeline = load_pipeline(args.model_dir, args.device)
    lpips_scorer, lpips_reason = LpipsScorer.try_load(device=args.device)
    if lpips_reason:
        logger.info(lpips_reason)

    # Predict and score each pair; predictions and grids are written as they come.
    output_dir = Path(args.output_dir)
    for folder in ("predictions", "grids"):
        (output_dir / folder).mkdir(parents=True, exist_ok=True)
    records = []
    for index, example in enumerate(tqdm(pairs, desc="predicting", unit="pair")):
        example = rgb_frames(example)
        prediction = predict(pipeline, example, args, index)
        save_png(prediction, output_dir / "predictions" / f"{example['id']}.png")
        save_png(comparison_grid([example["input_image"], example["edited_image"], prediction]), output_dir / "grids" / f"{example['id']}.png")
        records.append(score(example, prediction, lpips_scorer))

    # Results: JSON for programs, markdown for people, both replaced atomically.
    results = {
        "settings": dict(vars(args), num_samples="all" if args.num_samples is None else args.num_samples),
        "notes": 'copy_*: the input frame taken as the prediction. An infinite PSNR (identical images) is null, left out of means and counted in <metric>_num_inf.',
        "lpips": {"computed": lpips_scorer is not None, "reason": lpips_reason},
        "skipped": skipped,
        **summaries(records, args.add_progress),
        "samples": records,
    }
    write_atomic(output_dir / "results.json", (json.dumps(json_safe(results), indent=1, allow_nan=False) + "\n").encode())
    markdown = results_markdown(args, results)
    write_atomic(output_dir / "results.md", markdown.encode())
    print(markdown)
    print(f"Outputs in {output_dir}: predictions/ and grids/ ({len(records)} [input | ground truth | prediction] PNGs), results.json, results.md")


if __name__ == "__main__":
    run_cli(main)
