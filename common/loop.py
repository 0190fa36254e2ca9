"""The training loop's shared parts: the epochs and batches of a (resumed) run, and the optimizer-step tail.

Both training scripts run the same tail after their loss:

    with accelerator.accumulate(model):
        loss, logs = ...                       # the pipeline's step (genex/step.py, pecn/step.py)
        backward_and_step(run, loss, logs)     # backward; at the last micro-step: non-finite guard, clipping, optimizer
    if accelerator.sync_gradients:
        end_optimizer_step(run)                # EMA, step count, logging, checkpoint, stop on a diverged loss
"""

import dataclasses
import logging
import math
from typing import Callable, Iterator, Optional

import torch
from tqdm.auto import tqdm

from common.checkpoints import save_checkpoint
from common.cli import RunError

logger = logging.getLogger(__name__)
# One line per optimizer step, into train.log only (the console shows the progress bar); see common.training.setup_logging.
step_logger = logging.getLogger("train.steps")


class NonFiniteLossError(RunError):
    """The loss stayed NaN or inf for --max_nonfinite_steps optimizer steps in a row."""


class NonFiniteLossGuard:
    """Decides, once per optimizer step and identically on every process, whether the step may update anything.

    `observe` records each micro-step's loss without waiting for the device; `step_is_finite` gathers the
    flags of all processes at the optimizer step. Gradient overflow under fp16 loss scaling is not a
    non-finite loss: the loss stays finite and the GradScaler skips that step itself.
    """

    def __init__(self, accelerator, max_in_a_row: int):
        self.accelerator = accelerator
        self.max_in_a_row = max_in_a_row
        self.window_finite = None
        self.in_a_row = 0
        self.total = 0

    def observe(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self.window_finite = finite if self.window_finite is None else self.window_finite & finite

    def step_is_finite(self) -> bool:
        """Whether every micro-step of this optimizer step, on every process, had a finite loss; updates the counts."""
        flag = self.window_finite.float().reshape(1)
        self.window_finite = None
        finite = bool(self.accelerator.gather(flag).min().item() == 1.0)
        self.in_a_row = 0 if finite else self.in_a_row + 1
        self.total += 0 if finite else 1
        if not finite:
            logger.warning("a loss was NaN or inf: this optimizer step updates nothing (%d in a row, %d in all)", self.in_a_row, self.total)
        return finite

    @property
    def should_stop(self) -> bool:
        return self.in_a_row >= self.max_in_a_row

    def stop_error(self, global_step: int, checkpoint) -> NonFiniteLossError:
        return NonFiniteLossError(
            f"the loss was NaN or inf for {self.in_a_row} optimizer steps in a row (up to step {global_step}); stopped. "
            f"{checkpoint} holds the last good weights (step {global_step - self.in_a_row}): resume from it with a lower "
            f"--learning_rate, or check the data"
        )


@dataclasses.dataclass
class TrainingRun:
    """What the loop and its tail work on, built by common.training.prepare_training."""

    accelerator: object
    args: object
    model: torch.nn.Module
    optimizer: object
    dataloader: object
    lr_scheduler: object
    params: list
    ema: object
    ema_names: Optional[list]
    generator: torch.Generator
    global_step: int
    max_train_steps: int
    num_train_epochs: int
    first_epoch: int
    batches_to_skip: int
    nonfinite: NonFiniteLossGuard
    progress: tqdm
    micro_steps: list = dataclasses.field(default_factory=list)
    step_is_finite: bool = True
    grad_norm: Optional[torch.Tensor] = None

    @property
    def done(self) -> bool:
        return self.global_step >= self.max_train_steps


def epochs(run: TrainingRun) -> Iterator[int]:
    """The epochs still to train, ending as soon as the run has its optimizer steps."""
    for epoch in range(run.first_epoch, run.num_train_epochs):
        if run.done:
            return
        yield epoch


def epoch_batches(run: TrainingRun, epoch: int, set_epoch: Optional[Callable[[int], None]] = None) -> Iterator[dict]:
    """The batches of `epoch`: its shuffle order is a function of (seed, epoch); a resumed epoch skips what was done."""
    if set_epoch is not None:
        set_epoch(epoch)
    run.dataloader.set_epoch(epoch)
    skip = run.batches_to_skip if epoch == run.first_epoch else 0
    batches = run.accelerator.skip_first_batches(run.dataloader, skip) if skip else run.dataloader
    for batch in batches:
        yield batch
        # Checked after the step, so no batch is loaded beyond the last optimizer step.
        if run.done:
            return


def optimizer_step(accelerator, optimizer, lr_scheduler, params: list, nonfinite: NonFiniteLossGuard, max_grad_norm: float,
                   loss: torch.Tensor) -> tuple[bool, Optional[torch.Tensor]]:
    """After a micro-step's backward: at the last micro-step, clip and step unless a loss was NaN or inf (on any process).

    Returns (whether the step updates, the gradient norm before clipping, None when it does not update).
    """
    nonfinite.observe(loss)
    finite, grad_norm = True, None
    if accelerator.sync_gradients:
        finite = nonfinite.step_is_finite()
        if finite:
            # With clipping off the norm is still measured (max_norm inf scales by exactly 1), so it is always logged.
            grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
            optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return finite, grad_norm


def backward_and_step(run: TrainingRun, loss: torch.Tensor, logs: dict) -> None:
    """Backward (gradients averaged across processes by DDP), then `optimizer_step`; the micro-step's values are kept for logging."""
    run.accelerator.backward(loss)
    run.micro_steps.append({"loss": loss.detach(), **logs})
    finite, grad_norm = optimizer_step(run.accelerator, run.optimizer, run.lr_scheduler, run.params, run.nonfinite, run.args.max_grad_norm, loss)
    if run.accelerator.sync_gradients:
        run.step_is_finite, run.grad_norm = finite, grad_norm


def step_means(accelerator, micro_steps: list[dict]) -> dict[str, float]:
    """Each logged value's mean over this optimizer step's micro-steps and over all processes (one gather)."""
    keys = sorted(micro_steps[0])
    local = torch.stack([torch.stack([torch.as_tensor(step[key], dtype=torch.float32, device=accelerator.device) for step in micro_steps]).mean()
                         for key in keys])
    gathered = accelerator.gather(local.reshape(1, -1)).reshape(-1, len(keys)).mean(dim=0)
    return dict(zip(keys, gathered.tolist()))


def end_optimizer_step(run: TrainingRun) -> dict[str, float]:
    """After an optimizer step: EMA, the step count, logging (trackers, train.log, progress bar), checkpoint, and the stop
    of a run whose loss stayed NaN or inf. Returns what was logged."""
    accelerator, args = run.accelerator, run.args
    if run.ema is not None and run.step_is_finite:
        run.ema.step(run.params)
    run.global_step += 1
    run.progress.update(1)
    logs = step_means(accelerator, run.micro_steps)
    run.micro_steps = []
    logs |= {"lr": run.lr_scheduler.get_last_lr()[0], "nonfinite_steps": run.nonfinite.total}
    if run.grad_norm is not None:
        logs["grad_norm"] = float(run.grad_norm)
    run.progress.set_postfix(loss=f"{logs['loss']:.4f}")
    accelerator.log(logs, step=run.global_step)
    if accelerator.is_main_process:
        step_logger.info("step %d/%d: %s", run.global_step, run.max_train_steps, " ".join(f"{key} {value:.6g}" for key, value in logs.items()))
    checkpoint = None
    if run.global_step % args.checkpointing_steps == 0 or run.nonfinite.should_stop:
        checkpoint = save_checkpoint(accelerator, args.output_dir, run.global_step, args.checkpoints_total_limit, run.ema, run.ema_names, run.generator)
    if run.nonfinite.should_stop:
        run.progress.close()
        accelerator.end_training()
        raise run.nonfinite.stop_error(run.global_step, checkpoint)
    return logs


def log_weight_checksums(accelerator, params) -> list[float]:
    """Gather a checksum of the trainable weights from every process and log it: equal values show DDP kept them in sync."""
    checksum = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1).to(accelerator.device)
    checksums = accelerator.gather(checksum).tolist()
    logger.info("trainable weight checksum per process: %s", checksums)
    return checksums
