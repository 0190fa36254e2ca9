"""Checkpoints shared by both training scripts: `checkpoint-<step>/` folders, resume, rotation.

A checkpoint holds only the trainable parameters (safetensors), the optimizer, LR scheduler,
sampler and RNG states that Accelerate saves, and the EMA weights when EMA is on. It is written
to a hidden folder and renamed when complete (common.files.atomic_folder), so `latest` only ever
names a complete one, and old checkpoints are removed only after the new one exists.

Each checkpoint records the id of its run (`run_id` in training_state.json: new for a fresh start, kept
by a resumed run). --checkpoints_total_limit counts and removes only the current run's checkpoints, so a
run never deletes its own newest checkpoint to keep another run's higher-numbered one. A damaged
checkpoint (a cut or empty file, unreadable training_state.json) is refused in one line naming the file,
with the previous checkpoint to resume from instead.
"""

import contextlib
import json
import logging
import pickle
import re
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import broadcast_object_list, gather_object
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from common.cli import RunError
from common.files import atomic_folder, give_umask_mode, staging_folder, write_json_atomic

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINABLE_WEIGHTS = "trainable_weights.safetensors"
EMA_WEIGHTS = "ema_weights.safetensors"
TRAINING_STATE = "training_state.json"
GENERATOR_STATE = "generator_state_{}.safetensors"


class CheckpointError(RunError):
    """A checkpoint that is missing, incomplete or does not fit this run."""


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoint folders under `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [path for _, path in sorted(found)]


def resolve_resume_checkpoint(output_dir, resume_from_checkpoint: Optional[str]) -> Optional[Path]:
    """The folder to resume from: a path, or `latest` (None, with a message, when there is none yet)."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            logger.warning("--resume_from_checkpoint latest: no checkpoint in %s yet, starting a fresh run.", output_dir)
            return None
        return checkpoints[-1]
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / resume_from_checkpoint
    if not (path / TRAINING_STATE).is_file():
        raise CheckpointError(f"{resume_from_checkpoint}: not a complete checkpoint folder (no {TRAINING_STATE})")
    return path


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_PATTERN.match(Path(path).name).group(1))


def previous_checkpoint_hint(path: Path) -> str:
    """What to do instead of resuming from the damaged checkpoint `path`: the checkpoint before it, if any."""
    path = Path(path)
    match = CHECKPOINT_PATTERN.match(path.name)
    earlier = [c for c in list_checkpoints(path.parent) if match and checkpoint_step(c) < int(match.group(1))]
    if earlier:
        return f"resume from the previous checkpoint instead: --resume_from_checkpoint {earlier[-1]}"
    return "there is no earlier checkpoint: start again with --overwrite_output_dir"


def damaged_checkpoint(file: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{file}: {what}; the checkpoint is damaged, {previous_checkpoint_hint(Path(file).parent)}")


def read_training_state(path: Path) -> dict:
    """training_state.json of a checkpoint folder: {"global_step", "run_id"}; a damaged one is a CheckpointError naming it."""
    file = Path(path) / TRAINING_STATE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a complete checkpoint folder (no {TRAINING_STATE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise damaged_checkpoint(file, f"not readable JSON ({error})") from None
    step = state.get("global_step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise damaged_checkpoint(file, 'holds no "global_step" count')
    return state


def checkpoint_file_problem(file: Path) -> Optional[str]:
    """What is wrong with one file of a checkpoint, read as far as is cheap (headers, archive index); None if nothing shows."""
    file = Path(file)
    try:
        if file.stat().st_size == 0:
            return "is empty"
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt"):
                pass
        elif file.suffix in (".bin", ".pkl"):
            # torch.save writes a zip archive whose index sits at the end: a cut file has none.
            with zipfile.ZipFile(file):
                pass
    except (SafetensorError, zipfile.BadZipFile, OSError) as error:
        return f"cut short or damaged ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
    return None


def check_checkpoint(path: Path) -> None:
    """Refuse, before any model loads, a checkpoint with a damaged file (see checkpoint_file_problem)."""
    path = Path(path)
    read_training_state(path)
    for file in sorted(path.iterdir()):
        problem = checkpoint_file_problem(file) if file.is_file() else None
        if problem:
            raise damaged_checkpoint(file, problem)


def new_run_id() -> str:
    return uuid.uuid4().hex


def checkpoint_run_id(path: Path):
    """The run that wrote a checkpoint (None for one written before runs had ids); a damaged one belongs to no run."""
    try:
        return read_training_state(path).get("run_id")
    except CheckpointError:
        return object()


def checkpoints_beyond_limit(output_dir, run_id, total_limit: int) -> list[Path]:
    """The current run's checkpoints older than its newest `total_limit`; another run's are neither counted nor removed."""
    own = [path for path in list_checkpoints(output_dir) if checkpoint_run_id(path) == run_id]
    return own[:-total_limit]


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name, as contiguous CPU tensors."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """Copy `state` into the trainable parameters of `model`, refusing any mismatch of names or shapes."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: its trainable parameters do not match this run ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]}); was it written by a run with another trainable set?"
        )
    for name, tensor in state.items():
        if tensor.shape != params[name].shape:
            raise CheckpointError(f"{source}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(params[name].shape)}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def register_trainable_weights_hooks(accelerator) -> None:
    """Make `save_state`/`load_state` store only trainable parameters, as safetensors."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for index, model in enumerate(models):
                state = trainable_state_dict(accelerator.unwrap_model(model))
                save_file(state, str(Path(output_dir) / f"{index}_{TRAINABLE_WEIGHTS}"))
                give_umask_mode([Path(output_dir) / f"{index}_{TRAINABLE_WEIGHTS}"])
        # Accelerate would otherwise save the full model (frozen weights included) a second time.
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        for index in range(len(models)):
            path = Path(input_dir) / f"{index}_{TRAINABLE_WEIGHTS}"
            if not path.is_file():
                raise CheckpointError(f"{input_dir}: missing {path.name}")
            load_trainable_state_dict(accelerator.unwrap_model(models[index]), load_file(str(path)), path)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_ema(ema, names: list[str], path: Path) -> None:
    """EMA shadow weights by parameter name, plus its step count, as safetensors."""
    state = {name: p.detach().cpu().contiguous() for name, p in zip(names, ema.shadow_params)}
    save_file(state, str(path), metadata={"optimization_step": str(ema.optimization_step)})
    give_umask_mode([path])


def load_ema(ema, names: list[str], path: Path) -> None:
    with safe_open(str(path), framework="pt") as handle:
        step = int(handle.metadata()["optimization_step"])
        if sorted(handle.keys()) != sorted(names):
            raise CheckpointError(f"{path}: EMA weights do not match this run's trainable parameters")
        for name, shadow in zip(names, ema.shadow_params):
            shadow.copy_(handle.get_tensor(name))
    ema.optimization_step = step


def save_checkpoint(accelerator, output_dir, global_step: int, total_limit: Optional[int], ema=None, ema_names=None, generator=None,
                    run_id: Optional[str] = None) -> Path:
    """Write `checkpoint-<global_step>` of run `run_id` atomically, then keep at most `total_limit` checkpoints of that run."""
    final = Path(output_dir) / f"checkpoint-{global_step}"
    # The main process stages the folder; every process writes its own states into it.
    staging = atomic_folder(final, replace=True) if accelerator.is_main_process else contextlib.nullcontext(staging_folder(final))
    with staging as folder:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(folder))
        if generator is not None:
            save_file({"state": generator.get_state()}, str(folder / GENERATOR_STATE.format(accelerator.process_index)))
            give_umask_mode([folder / GENERATOR_STATE.format(accelerator.process_index)])
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if ema is not None:
                save_ema(ema, ema_names, folder / EMA_WEIGHTS)
            write_json_atomic(folder / TRAINING_STATE, {"global_step": global_step, "run_id": run_id})
    if accelerator.is_main_process:
        if total_limit is not None:
            for old in checkpoints_beyond_limit(output_dir, run_id, total_limit):
                shutil.rmtree(old)
        logger.info("Saved %s", final)
    accelerator.wait_for_everyone()
    return final


def holds_code(error: Exception) -> bool:
    """torch.load(weights_only=True) refused a pickle for what it would call or build (not for damaged bytes)."""
    return isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error)


def short_reason(error: Exception) -> str:
    """The line of an error message that says what is wrong (torch's weights-only errors end with it)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith("Check the documentation")]
    return lines[-1] if lines else type(error).__name__


def unsafe_pickle(folder: Path) -> Path:
    """The first pickle in `folder` that torch.load(weights_only=True) refuses for the code it holds (the folder itself if none)."""
    for candidate in sorted([*folder.glob("*.bin"), *folder.glob("*.pkl")]):
        try:
            torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as error:
            if holds_code(error):
                return candidate
    return folder


def load_failure(path: Path, error: Exception) -> CheckpointError:
    """The one-line error for a checkpoint that failed to load: the damaged file when one can be found, else the folder."""
    for file in sorted(path.iterdir()):
        if not file.is_file() or file.suffix not in (".safetensors", ".bin", ".pkl"):
            continue
        problem = checkpoint_file_problem(file)
        if problem is None:
            try:
                # Reads the whole file: only on this failure path, to name the file that does not load.
                load_file(str(file)) if file.suffix == ".safetensors" else torch.load(file, map_location="cpu", weights_only=True)
            except Exception as file_error:
                problem = f"cannot be read ({short_reason(file_error)})"
        if problem:
            return damaged_checkpoint(file, problem)
    return CheckpointError(f"{path}: cannot be loaded into this run ({short_reason(error)}); if it is damaged, {previous_checkpoint_hint(path)}")


def load_checkpoint(accelerator, path: Path, ema=None, ema_names=None, generator=None) -> int:
    """Restore a checkpoint written by `save_checkpoint`; returns its global step."""
    path = Path(path)
    global_step = read_training_state(path)["global_step"]
    try:
        # Accelerate reads optimizer, schedule, sampler and RNG pickles with torch.load(weights_only=True).
        accelerator.load_state(str(path))
        if generator is not None:
            generator_file = path / GENERATOR_STATE.format(accelerator.process_index)
            if not generator_file.is_file():
                raise CheckpointError(f"{path}: no {generator_file.name} (written with another number of processes?)")
            generator.set_state(load_file(str(generator_file))["state"])
        if ema is not None:
            if not (path / EMA_WEIGHTS).is_file():
                raise CheckpointError(f"{path}: no EMA weights, but --use_ema is on (was the run started without it?)")
            load_ema(ema, ema_names, path / EMA_WEIGHTS)
    except CheckpointError:
        raise
    except Exception as error:  # a damaged file (cut, empty, garbage) shows as any error of torch, safetensors or pickle
        if holds_code(error):
            raise CheckpointError(f"{unsafe_pickle(path)}: not plain weights (the pickle would run code or build objects); refusing to load it") from None
        raise load_failure(path, error) from None
    return global_step


def own_copy_of(output_dir, resume_from_checkpoint: str, main_path: str) -> Path:
    """Where this process finds the checkpoint the main process resolved to `main_path`: the same name in its own
    --output_dir for `latest`, its own reading of the flag otherwise (each machine sees its own filesystem)."""
    if resume_from_checkpoint == "latest":
        return Path(output_dir) / Path(main_path).name
    path = Path(resume_from_checkpoint)
    return path if path.is_dir() else Path(output_dir) / resume_from_checkpoint


def agreed_resume_checkpoint(accelerator, output_dir, resume_from_checkpoint: Optional[str]) -> Optional[Path]:
    """The checkpoint every process resumes from: the one the main process resolves, checked to be the same one for every process.

    Checkpoints are written by the main process only, so another machine sees them only when --output_dir is on a
    filesystem they share. A process that does not see the main process's checkpoint (or sees another one under its
    name) stops the run on every process with the same one-line error, instead of starting afresh or hanging.
    """
    if not resume_from_checkpoint:
        return None
    if accelerator.num_processes == 1:
        return resolve_resume_checkpoint(output_dir, resume_from_checkpoint)
    # The main process's answer: (path, its training state) or (None, None) for a fresh start, or its error for everyone.
    answer = [None]
    if accelerator.is_main_process:
        try:
            path = resolve_resume_checkpoint(output_dir, resume_from_checkpoint)
            answer = [(str(path), (path / TRAINING_STATE).read_text()) if path is not None else (None, None)]
        except (CheckpointError, OSError) as error:
            answer = [error if isinstance(error, CheckpointError) else CheckpointError(str(error))]
    answer = broadcast_object_list(answer)[0]
    if isinstance(answer, CheckpointError):
        raise answer
    main_path, main_state = answer
    if main_path is None:
        return None
    own = own_copy_of(output_dir, resume_from_checkpoint, main_path)
    state_file = own / TRAINING_STATE
    sees_it = state_file.is_file() and state_file.read_text() == main_state
    blind = [index for index, ok in enumerate(gather_object([sees_it])) if not ok]
    if blind:
        raise CheckpointError(
            f"{main_path}: the main process resumes from it, but process(es) {', '.join(map(str, blind))} of {accelerator.num_processes} "
            f"do not see it (or see another checkpoint) in their --output_dir {output_dir}; checkpoints are written by the main "
            "process only: put --output_dir on a filesystem every machine shares (README, \"Scaling out\")"
        )
    return own


def resume_training(accelerator, args, steps_per_epoch: int, ema=None, ema_names=None, generator=None) -> tuple[int, int, int, Optional[str]]:
    """Apply --resume_from_checkpoint: (global_step, first_epoch, batches to skip in that epoch, run id); a fresh run starts at
    zero with a new run id, a resumed run keeps its checkpoint's."""
    path = agreed_resume_checkpoint(accelerator, args.output_dir, args.resume_from_checkpoint)
    if path is None:
        return 0, 0, 0, new_run_id()
    global_step = load_checkpoint(accelerator, path, ema, ema_names, generator)
    logger.info("Resumed from %s at step %d", path, global_step)
    return global_step, global_step // steps_per_epoch, (global_step % steps_per_epoch) * args.gradient_accumulation_steps, checkpoint_run_id(path)
