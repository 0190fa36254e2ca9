"""Training plumbing that both training scripts share: flags, Accelerator, optimizer, EMA, logging."""

import argparse
import contextlib
import importlib.util
import logging
import math
import os
import sys
from pathlib import Path
from typing import Callable

import datasets
import diffusers
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, parse_flag_from_env, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from common.checkpoints import register_trainable_weights_hooks, resume_training
from common.cli import SetupError
from common.loop import NonFiniteLossGuard, TrainingRun, log_weight_checksums, step_logger
from common.output_dir import check_training_output_dir, clear_earlier_run, share_saved_pipeline
from common.trackers import wandb_login_problem

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


def add_shared_training_args(parser: argparse.ArgumentParser) -> None:
    """Flags with the meaning users know from the diffusers training examples."""
    parser.add_argument("--variant", type=str, default=None, help='Weight files variant of the base model, e.g. "fp16" for diffusion_pytorch_model.fp16.safetensors.')
    group = parser.add_argument_group("optimisation")
    group.add_argument("--learning_rate", type=float, default=1e-4, help="Initial learning rate (after warm-up).")
    group.add_argument("--scale_lr", action="store_true", help="Multiply the learning rate by accumulation steps x batch size x processes.")
    group.add_argument("--lr_scheduler", type=str, default="constant", choices=LR_SCHEDULERS,
                       help="diffusers' learning-rate schedule. \"constant\" with --lr_warmup_steps N > 0 warms up over N steps, then stays "
                            "constant (diffusers' constant_with_warmup; its plain constant would ignore the warm-up).")
    group.add_argument("--lr_warmup_steps", type=int, default=500, help="Optimizer steps of linear warm-up from 0 to --learning_rate (every schedule, constant included).")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches accumulated per optimizer step.")
    group.add_argument("--gradient_checkpointing", action="store_true", help="Recompute UNet activations in the backward pass to save memory.")
    group.add_argument("--max_train_steps", type=int, default=None, help="Total optimizer steps; overrides --num_train_epochs.")
    group.add_argument("--num_train_epochs", type=int, default=100, help="Epochs to train when --max_train_steps is not given.")
    group.add_argument("--use_8bit_adam", action="store_true", help="Use bitsandbytes' 8-bit AdamW (needs bitsandbytes and a GPU).")
    group.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    group.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    group.add_argument("--adam_weight_decay", type=float, default=1e-2, help="AdamW weight decay.")
    group.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="Clip the gradient norm to this value (0 disables clipping).")
    group.add_argument("--max_nonfinite_steps", type=int, default=5, help="An optimizer step whose loss is NaN or inf updates nothing and is counted; after this many in a row the run saves a checkpoint and stops.")
    group.add_argument("--use_ema", action="store_true", help="Keep an exponential moving average of the trainable weights; validation and the saved model use it.")
    group.add_argument("--ema_decay", type=float, default=0.9999, help="Maximum EMA decay (with the usual warm-up of the decay).")
    group.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matrix products on Ampere or newer GPUs.")
    group.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"], help="Mixed precision; defaults to the accelerate config. Frozen modules are held in this dtype.")
    group.add_argument("--enable_xformers_memory_efficient_attention", action="store_true", help="Use xformers attention (must be installed); PyTorch's scaled-dot-product attention is the default.")
    group.add_argument("--seed", type=int, default=None, help="Seed for a reproducible run.")

    group = parser.add_argument_group("checkpoints and logging")
    group.add_argument("--output_dir", type=str, required=True, help=(
        "Where checkpoints, validation outputs, logs and the final pipeline go. A folder holding an earlier run (checkpoints or a "
        "saved pipeline) is refused unless --resume_from_checkpoint continues it or --overwrite_output_dir replaces it."))
    group.add_argument("--overwrite_output_dir", action="store_true", help=(
        "Start over in an --output_dir that holds an earlier run: first remove what training wrote there (checkpoints, the saved "
        "pipeline, validation outputs, the TensorBoard folder inside it, train.log); other files stay."))
    group.add_argument("--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint-<step>/ every this many optimizer steps.")
    group.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints of this run (its oldest removed after the new one is complete; another run's are never counted or removed).")
    group.add_argument("--resume_from_checkpoint", type=str, default=None, help='A checkpoint folder, or "latest" for the newest in --output_dir (a fresh start if there is none).')
    group.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all" or "none".')
    group.add_argument("--logging_dir", type=str, default="logs", help="TensorBoard folder, relative to --output_dir.")


def parse_training_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Add the shared flags to a script's parser, parse, and refuse values that cannot work and an --output_dir that holds
    another run, before any model is loaded."""
    add_shared_training_args(parser)
    args = parser.parse_args(argv)
    check_shared_args(args)
    check_training_output_dir(args)
    return args


def require_at_least(args, minimum: int, *names: str) -> None:
    """Refuse count flags below `minimum` (e.g. 0 steps between checkpoints would divide by zero after step 1)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise SetupError(f"--{name} must be at least {minimum}, got {value}")


def check_shared_args(args) -> None:
    """Refuse flag values that cannot work, before any model is loaded."""
    require_at_least(args, 1, "gradient_accumulation_steps", "max_nonfinite_steps", "checkpoints_total_limit", "checkpointing_steps",
                     "max_train_steps", "num_train_epochs")
    require_at_least(args, 0, "lr_warmup_steps")
    if args.report_to in ("wandb", "all") and importlib.util.find_spec("wandb") is None:
        raise SetupError("--report_to wandb needs the wandb package: pip install wandb")
    if args.report_to in ("wandb", "all") and (problem := wandb_login_problem()):
        raise SetupError(f"--report_to {args.report_to}: {problem}")
    if args.enable_xformers_memory_efficient_attention and importlib.util.find_spec("xformers") is None:
        raise SetupError("--enable_xformers_memory_efficient_attention: xformers is not installed (pip install xformers), or drop the flag to use PyTorch's scaled-dot-product attention")
    if args.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        raise SetupError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes")


# Engines that change what the training scripts rely on, refused until a configuration of one is made to work and verified:
# accelerate launch's flag, the variable it sets for the script, and what the engine would change without saying so.
UNSUPPORTED_ENGINES = {
    DistributedType.DEEPSPEED: ("--use_deepspeed", "ACCELERATE_USE_DEEPSPEED",
                                "it steps the optimizer inside backward(), so a NaN or inf loss would update the weights and "
                                "--max_grad_norm would be ignored, and it bypasses the checkpoints of the trainable weights"),
    DistributedType.FSDP: ("--use_fsdp", "ACCELERATE_USE_FSDP",
                           "it flattens the parameters, which fails on frozen weights held in another dtype, and its DTensors "
                           "break the safetensors checkpoints and the parameters that EMA and clipping hold"),
}
# The memory options to use instead, as (flag, the script's argument name): a script names those it has.
MEMORY_OPTIONS = [("--gradient_checkpointing", "gradient_checkpointing"), ("--use_8bit_adam", "use_8bit_adam"),
                  ("--mixed_precision bf16", "mixed_precision"), ("cached latents (--latents_cache_dir)", "latents_cache_dir"),
                  ("--scl_num_frames", "scl_num_frames")]


def refuse_unsupported_engines(args, distributed_type=None) -> None:
    """Stop in one line under DeepSpeed or FSDP (as `accelerate launch` sets them, or as the Accelerator found them).

    Called before the Accelerator is created (which would already start the engine) and again after, with its type.
    """
    for engine, (flag, variable, why) in UNSUPPORTED_ENGINES.items():
        if parse_flag_from_env(variable) or distributed_type == engine:
            instead = ", ".join(option for option, name in MEMORY_OPTIONS if hasattr(args, name))
            raise SetupError(
                f"accelerate launch {flag} (distributed_type {engine.value}): not supported by this script, {why}. Supported: "
                f"DDP on any number of GPUs and machines (accelerate launch --multi_gpu, README \"Scaling out\"); "
                f"to save memory use {instead}"
            )


def flush_denormals() -> None:
    """Treat subnormal floats as zero on the CPU: tiny values from softmax and Adam otherwise slow CPU math 100x.

    GPUs already flush them in the kernels that matter; results change by less than 1e-38.
    """
    torch.set_flush_denormal(True)


def create_accelerator(args, cpu: bool = False):
    """The run's Accelerator: accumulation, precision and trackers from the flags, logs under --output_dir/--logging_dir."""
    output_dir = Path(args.output_dir)
    flush_denormals()
    project_config = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir))
    # A seedable sampler makes the shuffle order a function of (seed, epoch), so resume continues it.
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=project_config,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        cpu=cpu,
    )


class ConsoleHandler(logging.Handler):
    """Log lines through tqdm, so that they never share a line with a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_logging(accelerator, output_dir) -> None:
    """Log once, from the main process: to the console and to `<output_dir>/train.log` (which also gets a line per optimizer step)."""
    formatter = logging.Formatter("%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S")
    root = logging.getLogger()
    # A second run in the same process (tests) replaces the first run's handlers instead of writing into its log.
    for logger in (root, step_logger):
        for handler in [h for h in logger.handlers if getattr(h, "training_run", False)]:
            logger.removeHandler(handler)
            handler.close()
    console = ConsoleHandler()
    handlers = [(root, console)]
    if accelerator.is_main_process:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        log_file = logging.FileHandler(Path(output_dir) / "train.log")
        handlers += [(root, log_file), (step_logger, log_file)]
    for logger, handler in handlers:
        handler.training_run = True
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    step_logger.propagate = False
    step_logger.setLevel(logging.INFO)
    # Every process runs the same code: only the main one speaks, the others only of errors.
    root.setLevel(logging.INFO if accelerator.is_main_process else logging.ERROR)
    library_verbosity = "warning" if accelerator.is_main_process else "error"
    for library in (datasets, diffusers, transformers):
        getattr(library.utils.logging, f"set_verbosity_{library_verbosity}")()


def check_processes_connected(accelerator) -> None:
    """Refuse processes that a launcher started together but that do not form one run (e.g. a multi-GPU accelerate config
    on a machine without GPUs): each would train alone and write the same checkpoints."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        if int(os.environ.get("RANK", "0")) != 0:
            # The first process says why; the others stop without repeating it.
            sys.exit(2)
        raise SetupError(
            f"the launcher started {launched} processes, but they are not connected ({accelerator.device.type} only, "
            f"distributed type {accelerator.distributed_type.value}): each would train alone and overwrite the same checkpoints. "
            "Without GPUs run one process (accelerate launch --num_processes 1 ...) or connected CPU processes "
            "(ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 ...)")


def check_precision_runs(accelerator) -> None:
    """Refuse fp16 where Accelerate cannot run it (the CPU: no fp16 autocast and no loss scaling, so nothing would be mixed
    precision and GenEx's UNet, fp32 trainable and fp16 frozen weights in one module, fails at step 1)."""
    if accelerator.mixed_precision == "fp16" and not accelerator.native_amp:
        raise SetupError(f"--mixed_precision fp16 (from the flag or the accelerate config): Accelerate cannot run fp16 on "
                         f"{accelerator.device.type}; use --mixed_precision bf16 or --mixed_precision no")


def start_run(args, script_logger: logging.Logger):
    """The Accelerator (refused when its processes are not connected or its precision cannot run), --overwrite_output_dir,
    logging (console and train.log), the seed and TF32, before any model loads; returns the Accelerator."""
    refuse_unsupported_engines(args)
    accelerator = create_accelerator(args)
    refuse_unsupported_engines(args, accelerator.distributed_type)
    check_processes_connected(accelerator)
    check_precision_runs(accelerator)
    # Only the main process removes the earlier run; the others wait, so none writes into a folder being cleared.
    removed = clear_earlier_run(args.output_dir, args.logging_dir) if args.overwrite_output_dir and accelerator.is_main_process else []
    accelerator.wait_for_everyone()
    setup_logging(accelerator, args.output_dir)
    if removed:
        script_logger.info("--overwrite_output_dir: removed the earlier run's %s", ", ".join(sorted(p.name for p in removed)))
    script_logger.info(accelerator.state)
    if args.seed is not None:
        set_seed(args.seed)
    allow_tf32(args.allow_tf32)
    return accelerator


def prepare_unet(unet, args) -> None:
    """The UNet as the flags ask: xformers attention, gradient checkpointing, and (GenEx) compilation in place."""
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if getattr(args, "compile", False):
        # In place: parameter names, checkpoints and the final save see the plain UNet.
        unet.compile()


def finish_run(run: TrainingRun, save: Callable[[torch.nn.Module], None]) -> None:
    """After the last step: the weight checksums of every process, then `save(unwrapped model)` on the main process with the EMA weights if used."""
    accelerator = run.accelerator
    log_weight_checksums(accelerator, run.params)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with ema_weights_swapped_in(run.ema, run.params):
            save(accelerator.unwrap_model(run.model))
        share_saved_pipeline(run.args.output_dir)
        logging.getLogger(__name__).info("Saved the trained pipeline to %s", run.args.output_dir)
    # Every process tears its process group down together: one that destroys it while the main process is still saving may
    # hang (pytorch/pytorch#75097); a 2-process run on CI waited 10 minutes here once.
    accelerator.wait_for_everyone()
    accelerator.end_training()


def weight_dtype(accelerator) -> torch.dtype:
    """The dtype of frozen modules: the mixed-precision dtype, fp32 otherwise."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def create_optimizer(params, args, num_processes: int, batch_size: int):
    """AdamW (or bitsandbytes' 8-bit AdamW) with the --adam_* flags and optional LR scaling."""
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * batch_size * num_processes
    if args.use_8bit_adam:
        import bitsandbytes

        optimizer_cls = bitsandbytes.optim.AdamW8bit
    else:
        optimizer_cls = torch.optim.AdamW
    return optimizer_cls(
        params,
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def training_length(args, num_batches_per_process: int) -> tuple[int, int, int]:
    """(max_train_steps, num_train_epochs, optimizer steps per epoch) from the flags and the data size."""
    steps_per_epoch = max(1, math.ceil(num_batches_per_process / args.gradient_accumulation_steps))
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_train_epochs = math.ceil(max_train_steps / steps_per_epoch)
    return max_train_steps, num_train_epochs, steps_per_epoch


def lr_schedule_name(lr_scheduler: str, lr_warmup_steps: int) -> str:
    """The diffusers schedule that does what the flags say: diffusers' "constant" ignores warm-up, "constant_with_warmup" does not."""
    return "constant_with_warmup" if lr_scheduler == "constant" and lr_warmup_steps > 0 else lr_scheduler


def create_lr_scheduler(optimizer, args, max_train_steps: int, num_processes: int):
    """diffusers' scheduler, counted in optimizer steps (Accelerate steps it once per process)."""
    name = lr_schedule_name(args.lr_scheduler, args.lr_warmup_steps)
    if name != args.lr_scheduler:
        logging.getLogger(__name__).info("--lr_scheduler %s with --lr_warmup_steps %d: linear warm-up over %d optimizer steps, then constant "
                                         "(diffusers' %s)", args.lr_scheduler, args.lr_warmup_steps, args.lr_warmup_steps, name)
    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * num_processes,
        num_training_steps=max_train_steps * num_processes,
    )


def init_trackers(accelerator, project: str, args) -> None:
    """Start TensorBoard / wandb with the run's flags as its configuration."""
    if accelerator.is_main_process:
        accelerator.init_trackers(project, config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})


def prepare_training(accelerator, args, model, params: list, dataloader, batch_size: int, project: str, items: str, ema=None, ema_names=None,
                     generator=None) -> TrainingRun:
    """Optimizer, LR schedule, Accelerate wrapping, checkpoint hooks, trackers and resume, the same for both scripts.

    `params` are the trainable parameters (clipped, stepped and averaged by EMA); `items` names what the dataset
    holds, for the log. The run starts where a resumed checkpoint left off.
    """
    optimizer = create_optimizer(params, args, accelerator.num_processes, batch_size)
    max_train_steps, num_train_epochs, steps_per_epoch = training_length(args, math.ceil(len(dataloader) / accelerator.num_processes))
    lr_scheduler = create_lr_scheduler(optimizer, args, max_train_steps, accelerator.num_processes)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    register_trainable_weights_hooks(accelerator)
    init_trackers(accelerator, project, args)
    global_step, first_epoch, batches_to_skip, run_id = resume_training(accelerator, args, steps_per_epoch, ema, ema_names, generator)
    logging.getLogger(__name__).info(
        "%d %s, %d epochs, %d optimizer steps, batch %d x %d processes x %d accumulation", len(dataloader.dataset), items, num_train_epochs,
        max_train_steps, batch_size, accelerator.num_processes, args.gradient_accumulation_steps)
    progress = tqdm(total=max_train_steps, initial=global_step, desc="steps", disable=not accelerator.is_local_main_process)
    return TrainingRun(accelerator, args, model, optimizer, dataloader, lr_scheduler, list(params), ema, ema_names, generator,
                       global_step, max_train_steps, num_train_epochs, first_epoch, batches_to_skip,
                       NonFiniteLossGuard(accelerator, args.max_nonfinite_steps), progress, run_id=run_id)


def create_ema(named_params: list[tuple[str, torch.nn.Parameter]], decay: float):
    """EMA over the trainable parameters only; returns (ema, parameter names)."""
    names = [name for name, _ in named_params]
    return EMAModel([p for _, p in named_params], decay=decay), names


@contextlib.contextmanager
def ema_weights_swapped_in(ema, params):
    """Inside, `params` hold the EMA weights (for validation and saving); a no-op without EMA."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def create_generator(accelerator, seed) -> torch.Generator:
    """The generator of every random draw of the training step, one stream per process, saved in checkpoints."""
    return torch.Generator(device=accelerator.device).manual_seed((seed or 0) * 1000 + accelerator.process_index)


@contextlib.contextmanager
def inference_precision(accelerator, modules):
    """Precision for running a pipeline mid-training, whose modules mix fp32 trainable and low-precision frozen weights.

    On a GPU, autocast. Elsewhere (CPU bf16), the modules run in fp32 for the duration: image
    processors cannot read CPU bf16 tensors, and bf16 -> fp32 -> bf16 restores every weight exactly.
    """
    if accelerator.mixed_precision == "no":
        yield
    elif accelerator.device.type == "cuda":
        with torch.autocast("cuda", dtype=weight_dtype(accelerator)):
            yield
    else:
        dtypes = [{name: p.dtype for name, p in module.named_parameters()} for module in modules]
        for module in modules:
            module.float()
        try:
            yield
        finally:
            for module, module_dtypes in zip(modules, dtypes):
                for name, param in module.named_parameters():
                    param.data = param.data.to(module_dtypes[name])


def allow_tf32(enabled: bool) -> None:
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
