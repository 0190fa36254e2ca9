"""Score GenEx-Explorer exploration videos against held-out Genex-DB frame folders, beside the base model,
copying frame 1 and the VAE's reconstruction, with loop consistency over a turn-around path.

    python evaluate_world_explorer.py --model_dir ./models/genex_explorer_v1 --base_folder ./Genex-DB-heldout \\
        --base_model_dir stabilityai/stable-video-diffusion-img2vid-xt-1-1 --output_dir ./evaluation/genex_explorer_v1
    MODEL_DIR=./models/genex_explorer_v1 BASE_FOLDER=./Genex-DB-heldout bash scripts/evaluate_world_explorer.sh

Each held-out video is the first --num_frames consecutively numbered frames of a folder (as
prepare_dataset.py writes them), read and resized as training reads them; frame 1 conditions the
generation, which is compared frame by frame with frames 1..F. Writes into --output_dir (built in a
hidden folder beside it and renamed when complete; an earlier run there is replaced only with
--overwrite_output_dir):

    results.json   settings, overall / per_scene / per_video / loop results, per-frame curves, skipped folders
    results.md     the tables printed at the end
    curves.png     PSNR, SSIM (and LPIPS) and motion against the frame index, one line per row
    videos/<scene>__<video>.mp4   [ground truth | model | base | copy] side by side
"""

import argparse
import json
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from common.cli import add_device_argument, count_or_all, resolve_device, run_cli
from common.files import atomic_folder, check_output_dir, write_atomic
from common.metrics import I3DFeatures, LpipsScorer, add_lpips_arguments, json_safe
from common.pixels import vae_reconstruction
from common.training import flush_denormals, require_at_least
from common.video import write_mp4
from genex import evaluate
from genex.models import check_svd_fits, load_svd_pipeline, sampling_settings

logger = logging.getLogger("evaluate_world_explorer")

SCRIPT = "evaluate_world_explorer.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="The StableVideoDiffusionPipeline folder to evaluate (e.g. train_world_explorer.py's --output_dir).")
    parser.add_argument("--base_model_dir", default=None, help="A second pipeline scored on the same videos (row `base`), e.g. the untuned SVD.")
    parser.add_argument("--base_folder", required=True, help="Held-out frame folders, as prepare_dataset.py writes them (<scene>/video_XXXXX/frame_XXXX.jpg; nested scenes allowed).")
    parser.add_argument("--num_videos", type=count_or_all, default="all", help='Videos to evaluate, in folder order: a count, or "all".')
    trained = "default: what --model_dir was trained at, else"
    parser.add_argument("--num_frames", type=int, default=None, help=f"Frames per video F: frames 1..F of each folder, and the frames generated ({trained} 25).")
    parser.add_argument("--width", type=int, default=None, help=f"Width frames are resized to and videos generated at ({trained} 1024).")
    parser.add_argument("--height", type=int, default=None, help=f"Height frames are resized to and videos generated at ({trained} 576).")
    parser.add_argument("--num_inference_steps", type=int, default=25, help="Sampling steps.")
    parser.add_argument("--fps", type=int, default=None, help=f"Frame rate: the conditioning value (the UNet sees fps - 1, as in training) and the mp4s' rate ({trained} 7).")
    parser.add_argument("--motion_bucket_id", type=int, default=None, help=f"Motion bucket id conditioning ({trained} 127).")
    parser.add_argument("--seed", type=int, default=42, help="Video i (its position among the frame folders) is generated with seed + i, by every pipeline.")
    parser.add_argument("--decode_chunk_size", type=int, default=8, help="Frames decoded at once by the VAE, in generation and in the vae row.")
    add_device_argument(parser, "fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--output_dir", default="evaluation/genex_explorer", help="Where the results go.")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="Replace an earlier run of this script in --output_dir once the new run completes.")
    add_lpips_arguments(parser)
    parser.add_argument("--i3d_path", default=None, help="StyleGAN-V's TorchScript I3D (i3d_torchscript.pt) for FVD; without it FVD is reported as not computed.")
    args = parser.parse_args(argv)
    # The model is evaluated as it was trained; the base model at the same settings, on the same videos.
    vars(args).update(sampling_settings(args.model_dir, width=args.width, height=args.height, num_frames=args.num_frames,
                                        fps=args.fps, motion_bucket_id=args.motion_bucket_id))
    if args.num_frames < 2:
        parser.error(f"--num_frames must be at least 2 (frame 1 is the input; frames 2..F are scored), got {args.num_frames}")
    require_at_least(args, 1, "width", "height", "num_inference_steps", "decode_chunk_size", "fps")
    require_at_least(args, 0, "motion_bucket_id")
    if args.i3d_path is not None and not Path(args.i3d_path).is_file():
        parser.error(f"--i3d_path {args.i3d_path}: file not found")
    args.device = resolve_device(parser, args.device)
    return args


def main(argv=None):
    args = parse_args(argv)
    flush_denormals()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # Output folder and data first: an earlier run, or no usable held-out folder, fail before any model loads.
    replace = check_output_dir(args.output_dir, SCRIPT, args.overwrite_output_dir)
    videos, skipped = evaluate.held_out_videos(args.base_folder, args.num_frames)
    pipelines = {"model": args.model_dir, "base": args.base_model_dir}
    pipelines = {row: load_svd_pipeline(folder, args.device) for row, folder in pipelines.items() if folder}
    for row, pipeline in pipelines.items():
        check_svd_fits(pipeline.vae, pipeline.unet, args.model_dir if row == "model" else args.base_model_dir, args.width, args.height)
        pipeline.set_progress_bar_config(disable=True)
    vae = pipelines["model"].vae
    lpips_scorer, lpips_reason = LpipsScorer.try_load(args.lpips_weights, args.allow_download, args.device)
    i3d, fvd_reason = I3DFeatures.try_load(args.i3d_path, args.device)
    fvd_reason = evaluate.fvd_unavailable(fvd_reason, args.num_frames)
    for reason in (lpips_reason, fvd_reason):
        if reason:
            logger.info(reason)
    rows = [*pipelines, "copy", "vae"]
    generation = dict(width=args.width, height=args.height, fps=args.fps, motion_bucket_id=args.motion_bucket_id,
                      num_inference_steps=args.num_inference_steps, decode_chunk_size=args.decode_chunk_size)

    output_dir = Path(args.output_dir)
    with atomic_folder(output_dir, replace=replace) as staging:
        records, features = [], {row: [] for row in ["real", *rows]}
        total = len(videos) if args.num_videos is None else min(args.num_videos, len(videos))
        clips = evaluate.read_clips(videos, args.width, args.height, args.num_videos, skipped)
        for video, clip in tqdm(clips, total=total, desc="evaluating", unit="video"):
            # Every pipeline walks the turn-around path from frame 1 with the video's own seed; its first segment is the video.
            generated, loop_ends = {}, {}
            for row, pipeline in pipelines.items():
                generator = torch.Generator(device=args.device).manual_seed(args.seed + video.index)
                generated[row], loop_ends[row] = evaluate.explore_with_loop(pipeline, clip[0], args.num_frames, generation, generator)
            generated["copy"] = evaluate.copy_video(clip)
            generated["vae"] = vae_reconstruction(vae, clip, args.decode_chunk_size)

            # Score every row frame by frame, and each loop's end against frame 1.
            per_frame = {row: evaluate.frame_scores(generated[row], clip, lpips_scorer) for row in rows}
            loop = {row: evaluate.loop_scores(end, clip[0], vae, lpips_scorer) for row, end in loop_ends.items()}
            records.append(evaluate.video_record(video, per_frame, loop))
            if not fvd_reason:
                for row, frames in [("real", clip), *generated.items()]:
                    features[row].append(i3d(evaluate.fvd_clip(frames)))
            write_mp4(evaluate.side_by_side([clip, *(generated[row] for row in rows if row != "vae")]),
                      staging / "videos" / evaluate.video_file_name(video), fps=args.fps)
        if not records:
            raise ValueError(f"{args.base_folder}: no held-out video could be read ({len(skipped)} folders skipped, e.g. {skipped[0]['video']}: {skipped[0]['reason']})")

        # FVD compares distributions: it needs two clips per row for a covariance.
        if not fvd_reason and len(records) < 2:
            fvd_reason = f"FVD not computed: it needs at least 2 videos per row for a covariance, {len(records)} was evaluated"
        results = {
            "script": SCRIPT,
            "settings": dict(vars(args), num_videos="all" if args.num_videos is None else args.num_videos),
            "rows": rows,
            "notes": "copy: frame 1 for every frame; vae: frames 1..F through the model's VAE (posterior mode, decoded in chunks of "
                     "--decode_chunk_size). Per video: the mean over frames 2..F; an infinite PSNR (identical frames) is null, left out of "
                     "means and counted in <metric>_num_inf. loop: the turn-around path's last frame, turned back, against frame 1; "
                     "latent_mse on the model VAE's scaled posterior modes.",
            "lpips": {"computed": lpips_scorer is not None, "reason": lpips_reason},
            "fvd": {"computed": not fvd_reason, "reason": fvd_reason, "num_frames": evaluate.FVD_NUM_FRAMES},
            **evaluate.summarize_results(records, rows, None if fvd_reason else evaluate.fvd_scores(features)),
            "per_video": records,
            "skipped": skipped,
        }
        write_atomic(staging / "results.json", (json.dumps(json_safe(results), indent=1, allow_nan=False) + "\n").encode())
        markdown = evaluate.results_markdown(results)
        write_atomic(staging / "results.md", markdown.encode())
        write_atomic(staging / "curves.png", evaluate.curves_png(results["curves"]))
    print(markdown)
    print(f"Outputs in {output_dir}: results.json, results.md, curves.png, videos/ ({len(records)} side-by-side mp4s: "
          f"[{' | '.join(['ground truth', *(row for row in rows if row != 'vae')])}])")


if __name__ == "__main__":
    run_cli(main)
