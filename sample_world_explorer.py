"""Generate a video that walks forward into a panorama with a (fine-tuned) SVD pipeline.

    python sample_world_explorer.py --model_dir ./models/genex_explorer --panorama pano.png --output out.mp4
    python sample_world_explorer.py ... --trajectory "0:25,180:25"    # walk 25 frames, turn around, walk 25 more

The panorama is resized to the model's resolution, the video is generated, then written at the
panorama's own aspect ratio (2:1 for an equirectangular panorama). Resolution, frame count, fps and
motion bucket default to what the model was trained at (recorded by train_world_explorer.py), else to
SVD-xt's 1024x576, 25 frames, fps 7, motion bucket 127. A trajectory is a path of segments yaw:frames:
each turns the current view by yaw degrees and walks forward from the last frame of the segment
before; the mp4 holds the whole path (the frames of all segments).
"""

import argparse
import logging
from pathlib import Path

import torch

from common.cli import SetupError, add_device_argument, is_missing_folder, resolve_device, run_cli
from common.files import check_writable
from common.training import flush_denormals, require_at_least
from common.video import write_mp4
from genex.generate import explore_path, load_rgb, parse_trajectory, resize_frames
from genex.models import check_svd_fits, load_svd_pipeline, sampling_settings

logger = logging.getLogger("sample_world_explorer")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", type=str, required=True, help="A StableVideoDiffusionPipeline folder (e.g. train_world_explorer.py's --output_dir).")
    parser.add_argument("--panorama", type=str, required=True, help="Equirectangular panorama image (any size; 2:1 expected).")
    parser.add_argument("--output", type=str, required=True, help="Output mp4 path (H.264).")
    trained = "default: what the model was trained at, else"
    parser.add_argument("--width", type=int, default=None, help=f"Model input width the panorama is resized to ({trained} 1024).")
    parser.add_argument("--height", type=int, default=None, help=f"Model input height the panorama is resized to ({trained} 576).")
    parser.add_argument("--num_frames", type=int, default=None, help=f"Frames to generate ({trained} 25); with --trajectory the segments say it.")
    parser.add_argument("--fps", type=int, default=None, help=f"Frame rate: the conditioning value (the UNet sees fps - 1, as in training) and the mp4's rate ({trained} 7).")
    parser.add_argument("--motion_bucket_id", type=int, default=None, help=f"Motion bucket id conditioning ({trained} 127).")
    parser.add_argument("--num_inference_steps", type=int, default=25, help="Sampling steps.")
    parser.add_argument("--decode_chunk_size", type=int, default=8, help="Frames decoded at once by the VAE (lower uses less memory).")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the sampling noise.")
    parser.add_argument("--yaw", type=float, default=None, help="Turn the panorama by this many degrees first (the same rotation as the spherical loss); default 0.")
    parser.add_argument("--trajectory", type=str, default=None,
                        help='A path of segments "yaw:frames,yaw:frames" (e.g. "0:25,180:25"): each turns the view by yaw degrees, then walks frames '
                             "frames forward from the last frame of the segment before. Replaces --yaw and --num_frames.")
    add_device_argument(parser, "fp16 on CUDA, fp32 on CPU")
    args = parser.parse_args(argv)
    args.device = resolve_device(parser, args.device)
    given_frames = args.num_frames
    vars(args).update(sampling_settings(args.model_dir, width=args.width, height=args.height, num_frames=args.num_frames, fps=args.fps,
                                        motion_bucket_id=args.motion_bucket_id))

    # args.segments: the path to generate, [(yaw, frames), ...]; without --trajectory one segment.
    if args.trajectory is not None:
        given = [flag for flag, value in (("--yaw", args.yaw), ("--num_frames", given_frames)) if value is not None]
        if given:
            parser.error(f"--trajectory and {' and '.join(given)}: give the path's turns and lengths in --trajectory alone")
        try:
            args.segments = parse_trajectory(args.trajectory)
        except ValueError as error:
            parser.error(f"--trajectory: {error}")
    else:
        args.segments = [(args.yaw or 0.0, args.num_frames)]
    # Counts below 1 fail deep in the pipeline after the model loads (0 frames: a torch reduction error).
    require_at_least(args, 1, "width", "height", "num_frames", "fps", "num_inference_steps", "decode_chunk_size")
    require_at_least(args, 0, "motion_bucket_id")
    # Before the model loads: an output that cannot be written would cost the whole generation.
    if Path(args.output).is_dir():
        raise SetupError(f"--output {args.output}: is a folder; give the path of the mp4 to write")
    check_writable(Path(args.output).parent, "--output")
    # Before the settings line, which for a mistyped folder would show SVD-xt's defaults instead of the trained ones.
    if is_missing_folder(args.model_dir):
        raise SetupError(f"--model_dir {args.model_dir}: folder does not exist")
    return args


def output_size(panorama_width: int, panorama_height: int, model_width: int) -> tuple[int, int]:
    """Video size at the panorama's aspect ratio and the model's width, even for H.264."""
    height = round(model_width * panorama_height / panorama_width)
    return model_width, height + height % 2


def main(argv=None):
    args = parse_args(argv)
    flush_denormals()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"Generating {sum(frames for _, frames in args.segments)} frames at {args.width}x{args.height}, fps {args.fps}, "
          f"motion bucket {args.motion_bucket_id}", flush=True)
    panorama = load_rgb(args.panorama)
    pipeline = load_svd_pipeline(args.model_dir, args.device)
    check_svd_fits(pipeline.vae, pipeline.unet, args.model_dir, args.width, args.height)

    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    frames = explore_path(pipeline, panorama, args.segments, args.width, args.height, args.fps,
                          args.motion_bucket_id, args.num_inference_steps, args.decode_chunk_size, generator)
    frames = resize_frames(frames, *output_size(*panorama.size, args.width))
    path = write_mp4(frames, args.output, fps=args.fps)
    print(f"Wrote {len(frames)} frames ({frames.shape[2]}x{frames.shape[1]}) to {path}")


if __name__ == "__main__":
    run_cli(main)
