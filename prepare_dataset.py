#!/usr/bin/env python
"""Prepare Genex-DB-World-Exploration for GenEx-Explorer: <output_dir>/<scene>/video_00001/frame_0001.jpg ...

    python prepare_dataset.py --dataset_path /path/to/Genex-DB-World-Exploration --output_dir ./Genex-DB \\
        --scene_types realistic low_texture anime real_world --frames_per_video 50 --num_workers 8 --image_size 1024 576

Reruns skip finished videos made with the same settings (each records them in prepare.json) and refuse, before writing
anything, an output folder whose videos were made with other ones (--redo_other_settings extracts those again); see
genex/prepare.py for the three layouts it reads.
"""

import argparse
import sys

from common.cli import RunError
from genex.prepare import SCENE_TYPES, DatasetLayoutError, OtherSettingsError, default_num_workers, format_summary, prepare_dataset


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Extract evenly spaced JPEG frames from Genex-DB-World-Exploration videos for GenEx-Explorer training.")
    parser.add_argument("--dataset_path", required=True, help=(
        "Clone of Genex-DB-World-Exploration: per-scene folders of videos or of parquet/csv files with a `video` column, or one table in "
        "shards (data/train-00000-of-00229.parquet ...) whose `label` class names are the scene types."))
    parser.add_argument("--output_dir", default="./Genex-DB", help="Where <scene>/video_XXXXX/frame_XXXX.jpg folders are written.")
    parser.add_argument("--scene_types", nargs="+", default=list(SCENE_TYPES), help="Scene types to process; matched case-insensitively ignoring punctuation (real_world finds Real-World).")
    parser.add_argument("--frames_per_video", type=int, default=50, help="Frames per video, evenly spaced over the whole video (shorter videos keep all theirs).")
    parser.add_argument("--num_workers", type=int, default=default_num_workers(), help="Parallel decoding processes (default: min(8, CPU count)).")
    parser.add_argument("--image_size", type=int, nargs=2, default=[1024, 576], metavar=("WIDTH", "HEIGHT"), help="Output frame size in pixels.")
    parser.add_argument("--redo_other_settings", action="store_true", help=(
        "Extract again the finished videos that were made with another --frames_per_video or --image_size (without it such a rerun is "
        "refused before anything is written); each old folder is replaced only once its new one is complete."))
    parser.add_argument("--quiet", action="store_true", help="No progress bars; print the summary only.")
    args = parser.parse_args(argv)
    if args.frames_per_video < 1 or args.num_workers < 1 or min(args.image_size) < 1:
        parser.error("--frames_per_video, --num_workers and --image_size must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = prepare_dataset(
            args.dataset_path, args.output_dir, args.scene_types, args.frames_per_video, tuple(args.image_size), args.num_workers,
            show_progress=not args.quiet, redo_other_settings=args.redo_other_settings,
        )
    except (DatasetLayoutError, OtherSettingsError, RunError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A full disk or an unwritable output folder stops the run; finished videos are kept for the rerun.
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_summary(summary, args.dataset_path))
    # A scene stopped by an unreadable table is incomplete: say so in the exit status too, for scripts.
    return 1 if any(report.error for report in summary.scenes) else 0


if __name__ == "__main__":
    sys.exit(main())
