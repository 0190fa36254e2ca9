"""A training run's --output_dir: one run per folder.

A folder that holds checkpoints or a saved pipeline belongs to an earlier run. A new run is refused
there, before any model loads, unless it continues that run (--resume_from_checkpoint) or replaces it
(--overwrite_output_dir). Replacing removes only what training writes into the folder: checkpoints,
the saved pipeline (model_index.json and the component folders it lists), the recorded training
settings, validation outputs, the TensorBoard folder inside it and train.log. Any other file stays.
"""

import json
import re
import shutil
from pathlib import Path
from typing import Optional

from common.checkpoints import CHECKPOINT_PATTERN, check_checkpoint, list_checkpoints, resolve_resume_checkpoint
from common.cli import SetupError
from common.files import check_writable, give_umask_mode_under

PIPELINE_INDEX = "model_index.json"
TRAINED_SETTINGS = "trained_settings.json"
TRAIN_LOG = "train.log"
VALIDATION = "validation"
# The folders validation_folder names, and only those: another folder under validation/ is not training's.
VALIDATION_FOLDER = re.compile(r"^(epoch_\d+_)?step_\d+$")


def validation_folder(output_dir, step: int, epoch: Optional[int] = None) -> Path:
    """Where the validation outputs of one step go: validation/step_<N> (GenEx), validation/epoch_<E>_step_<N> (PECN)."""
    name = f"step_{step}" if epoch is None else f"epoch_{epoch:03d}_step_{step}"
    return Path(output_dir) / VALIDATION / name


def pipeline_paths(output_dir) -> list[Path]:
    """The saved pipeline in `output_dir`: model_index.json and the component folders it lists (empty when none is saved)."""
    index = Path(output_dir) / PIPELINE_INDEX
    if not index.is_file():
        return []
    try:
        components = [name for name, value in json.loads(index.read_text(encoding="utf-8")).items()
                      if not name.startswith("_") and isinstance(value, list)]
    except (OSError, ValueError, AttributeError):
        components = []
    return [index] + [Path(output_dir) / name for name in components if (Path(output_dir) / name).is_dir()]


def describe_earlier_run(output_dir) -> list[str]:
    """What an earlier run left in `output_dir` that a new run would mix with: its checkpoints and its saved pipeline."""
    found = [path.name for path in list_checkpoints(output_dir)]
    if pipeline_paths(output_dir):
        found.append(f"a saved pipeline ({PIPELINE_INDEX})")
    return found


def is_inside(path: Path, folder: Path) -> bool:
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_training_output_dir(args) -> None:
    """Refuse, before any model loads, an --output_dir that would mix this run with an earlier one or cannot be written;
    a checkpoint to resume from is checked for damage here too."""
    output_dir = Path(args.output_dir)
    if args.overwrite_output_dir and args.resume_from_checkpoint:
        raise SetupError("--overwrite_output_dir and --resume_from_checkpoint contradict each other: the first removes the earlier run, "
                         "the second continues it; give one")
    model = Path(args.pretrained_model_name_or_path)
    if args.overwrite_output_dir and model.exists() and is_inside(model, output_dir):
        raise SetupError(f"--output_dir {output_dir}: holds --pretrained_model_name_or_path {model}; --overwrite_output_dir would delete "
                         "the model this run starts from: choose another --output_dir")
    found = describe_earlier_run(output_dir)
    if args.resume_from_checkpoint:
        checkpoint = resolve_quietly(output_dir, args.resume_from_checkpoint)
        if checkpoint is not None:
            check_checkpoint(checkpoint)
        elif found:
            raise SetupError(f"--output_dir {output_dir}: holds {', '.join(found)} but no checkpoint to resume from; "
                             "start over there with --overwrite_output_dir (removes that run), or choose another --output_dir")
    elif found and not args.overwrite_output_dir:
        raise SetupError(f"--output_dir {output_dir}: holds an earlier run ({', '.join(found)}); continue it with --resume_from_checkpoint "
                         "latest, replace it with --overwrite_output_dir (removes its checkpoints, pipeline, validation outputs and logs), "
                         "or choose another --output_dir")
    check_writable(output_dir, "--output_dir")


def resolve_quietly(output_dir: Path, resume_from_checkpoint: str) -> Optional[Path]:
    """The checkpoint --resume_from_checkpoint names (None for `latest` in a folder without one), without logging."""
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    return resolve_resume_checkpoint(output_dir, resume_from_checkpoint)


def earlier_run_paths(output_dir, logging_dir: str) -> list[Path]:
    """Everything training wrote into `output_dir` (see the module docstring)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    paths = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name.removeprefix(".").rsplit(".", 1)[0])]
    paths += pipeline_paths(output_dir)
    paths += [output_dir / name for name in (TRAINED_SETTINGS, TRAIN_LOG) if (output_dir / name).is_file()]
    if (output_dir / VALIDATION).is_dir():
        paths += [p for p in (output_dir / VALIDATION).iterdir() if p.is_dir() and VALIDATION_FOLDER.match(p.name)]
    logs = output_dir / logging_dir
    # A TensorBoard folder outside --output_dir may be shared with other runs: it is left alone.
    if logs.is_dir() and is_inside(logs, output_dir) and logs.resolve() != output_dir.resolve():
        paths.append(logs)
    return paths


def clear_earlier_run(output_dir, logging_dir: str) -> list[Path]:
    """--overwrite_output_dir: remove what an earlier training run wrote into `output_dir`, nothing else; returns what went."""
    removed = earlier_run_paths(output_dir, logging_dir)
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    validation = Path(output_dir) / VALIDATION
    if validation.is_dir() and not any(validation.iterdir()):
        validation.rmdir()
    return removed


def share_saved_pipeline(output_dir) -> None:
    """The saved pipeline's weight files get the mode the user's umask allows (safetensors writes them 0600)."""
    for path in pipeline_paths(output_dir):
        if path.is_dir():
            give_umask_mode_under(path)
