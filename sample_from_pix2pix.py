"""Predict future SSv2 frames with a trained PECN InstructPix2Pix and score them beside copying the input
and beside the target frame through the model's VAE.

    python sample_from_pix2pix.py --model_dir outputs/instruct_pix2pix_128 --num_samples all
    MODEL_DIR=outputs/instruct_pix2pix_128 NUM_SAMPLES=10 bash scripts/sample_from_pix2pix.sh

Every flag defaults to its environment variable (MODEL_DIR, FRAMES_DIR, VAL_ANNOTATIONS, OUTPUT_DIR,
INPUT_FRAME_IDX, TARGET_FRAME_IDX, NUM_SAMPLES, SEED, NUM_INFERENCE_STEPS, IMAGE_GUIDANCE_SCALE,
GUIDANCE_SCALE, PROGRESS, OVERWRITE_OUTPUT_DIR) when it is set, else to the README's default, so this
script and scripts/sample_from_pix2pix.sh behave the same. Writes under --output_dir (built in a hidden
folder beside it and renamed when complete; an earlier run there is replaced only with --overwrite_output_dir):

    predictions/<id>.png   the model's prediction of the target frame
    grids/<id>.png         [input | ground truth | prediction]
    results.json           settings, per-sample metrics, per-task / overall / progress means, skipped pairs
    results.md             the table printed at the end

Copying the input frame is a strong baseline on SSv2 (consecutive frames differ little), so every
mean is shown for the model and for the copy side by side, and for the target through the model's VAE
(encoded, posterior mode, decoded): the ceiling no prediction through that VAE can pass. PSNR of identical images is infinite:
such a value is stored as null, left out of the mean and counted in <metric>_num_inf.
"""

import argparse
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image
from tqdm.auto import tqdm

from common.cli import SetupError, add_device_argument, count_or_all, model_folder_error, resolve_device, run_cli
from common.files import atomic_folder, check_output_dir, write_atomic
from common.metrics import LpipsScorer, add_lpips_arguments, format_cell, json_safe, markdown_table, psnr, ssim, summarize
from common.training import flush_denormals
from pecn.pairs import build_pair_dataset
from pecn.predict import predict_frame, reconstruct_frame, rgb_frames
from pecn.tasks import TASK_TEMPLATES
from pecn.visualize import comparison_grid

logger = logging.getLogger("sample_from_pix2pix")

SCRIPT = "sample_from_pix2pix.py"
# model: the prediction; copy: the input frame itself; vae: the target through the model's VAE.
ROWS = ("model", "copy", "vae")
METRIC_KEYS = tuple(f"{row}_{metric}" for metric in ("psnr", "ssim", "lpips") for row in ROWS)
PSNR_SSIM_COLUMNS = tuple((f"{row} {name}", f"{row}_{metric}", decimals) for name, metric, decimals in (("PSNR", "psnr", 2), ("SSIM", "ssim", 3)) for row in ROWS)
LPIPS_COLUMNS = tuple((f"{row} LPIPS", f"{row}_lpips", 3) for row in ROWS)


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # String defaults go through each flag's type, so a bad environment value fails like a bad flag.
    parser.add_argument("--model_dir", default=env("MODEL_DIR", "outputs/instruct_pix2pix_128"), help="InstructPix2Pix pipeline folder saved by train_instruct_pix2pix.py (env MODEL_DIR).")
    parser.add_argument("--frames_dir", default=env("FRAMES_DIR", "data/sthv2/frames_128x128"), help="Frames extracted by python -m pecn.video_loader (env FRAMES_DIR).")
    parser.add_argument("--val_annotations", default=env("VAL_ANNOTATIONS", "data/sthv2/annotations/val_filtered.json"), help="Filtered validation annotations (env VAL_ANNOTATIONS).")
    parser.add_argument("--output_dir", default=env("OUTPUT_DIR", "test_result/baseline"), help="Where predictions/, grids/, results.json and results.md go (env OUTPUT_DIR).")
    parser.add_argument("--input_frame_idx", type=int, default=env("INPUT_FRAME_IDX", "20"), help="0-based input frame N (env INPUT_FRAME_IDX).")
    parser.add_argument("--target_frame_idx", type=int, default=env("TARGET_FRAME_IDX", "21"), help="0-based ground-truth frame N+T (env TARGET_FRAME_IDX).")
    parser.add_argument("--num_samples", type=count_or_all, default=env("NUM_SAMPLES", "3"), help='Pairs to predict, from the start of the file; "all" or 0 for every pair (env NUM_SAMPLES).')
    parser.add_argument("--seed", type=int, default=env("SEED", "42"), help="Sample i is drawn with seed + i, so it does not depend on --num_samples (env SEED).")
    parser.add_argument("--num_inference_steps", type=int, default=env("NUM_INFERENCE_STEPS", "20"), help="Diffusion sampling steps (env NUM_INFERENCE_STEPS).")
    parser.add_argument("--image_guidance_scale", type=float, default=env("IMAGE_GUIDANCE_SCALE", "1.5"), help="Classifier-free guidance on the input frame (env IMAGE_GUIDANCE_SCALE).")
    parser.add_argument("--guidance_scale", type=float, default=env("GUIDANCE_SCALE", "7.5"), help="Classifier-free guidance on the prompt (env GUIDANCE_SCALE).")
    parser.add_argument("--add_progress", action=argparse.BooleanOptionalAction, default=None,
                        help='Prompt with ". And <p>%% of the action has been completed.", as the model was trained (env PROGRESS=True/False/1/0, default False).')
    parser.add_argument("--overwrite_output_dir", action=argparse.BooleanOptionalAction, default=None,
                        help="Replace an earlier run of this script in --output_dir once the new run completes (env OVERWRITE_OUTPUT_DIR=True/False/1/0, default False).")
    add_lpips_arguments(parser)
    add_device_argument(parser, "fp16 on CUDA, fp32 on CPU")
    args = parser.parse_args(argv)

    for name, variable in (("add_progress", "PROGRESS"), ("overwrite_output_dir", "OVERWRITE_OUTPUT_DIR")):
        if getattr(args, name) is None:
            try:
                setattr(args, name, parse_bool(env(variable, "False")))
            except argparse.ArgumentTypeError as error:
                parser.error(f"environment variable {variable}: {error}")
    if args.num_inference_steps < 1:
        parser.error(f"--num_inference_steps must be at least 1, got {args.num_inference_steps}")
    args.device = resolve_device(parser, args.device)
    return args


def load_pipeline(model_dir: str, device: str):
    """The InstructPix2Pix pipeline of `model_dir`, fp16 on CUDA and fp32 elsewhere."""
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
    generator = torch.Generator(device=args.device).manual_seed(args.seed + index)
    return predict_frame(pipeline, example["input_image"], example["edit_prompt"], args.num_inference_steps,
                         args.image_guidance_scale, args.guidance_scale, generator)


def score(example: dict, prediction, reconstruction, lpips_scorer) -> dict:
    """Per-sample record: the model's prediction, the copied input and the VAE's reconstruction, each against the ground truth."""
    target = np.asarray(example["edited_image"].convert("RGB"))
    rows = {"model": prediction, "copy": example["input_image"], "vae": reconstruction}
    rows = {row: np.asarray(image.convert("RGB")) for row, image in rows.items()}
    record = {key: example[key] for key in ("id", "task", "label")}
    # The pair dataset writes progress -1 when the prompt has none.
    progress = example["progress"] if example["progress"] >= 0 else None
    record.update(prompt=example["edit_prompt"], num_frames=example["num_frames"], progress=progress)
    for row, image in rows.items():
        record.update({f"{row}_psnr": psnr(image, target), f"{row}_ssim": ssim(image, target)})
        if lpips_scorer is not None:
            record[f"{row}_lpips"] = lpips_scorer(image, target)
    return record


def summaries(records: list[dict], add_progress: bool) -> dict:
    """Overall, per-task and (with progress prompts) per-progress means, model, copy and vae side by side."""
    task_order = {task: i for i, task in enumerate(TASK_TEMPLATES)}
    per_task = sorted(summarize(records, METRIC_KEYS, ("task",)), key=lambda row: (task_order.get(row["task"], len(task_order)), row["task"]))
    result = {"overall": summarize(records, METRIC_KEYS)[0], "per_task": {row.pop("task"): row for row in per_task}}
    if add_progress:
        per_progress = sorted(summarize(records, METRIC_KEYS, ("progress",)), key=lambda row: row["progress"])
        result["per_progress"] = {f"{row.pop('progress')}%": row for row in per_progress}
    return result


def save_png(image, path: Path) -> None:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def metrics_table(first_column: str, rows: dict, overall: dict, columns) -> list[str]:
    """A markdown table: one row per group, then the overall row."""
    header = [first_column, "n", *(name for name, _, _ in columns)]
    return markdown_table(header, [[name, row["count"], *(format_cell(row, key, decimals) for _, key, decimals in columns)]
                                   for name, row in [*rows.items(), ("**overall**", overall)]])


def results_markdown(args, results: dict) -> str:
    columns = PSNR_SSIM_COLUMNS + (LPIPS_COLUMNS if results["lpips"]["computed"] else ())
    lines = [
        f"# PECN evaluation of {args.model_dir}",
        "",
        f"{results['overall']['count']} pairs of {args.val_annotations}, frame {args.input_frame_idx} -> {args.target_frame_idx}, "
        f"progress prompt {'on' if args.add_progress else 'off'}, seed {args.seed}, {args.num_inference_steps} steps, "
        f"image guidance {args.image_guidance_scale}, text guidance {args.guidance_scale}.",
        '"copy" predicts the input frame itself: the baseline a model has to beat. "vae" is the target frame encoded (posterior mode) and decoded '
        "by the model's VAE: the ceiling no prediction through that VAE can pass. PSNR in dB (higher is better), SSIM on RGB; \"(k inf)\": k pairs "
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
    args = parse_args(argv)
    flush_denormals()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # Output folder and data first: an earlier run, missing annotations, frames or num_frames fail before the model loads.
    replace = check_output_dir(args.output_dir, SCRIPT, args.overwrite_output_dir)
    pairs, skipped = build_pair_dataset(args.val_annotations, args.frames_dir, args.input_frame_idx, args.target_frame_idx, args.add_progress, args.num_samples)
    pipeline = load_pipeline(args.model_dir, args.device)
    lpips_scorer, lpips_reason = LpipsScorer.try_load(args.lpips_weights, args.allow_download, args.device)
    if lpips_reason:
        logger.info(lpips_reason)

    # Predict and score each pair in a hidden folder that becomes --output_dir when all is written.
    output_dir = Path(args.output_dir)
    with atomic_folder(output_dir, replace=replace) as staging:
        for folder in ("predictions", "grids"):
            (staging / folder).mkdir()
        records = []
        for index, example in enumerate(tqdm(pairs, desc="predicting", unit="pair")):
            example = rgb_frames(example)
            prediction = predict(pipeline, example, args, index)
            save_png(prediction, staging / "predictions" / f"{example['id']}.png")
            save_png(comparison_grid([example["input_image"], example["edited_image"], prediction]), staging / "grids" / f"{example['id']}.png")
            records.append(score(example, prediction, reconstruct_frame(pipeline.vae, example["edited_image"]), lpips_scorer))

        # Results: JSON for programs, markdown for people.
        results = {
            "script": SCRIPT,
            "settings": dict(vars(args), num_samples="all" if args.num_samples is None else args.num_samples),
            "notes": "copy_*: the input frame taken as the prediction; vae_*: the target frame encoded (posterior mode) and decoded by the model's VAE. "
                     "An infinite PSNR (identical images) is null, left out of means and counted in <metric>_num_inf.",
            "lpips": {"computed": lpips_scorer is not None, "reason": lpips_reason},
            "skipped": skipped,
            **summaries(records, args.add_progress),
            "samples": records,
        }
        write_atomic(staging / "results.json", (json.dumps(json_safe(results), indent=1, allow_nan=False) + "\n").encode())
        markdown = results_markdown(args, results)
        write_atomic(staging / "results.md", markdown.encode())
    print(markdown)
    print(f"Outputs in {output_dir}: predictions/ and grids/ ({len(records)} [input | ground truth | prediction] PNGs), results.json, results.md")


if __name__ == "__main__":
    run_cli(main)
