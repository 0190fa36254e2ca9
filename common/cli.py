"""Running a command-line entry point: errors a user can act on become one line on stderr, never a traceback."""

import os
import sys
from pathlib import Path

from tqdm.auto import tqdm


class RunError(RuntimeError):
    """An error the user can act on (a flag, a file, a checkpoint, a diverged run): shown as one line."""


class SetupError(RunError):
    """A flag or environment that cannot work (a missing optional package, an impossible value)."""


def is_missing_folder(path: str) -> bool:
    """`path` names a local folder (not a model hub id) that does not exist."""
    return not Path(path).exists() and (os.sep in path or path.startswith("."))


def model_folder_error(path: str, error: Exception, kind: str, variant=None) -> SetupError:
    """A one-line error for a base model that cannot be loaded, with the likely fix when there is one."""
    folder = Path(path)
    if is_missing_folder(path):
        return SetupError(f"{path}: folder does not exist")
    hint = ""
    if variant is None and folder.is_dir() and next(folder.glob("*/*.fp16.safetensors"), None) is not None:
        hint = "; it holds fp16 weight files: add --variant fp16"
    article = "an" if kind[0].lower() in "aeiou" else "a"
    return SetupError(f"{path}: not {article} {kind} pipeline folder ({str(error).splitlines()[0]}){hint}")


def count_or_all(text: str):
    """argparse type of a how-many flag: a count >= 1, or "all" / 0 for every one (None)."""
    import argparse

    if text.strip().lower() in ("all", "0"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a count or "all", got {text!r}') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'expected a count >= 0 or "all", got {value}')
    return value


def add_device_argument(parser, precision: str) -> None:
    """--device, resolved after parsing by `resolve_device`; `precision` says what the script runs in on each device."""
    parser.add_argument("--device", default=None, help=f"Torch device; default cuda when available, else cpu ({precision}).")


def resolve_device(parser, device) -> str:
    """The --device to run on: cuda when available if none was given; a cuda device on a machine without one is a parser error."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # Before any model loads: otherwise the first .to(device) fails with a long CUDA traceback.
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return device


def run_cli(main) -> None:
    """Run a script's main(); known setup and data errors become one line on stderr and exit code 2.

    TRAIN_DEBUG=1 shows the full traceback instead.
    """
    try:
        main()
    # Path errors name their path ("[Errno 20] Not a directory: 'out/x'"), which is all a user needs.
    except (RunError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError) as error:
        if os.environ.get("TRAIN_DEBUG"):
            raise
        message = str(error)
        if "Original Traceback" in message:
            # Raised in a DataLoader worker: its message carries the worker's traceback; the cause is the last line.
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        # Through tqdm, so that the line starts on its own even under a progress bar.
        tqdm.write(f"error: {message}", file=sys.stderr)
        sys.exit(2)
