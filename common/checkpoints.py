"""Checkpoints shared by both training scripts: `checkpoint-<step>/` folders, resume, rotation.

A checkpoint holds only the trainable parameters (safetensors), the optimizer, LR scheduler,
sampler and RNG states that Accelerate saves, and the EMA weights when EMA is on. It is written
to a hidden folder and renamed when complete (common.files.atomic_folder), so `latest` only ever
names a complete one, and old checkpoints are removed only after the new one exists.
"""

import contextlib
import json
import logging
import pickle
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from common.cli import RunError
from common.files import atomic_folder, staging_folder

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


def load_ema(ema, names: list[str], path: Path) -> None:
    with safe_open(str(path), framework="pt") as handle:
        step = int(handle.metadata()["optimization_step"])
        if sorted(handle.keys()) != sorted(names):
            raise CheckpointError(f"{path}: EMA weights do not match this run's trainable parameters")
        for name, shadow in zip(names, ema.shadow_params):
            shadow.copy_(handle.get_tensor(name))
    ema.optimization_step = step


def save_checkpoint(accelerator, output_dir, global_step: int, total_limit: Optional[int], ema=None, ema_names=None, generator=None) -> Path:
    """Write `checkpoint-<global_step>` atomically, then keep at most `total_limit` checkpoints."""
    final = Path(output_dir) / f"checkpoint-{global_step}"
    # The main process stages the folder; every process writes its own states into it.
    staging = atomic_folder(final, replace=True) if accelerator.is_main_process else contextlib.nullcontext(staging_folder(final))
    with staging as folder:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(folder))
        if generator is not None:
            save_file({"state": generator.get_state()}, str(folder / GENERATOR_STATE.format(accelerator.process_index)))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if ema is not None:
                save_ema(ema, ema_names, folder / EMA_WEIGHTS)
            (folder / TRAINING_STATE).write_text(json.dumps({"global_step": global_step}))
    if accelerator.is_main_process:
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
        logger.info("Saved %s", final)
    accelerator.wait_for_everyone()
    return final


def unsafe_pickle(folder: Path) -> Path:
    """The first pickle in `folder` that torch.load(weights_only=True) refuses (the folder itself if none does)."""
    for candidate in sorted([*folder.glob("*.bin"), *folder.glob("*.pkl")]):
        try:
            torch.load(candidate, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return candidate
        except Exception:
            continue
    return folder


def load_checkpoint(accelerator, path: Path, ema=None, ema_names=None, generator=None) -> int:
    """Restore a checkpoint written by `save_checkpoint`; returns its global step."""
    path = Path(path)
    try:
        # Accelerate reads optimizer, schedule, sampler and RNG pickles with torch.load(weights_only=True).
        accelerator.load_state(str(path))
    except pickle.UnpicklingError:
        raise CheckpointError(f"{unsafe_pickle(path)}: not plain weights (the pickle would run code or build objects); refusing to load it") from None
    if generator is not None:
        generator_file = path / GENERATOR_STATE.format(accelerator.process_index)
        if not generator_file.is_file():
            raise CheckpointError(f"{path}: no {generator_file.name} (written with another number of processes?)")
        generator.set_state(load_file(str(generator_file))["state"])
    if ema is not None:
        if not (path / EMA_WEIGHTS).is_file():
            raise CheckpointError(f"{path}: no EMA weights, but --use_ema is on (was the run started without it?)")
        load_ema(ema, ema_names, path / EMA_WEIGHTS)
    return int(json.loads((path / TRAINING_STATE).read_text())["global_step"])


def resume_training(accelerator, args, steps_per_epoch: int, ema=None, ema_names=None, generator=None) -> tuple[int, int, int]:
    """Apply --resume_from_checkpoint: (global_step, first_epoch, batches to skip in that epoch); zeros for a fresh run."""
    path = resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if path is None:
        return 0, 0, 0
    global_step = load_checkpoint(accelerator, path, ema, ema_names, generator)
    logger.info("Resumed from %s at step %d", path, global_step)
    return global_step, global_step // steps_per_epoch, (global_step % steps_per_epoch) * args.gradient_accumulation_steps
