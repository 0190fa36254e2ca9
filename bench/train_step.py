r"""The real training step of each script, timed part by part: data, VAE encode, CLIP / text encode,
UNet forward+backward, SCL, optimizer; peak memory; model FLOPs and, on a GPU, model FLOP utilisation.

    python -m bench.train_step --pipeline genex --tiny --compare scl cache
    python -m bench.train_step --pipeline pecn --tiny
    python -m bench.train_step --pipeline genex --full --mixed_precision bf16 --gradient_checkpointing   # SVD-xt 1024x576x25
    python -m bench.train_step --pipeline genex --full --width 256 --height 128 --num_frames 4            # runs on a CPU
    python -m bench.train_step --pipeline genex --full --device meta --compare scl cache                  # FLOPs at 1024x576x25, any machine

The step is built from the functions the training scripts call, in their order, under the same
Accelerator (autocast, loss scaling, gradient clipping), optimizer and LR schedule. `--tiny` uses the
tiny random pipelines of genex/tiny.py and pecn/tiny.py; `--full` the full-size architectures of
DESIGN.md with random weights (bench/full_size.py), so nothing is downloaded.

How it is measured:
- the device is synchronized before and after every part, so each part's time is its own;
- GenEx's backward is split at the denoiser output D (the chain rule: the same gradients): the loss and
  SCL's decode / re-encode with their backward are timed as `scl`, the UNet's forward and backward as
  `unet_fwd_bwd`;
- `step_ms` is the compute of one step (everything but data); `data_ms` is the DataLoader's work done
  here in the main process (in training, --num_workers overlaps it); `total_ms` is both, the median of
  interleaved rounds (bench.timing);
- FLOPs are counted with torch.utils.flop_counter on one untimed step with gradient checkpointing off
  (model FLOPs: recomputation is not counted; `flops_include_recompute` says when memory forced it on).
  Attention is counted with torch's formulas for its flash kernels on CUDA and CPU alike (their backward
  includes the kernel's recomputation of the scores); `--device meta` counts the same model work on
  empty tensors, where attention takes SDPA's math path, so nothing runs and any size counts in seconds.
  As in the script, SCL's VAE decode and encode chunks are checkpointed exactly when the UNet is; MFU = FLOPs / time / peak, peak 800 TFLOP/s bf16 on an
  H100 or H200 (DESIGN.md), printed on a GPU only;
- peak memory: torch.cuda.max_memory_allocated and max_memory_reserved per configuration on a GPU (the
  16 GiB verdict uses reserved); on a CPU the peak resident memory of the whole process (it includes
  model construction and every configuration run).
"""

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from PIL import Image
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from bench.full_size import SVD_TEMPORAL_PARAMS_M, SVD_UNET_PARAMS_M, build_instruct_pix2pix_full, build_svd_full
from bench.timing import interleaved_medians, report
from common.cli import run_cli
from common.loop import NonFiniteLossGuard, optimizer_step
from common.training import add_shared_training_args, check_shared_args, create_accelerator, create_lr_scheduler, create_optimizer, weight_dtype
from genex import step as genex_step
from genex.data import FrameFolderDataset
from genex.latent_cache import LatentCacheDataset, build_latent_cache
from genex.models import Encoders, check_svd_fits, device_placement, freeze_all_but_temporal_blocks
from genex.tiny import build_tiny_svd_pipeline
from pecn import step as pecn_step
from pecn.models import Components
from pecn.pairs import collate, pair_transform
from pecn.prompts import build_prompt
from pecn.tiny import INSTRUCT_PIX2PIX_SCHEDULER_CONFIG, build_tiny_components
from pecn.unet import expand_conv_in

GIB = 2**30
# DESIGN.md: the practical bf16 matrix-product peak measured on the project's lent H100 / H200 machines.
KNOWN_PEAK_TFLOPS = {"H100": 800.0, "H200": 800.0}
RECIPE_BUDGET_GIB = 16.0
# (width, height, num_frames, batch size) when not given.
DEFAULT_SIZES = {
    ("genex", "full"): (1024, 576, 25, 1),
    ("genex", "tiny"): (64, 32, 4, 1),
    ("pecn", "full"): (128, 128, None, 16),
    ("pecn", "tiny"): (32, 32, None, 2),
}
PARTS = {
    "genex": ["data", "vae_encode", "clip_encode", "unet_fwd_bwd", "scl", "optimizer"],
    "pecn": ["data", "vae_encode", "text_encode", "unet_fwd_bwd", "optimizer"],
}
COMPARABLE = ("scl", "cache", "checkpointing")
# The step functions' part names that the table reports under another: the UNet's forward goes with its backward.
STEP_PARTS = {"unet_fwd": "unet_fwd_bwd"}
# The length of the LR schedule (and of the SCL weight schedule) the timed steps sit at the start of.
SCHEDULE_STEPS = 10**6


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The switches that may differ between configurations timed side by side on the same models."""

    name: str
    scl: bool
    cached: bool
    checkpointing: bool


def parse_args(argv=None):
    # The objective's flags are those of the chosen pipeline's training script, so the step is benchmarked with the script's options.
    chooser = argparse.ArgumentParser(add_help=False)
    chooser.add_argument("--pipeline", choices=["genex", "pecn"])
    pipeline = chooser.parse_known_args(argv)[0].pipeline or "genex"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", choices=["genex", "pecn"], required=True, help="genex: SVD temporal blocks (train_world_explorer.py); pecn: InstructPix2Pix (train_instruct_pix2pix.py).")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--tiny", action="store_true", help="The tiny random pipelines the tests use (CPU-friendly).")
    size.add_argument("--full", action="store_true", help="The full-size architectures of DESIGN.md with random weights.")
    parser.add_argument("--width", type=int, default=None, help="Pixels; default 1024 (genex --full), 128 (pecn --full), small with --tiny. PECN is square: --width = --height.")
    parser.add_argument("--height", type=int, default=None, help="Pixels; defaults as --width (576 for genex --full).")
    parser.add_argument("--num_frames", type=int, default=None, help="Frames per clip (genex only); default 25 with --full.")
    parser.add_argument("--batch_size", type=int, default=None, help="Samples per step; default 1 (genex) or 16 (pecn --full).")
    parser.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default="no", help="As the scripts' flag: autocast, and frozen modules held in this dtype.")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Recompute UNet activations in the backward pass (GenEx: SCL's VAE chunks too, as in the script).")
    parser.add_argument("--cached_latents", action="store_true", help="GenEx: read VAE posterior statistics and CLIP embeddings from a latent cache instead of encoding frames (genex/latent_cache.py); the image encoder stays off the device.")
    parser.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' 8-bit AdamW (needs bitsandbytes and a GPU).")
    parser.add_argument("--compile", action="store_true", help="Compile the UNet in place (nn.Module.compile), as train_world_explorer.py --compile does.")
    parser.add_argument("--compare", nargs="+", choices=COMPARABLE, default=None,
                        help="Time, interleaved on the same models, the configuration with these switches off and with each one on (other flags as given); prints each one's step time relative to the first.")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per configuration (interleaved rounds).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps per configuration first.")
    parser.add_argument("--peak_tflops", type=float, default=None, help="Peak TFLOP/s for MFU; default 800 on an H100 or H200 (DESIGN.md), MFU n/a on other devices.")
    parser.add_argument("--device", choices=["cuda", "cpu", "meta"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="Default cuda when available. meta: count each part's model FLOPs on the meta device, computing and allocating nothing, "
                             "so any size counts in seconds on any machine (no times, memory or MFU; --steps, --warmup and --mixed_precision do not change a count).")
    (genex_step if pipeline == "genex" else pecn_step).add_objective_args(parser)
    args, unknown = parser.parse_known_args(argv)
    # The other pipeline's objective flags get a message that says so, not just "unrecognized".
    other = argparse.ArgumentParser(add_help=False)
    (pecn_step if pipeline == "genex" else genex_step).add_objective_args(other)
    not_other = other.parse_known_args(unknown)[1]
    for flag in unknown:
        if flag.startswith("--") and flag not in not_other:
            parser.error(f"{flag.split('=')[0]}: {'PECN' if pipeline == 'genex' else 'GenEx'} only")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return resolve_args(parser, args)


def resolve_args(parser, args):
    """Fill the pipeline's default sizes and refuse combinations that cannot run."""
    defaults = DEFAULT_SIZES[(args.pipeline, "full" if args.full else "tiny")]
    args.width = args.width or defaults[0]
    args.height = args.height or (args.width if args.pipeline == "pecn" else defaults[1])
    args.batch_size = args.batch_size or defaults[3]
    if args.pipeline == "genex":
        args.num_frames = args.num_frames or defaults[2]
    else:
        genex_only = [flag for flag, value in [("--num_frames", args.num_frames), ("--cached_latents", args.cached_latents)] if value]
        genex_only += [f"--compare {name}" for name in args.compare or [] if name != "checkpointing"]
        if genex_only:
            parser.error(f"{', '.join(genex_only)}: GenEx only")
        if args.width != args.height:
            parser.error(f"PECN trains square images: --width {args.width} and --height {args.height} differ")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.device == "meta" and (args.compile or args.use_8bit_adam):
        parser.error("--device meta counts the model's FLOPs and runs no optimizer or compiler: drop --compile and --use_8bit_adam")
    if args.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        parser.error("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes")
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or getattr(args, "num_scl_samples", 1) < 1:
        parser.error("--steps, --num_scl_samples and --batch_size must be >= 1, --warmup >= 0")
    return args


def step_configs(args) -> list[StepConfig]:
    """The flags' configuration, or with --compare: the compared switches all off, then each one on."""
    base = dict(scl=getattr(args, "scl_loss", False), cached=args.cached_latents, checkpointing=args.gradient_checkpointing)
    if not args.compare:
        return [StepConfig("run", **base)]
    fields = {"scl": "scl", "cache": "cached", "checkpointing": "checkpointing"}
    off = base | {fields[name]: False for name in args.compare}
    return [StepConfig("base", **off)] + [StepConfig(f"+{name}", **(off | {fields[name]: True})) for name in args.compare]


def count_cpu_attention_flops() -> None:
    """Count attention on the CPU as on CUDA and meta: torch.utils.flop_counter has no formula for SDPA's CPU kernels."""
    aten, registry = torch.ops.aten, flop_counter.flop_registry
    # The CPU kernels take the CUDA flash kernels' leading arguments, so the CUDA formulas apply as they are.
    formulas = {aten._scaled_dot_product_flash_attention_for_cpu: registry[aten._scaled_dot_product_flash_attention],
                aten._scaled_dot_product_flash_attention_for_cpu_backward: registry[aten._scaled_dot_product_flash_attention_backward]}
    for op, formula in formulas.items():
        if op not in registry:
            flop_counter.register_flop_formula(op, get_raw=True)(formula)


class StepTimer:
    """Seconds per named part of each step (device synchronized around each part) or, while counting, FLOPs per part."""

    def __init__(self, synchronize):
        self.synchronize = synchronize
        self.steps: dict[str, list[dict]] = defaultdict(list)
        self.losses: dict[str, list[float]] = defaultdict(list)
        self.current = None
        self.current_loss = None
        self.flops = None

    def step_part(self, name: str):
        """The part of a step function (genex.step, pecn.step) named `name`: the UNet's forward is timed with its backward."""
        return self.part(STEP_PARTS.get(name, name))

    def record_loss(self, loss: torch.Tensor) -> None:
        """The loss of the step being timed (an objective option changes it; the same options give the same value)."""
        if self.current is not None:
            self.current_loss = float(loss.detach())

    @contextlib.contextmanager
    def part(self, name: str):
        if self.flops is not None:
            with FlopCounterMode(display=False) as counter:
                yield
            self.flops[name] += counter.get_total_flops()
            return
        self.synchronize()
        start = time.perf_counter()
        yield
        self.synchronize()
        if self.current is not None:
            self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - start

    @contextlib.contextmanager
    def step(self, config_name: str):
        """Record the parts and the wall time of one step of `config_name`."""
        self.current = {}
        self.synchronize()
        start = time.perf_counter()
        yield
        self.synchronize()
        self.current["wall"] = time.perf_counter() - start
        self.steps[config_name].append(self.current)
        if self.current_loss is not None:
            self.losses[config_name].append(self.current_loss)
        self.current, self.current_loss = None, None

    def count_flops(self, run) -> dict[str, int]:
        """FLOPs per part of one call of `run` (not timed)."""
        count_cpu_attention_flops()
        self.flops = defaultdict(int)
        try:
            run()
            return dict(self.flops)
        finally:
            self.flops = None

    def medians(self, config_name: str) -> dict[str, float]:
        """Median seconds per part, and of `compute` (the step's wall time less its data part)."""
        steps = self.steps[config_name]
        names = {name for step in steps for name in step}
        medians = {name: statistics.median(step.get(name, 0.0) for step in steps) for name in names}
        medians["compute"] = statistics.median(step["wall"] - step.get("data", 0.0) for step in steps)
        return medians


def shared_training_args(args, output_dir: str):
    """The scripts' own optimisation flags (add_shared_training_args) with their defaults and this run's switches."""
    parser = argparse.ArgumentParser()
    add_shared_training_args(parser)
    argv = ["--output_dir", output_dir, "--mixed_precision", args.mixed_precision, "--report_to", "none"] + ["--use_8bit_adam"] * args.use_8bit_adam
    shared = parser.parse_args(argv)
    check_shared_args(shared)
    return shared


def set_up_optimizer(args, accelerator, shared, models: dict, configs: list[StepConfig]):
    """The UNet as the scripts set it up (checkpointing as the first configuration, --compile in place), AdamW (or
    8-bit AdamW) and the LR schedule of common.training, wrapped by Accelerate; models["unet"] becomes the wrapped UNet.

    Returns (the unwrapped UNet, optimizer, LR scheduler).
    """
    base_unet = models["unet"]
    set_checkpointing(base_unet, configs[0].checkpointing)
    if args.compile:
        base_unet.compile()
    optimizer = create_optimizer(models["params"], shared, accelerator.num_processes, args.batch_size)
    lr_scheduler = create_lr_scheduler(optimizer, shared, max_train_steps=SCHEDULE_STEPS, num_processes=accelerator.num_processes)
    models["unet"], optimizer, lr_scheduler = accelerator.prepare(base_unet, optimizer, lr_scheduler)
    return base_unet, optimizer, lr_scheduler


def set_checkpointing(unet, enabled: bool) -> None:
    if enabled != unet.is_gradient_checkpointing:
        (unet.enable_gradient_checkpointing if enabled else unet.disable_gradient_checkpointing)()


def forever(loader):
    while True:
        yield from loader


def smooth_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random RGB image (compresses and decodes like a photo, unlike white noise)."""
    coarse = rng.integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def write_frame_folders(root: Path, count: int, num_frames: int, width: int, height: int) -> Path:
    """`count` folders of `num_frames` JPEG frames, as prepare_dataset.py writes them."""
    rng = np.random.default_rng(0)
    for video in range(count):
        folder = root / f"video_{video:05d}"
        folder.mkdir(parents=True)
        for index in range(num_frames):
            Image.fromarray(smooth_image(rng, width, height)).save(folder / f"frame_{index + 1:04d}.jpg", quality=95)
    return root


def build_genex_models(args, dtype):
    """Feature extractor, image encoder, VAE, UNet: tiny (genex/tiny.py) or full size (bench/full_size.py)."""
    if args.full:
        models = build_svd_full(dtype, args.device)
    else:
        models = build_tiny_svd_pipeline().components
    return models["feature_extractor"], models["image_encoder"], models["vae"], models["unet"]


def genex_models(args, dtype) -> dict:
    """The SVD components as train_world_explorer.py holds them: frozen modules in `dtype`, float32 temporal blocks (on --device meta: there)."""
    feature_extractor, image_encoder, vae, unet = build_genex_models(args, dtype)
    check_svd_fits(vae, unet, "the benchmark's SVD", args.width, args.height)
    vae.requires_grad_(False).to(dtype=dtype)
    image_encoder.requires_grad_(False).to(dtype=dtype)
    params = [param for _, param in freeze_all_but_temporal_blocks(unet, dtype)]
    # Trainable weights train in float32, as from_pretrained loads them (the full-size builder makes them in `dtype`).
    for param in params:
        param.data = param.data.float()
    if args.device == "meta":
        # Also what the builders leave on the CPU (tiny models; the mixing factors diffusers creates with torch.Tensor).
        for module in (image_encoder, vae, unet):
            module.to("meta")
    info = {"unet_m": sum(p.numel() for p in unet.parameters()) / 1e6, "trainable_m": sum(p.numel() for p in params) / 1e6}
    return dict(encoders=Encoders(vae, image_encoder, feature_extractor), unet=unet, params=params, dtype=dtype, info=info,
                objective=genex_step.Objective.from_args(args))


def genex_model_work(args, models: dict, batch: dict, config: StepConfig, timer: StepTimer, generator, backward) -> torch.Tensor:
    """The model work of one train_world_explorer.py step (genex.step), per timed (or counted) part: VAE and CLIP encodes,
    UNet forward + backward, SCL; returns the loss.

    `batch` is a DataLoader batch on the device (uint8 pixels; the cached statistics with `config.cached`).
    """
    objective = dataclasses.replace(models["objective"], scl_loss=config.scl)
    vae = models["encoders"].vae
    prediction = genex_step.predict(batch, models["unet"], models["encoders"], objective, generator, models["dtype"], part=timer.step_part)
    # The backward is split at D so that the losses' share (SCL's decode and re-encode) is timed apart.
    D_leaf = prediction.D.detach().requires_grad_()
    with timer.part("scl"):
        loss, _ = genex_step.loss_of(dataclasses.replace(prediction, D=D_leaf), vae, objective, generator, 0, SCHEDULE_STEPS, config.checkpointing)
        backward(loss)
    with timer.part("unet_fwd_bwd"):
        prediction.D.backward(D_leaf.grad)
    return loss


def genex_meta_batch(args, config: StepConfig, models: dict) -> dict:
    """Empty meta tensors shaped and typed as a GenEx batch: FrameFolderDataset's, or LatentCacheDataset's with `config.cached`."""
    vae, image_encoder = models["encoders"].vae, models["encoders"].image_encoder
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    clip, pixels = (args.batch_size, args.num_frames), (3, args.height, args.width)
    batch = {"pixel_values": torch.empty(*clip, *pixels, dtype=torch.uint8, device="meta")}
    if not config.cached:
        return batch
    latents = torch.empty(*clip, vae.config.latent_channels, args.height // scale, args.width // scale, dtype=torch.float16, device="meta")
    cached = {"latent_mean": latents, "latent_std": latents, "first_frame": batch["pixel_values"][:, 0],
              "clip_embedding": torch.empty(args.batch_size, image_encoder.config.projection_dim, device="meta")}
    # As LatentCacheDataset: the other frames' pixels only for SCL.
    return cached | (batch if config.scl else {})


def genex_setup(args, accelerator, configs, workdir: Path):
    """Models placed as train_world_explorer.py places them, the optimizer, data; returns (step function, info)."""
    dtype = weight_dtype(accelerator)
    device = accelerator.device
    models = genex_models(args, dtype)
    encoders = models["encoders"]
    frames_root = write_frame_folders(workdir / "frames", args.batch_size, args.num_frames, args.width, args.height)
    loaders = {}
    if any(not config.cached for config in configs):
        loaders[False] = FrameFolderDataset(frames_root, args.num_frames, args.width, args.height)
    if any(config.cached for config in configs):
        # The cache as genex.cache_latents writes it, from the models as built; read with the script's dataset.
        build_latent_cache(frames_root, workdir / "cache", *encoders, args.width, args.height, device, dtype, args.decode_chunk_size)
        loaders[True] = LatentCacheDataset(frames_root, workdir / "cache", args.num_frames, args.width, args.height,
                                           with_pixels=any(config.cached and config.scl for config in configs))
    batches = {cached: forever(torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=0)) for cached, dataset in loaders.items()}

    # Frozen modules on the device only when a step needs them (the script's placement when every configuration is cached).
    on_device, off_device = device_placement(False not in loaders, any(config.scl for config in configs), encoders)
    for module in off_device:
        module.to("cpu")
    for module in on_device:
        module.to(device)
    params = models["params"]
    shared = shared_training_args(args, str(workdir))
    base_unet, optimizer, lr_scheduler = set_up_optimizer(args, accelerator, shared, models, configs)
    generator = torch.Generator(device=device).manual_seed(0)
    nonfinite = NonFiniteLossGuard(accelerator, shared.max_nonfinite_steps)

    def step(config: StepConfig, timer: StepTimer) -> None:
        set_checkpointing(base_unet, config.checkpointing)
        with timer.part("data"):
            batch = {key: value.to(device) for key, value in next(batches[config.cached]).items() if torch.is_tensor(value)}
        loss = genex_model_work(args, models, batch, config, timer, generator, accelerator.backward)
        with timer.part("optimizer"):
            optimizer_step(accelerator, optimizer, lr_scheduler, params, nonfinite, shared.max_grad_norm, loss)
        timer.record_loss(loss)

    return step, models["info"]


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def build_pecn_models(args, dtype, workdir: Path) -> dict:
    """noise_scheduler, tokenizer, text_encoder, vae, unet: tiny (pecn/tiny.py) or full size (bench/full_size.py)."""
    if args.full:
        return build_instruct_pix2pix_full(dtype, args.device)
    return build_tiny_components(8, 0, workdir / "tokenizer") | {"noise_scheduler": DDPMScheduler(**INSTRUCT_PIX2PIX_SCHEDULER_CONFIG)}


def pecn_models(args, dtype, workdir: Path) -> dict:
    """The InstructPix2Pix components as train_instruct_pix2pix.py holds them: frozen VAE and text encoder in `dtype` on the device, a float32 8-channel UNet."""
    built = build_pecn_models(args, dtype, workdir)
    unet = expand_conv_in(built["unet"]).float().to(args.device)
    unet.train()
    for name in ("vae", "text_encoder"):
        built[name].requires_grad_(False).to(args.device, dtype=dtype)
    components = Components(built["noise_scheduler"], built["tokenizer"], built["text_encoder"], built["vae"], unet)
    tokenizer = components.tokenizer
    null_prompt_ids = tokenizer([""], max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        null_text_embedding = components.text_encoder(null_prompt_ids.to(args.device))[0].float()
    params = list(unet.parameters())
    info = {"unet_m": sum(p.numel() for p in params) / 1e6, "trainable_m": sum(p.numel() for p in params) / 1e6}
    return dict(components=components, unet=unet, params=params, dtype=dtype, null_text_embedding=null_text_embedding, info=info,
                objective=pecn_step.Objective.from_args(args))


def pecn_model_work(args, models: dict, batch: dict, config: StepConfig, timer: StepTimer, generator, backward) -> torch.Tensor:
    """The model work of one train_instruct_pix2pix.py step (pecn.step), per timed (or counted) part: VAE and text encodes,
    UNet forward + backward; returns the loss."""
    prediction, target = pecn_step.predict(batch, models["unet"], models["components"], models["null_text_embedding"], models["objective"],
                                           generator, models["dtype"], part=timer.step_part)
    with timer.part("unet_fwd_bwd"):
        loss = pecn_step.loss_of(prediction, target)
        backward(loss)
    return loss


def pecn_meta_batch(args, config: StepConfig, models: dict) -> dict:
    """Empty meta tensors shaped and typed as a batch of train_instruct_pix2pix.py's transform and collate."""
    pixels = torch.empty(args.batch_size, 3, args.width, args.width, dtype=torch.uint8, device="meta")
    input_ids = torch.empty(args.batch_size, models["components"].tokenizer.model_max_length, dtype=torch.long, device="meta")
    batch = {"original_pixel_values": pixels, "edited_pixel_values": pixels, "input_ids": input_ids}
    return batch | ({"mirrored_input_ids": input_ids} if args.random_flip else {})


def pecn_setup(args, accelerator, configs, workdir: Path):
    """Models placed as train_instruct_pix2pix.py places them, the optimizer, data; returns (step function, info)."""
    device = accelerator.device
    models = pecn_models(args, weight_dtype(accelerator), workdir)
    params = models["params"]
    shared = shared_training_args(args, str(workdir))
    base_unet, optimizer, lr_scheduler = set_up_optimizer(args, accelerator, shared, models, configs)

    # Data: PNG pairs and a progress prompt through the script's own transform and collate, one example at a time as HF Datasets does.
    rng = np.random.default_rng(0)
    prompt = build_prompt("Pushing something from left to right", True, 20, 40)
    samples = [(png_bytes(smooth_image(rng, args.width, args.width)), png_bytes(smooth_image(rng, args.width, args.width))) for _ in range(args.batch_size)]
    transform = pair_transform(args.width, models["components"].tokenizer, with_mirrored_prompts=args.random_flip)
    generator = torch.Generator(device=device).manual_seed(0)
    nonfinite = NonFiniteLossGuard(accelerator, shared.max_nonfinite_steps)

    def load_batch() -> dict:
        examples = []
        for original, edited in samples:
            columns = transform({"input_image": [Image.open(io.BytesIO(original))], "edited_image": [Image.open(io.BytesIO(edited))], "edit_prompt": [prompt]})
            examples.append({key: values[0] for key, values in columns.items()})
        return {key: value.to(device) for key, value in collate(examples).items()}

    def step(config: StepConfig, timer: StepTimer) -> None:
        set_checkpointing(base_unet, config.checkpointing)
        with timer.part("data"):
            batch = load_batch()
        loss = pecn_model_work(args, models, batch, config, timer, generator, accelerator.backward)
        with timer.part("optimizer"):
            optimizer_step(accelerator, optimizer, lr_scheduler, params, nonfinite, shared.max_grad_norm, loss)
        timer.record_loss(loss)

    return step, models["info"]


def peak_tflops(args) -> float | None:
    """The device's peak for MFU: --peak_tflops, else DESIGN.md's measured peak for a known GPU, else None."""
    if args.device != "cuda":
        return None
    if args.peak_tflops:
        return args.peak_tflops
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in KNOWN_PEAK_TFLOPS.items() if key in name), None)


def count_model_flops(step, config: StepConfig, timer: StepTimer) -> tuple[dict[str, int], bool]:
    """FLOPs per part of one step with gradient checkpointing off; (flops, True) if memory forced it on (recompute counted)."""
    try:
        return timer.count_flops(lambda: step(dataclasses.replace(config, checkpointing=False), timer)), False
    except torch.OutOfMemoryError:
        pass
    # Outside the except block, so that the failed step's tensors (held by the traceback) are freed first.
    torch.cuda.empty_cache()
    return timer.count_flops(lambda: step(config, timer)), True


def measure(args, step, configs: list[StepConfig], synchronize):
    """Warm up, count FLOPs, then time interleaved steps; returns (timer, flops per config, peak GiB per config, totals)."""
    timer = StepTimer(synchronize)
    for _ in range(args.warmup):
        for config in configs:
            step(config, timer)
    flops = {config.name: count_model_flops(step, config, timer) for config in configs}
    peaks: dict[str, tuple[float, float]] = defaultdict(lambda: (0.0, 0.0))

    def timed(config: StepConfig):
        def run():
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            with timer.step(config.name):
                step(config, timer)
            if args.device == "cuda":
                allocated, reserved = peaks[config.name]
                peaks[config.name] = (max(allocated, torch.cuda.max_memory_allocated() / GIB), max(reserved, torch.cuda.max_memory_reserved() / GIB))
        return run

    totals = interleaved_medians({config.name: timed(config) for config in configs}, args.steps, warmup=0, synchronize=synchronize)
    return timer, flops, peaks, totals


def mfu(flops: int, seconds: float, peak: float | None):
    """Model FLOP utilisation in percent, or "n/a" without a known peak."""
    if peak is None or seconds <= 0:
        return "n/a"
    return 100.0 * flops / seconds / (peak * 1e12)


def size_label(args) -> str:
    return f"{args.width}x{args.height}" + (f"x{args.num_frames}" if args.pipeline == "genex" else "") + f" b{args.batch_size}"


def result_rows(args, configs, info, timer, flops, peaks, totals) -> list[dict]:
    """One row per configuration: per-part medians (ms), step and total time, memory, FLOPs, MFU, and the ratio to the first."""
    peak = peak_tflops(args)
    size = size_label(args)
    rows = []
    for config in configs:
        medians = timer.medians(config.name)
        part_flops, recompute_counted = flops[config.name]
        unet_seconds = medians.get("unet_fwd_bwd", 0.0)
        row = {"config": config.name, "pipeline": args.pipeline, "size": size, "precision": args.mixed_precision,
               "checkpointing": config.checkpointing, "scl_samples": args.num_scl_samples if config.scl else 0, "cached_latents": config.cached,
               "optimizer": "adamw8bit" if args.use_8bit_adam else "adamw", "compile": args.compile}
        row |= {f"{part}_ms": 1e3 * medians[part] for part in PARTS[args.pipeline] if part in medians}
        row |= {"step_ms": 1e3 * medians["compute"], "total_ms": 1e3 * totals[config.name], "samples_per_s": args.batch_size / medians["compute"],
                "loss": statistics.mean(timer.losses[config.name])}
        row["x_first"] = row["step_ms"] / rows[0]["step_ms"] if rows else 1.0
        if args.device == "cuda":
            allocated, reserved = peaks[config.name]
            # The verdict uses what the allocator held (tensors plus its cache), which a smaller GPU must hold too.
            row |= {"peak_gpu_gib": allocated, "peak_reserved_gib": reserved, f"fits_{RECIPE_BUDGET_GIB:g}gib": reserved <= RECIPE_BUDGET_GIB}
        else:
            row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
        row |= {"unet_tflop": part_flops.get("unet_fwd_bwd", 0) / 1e12, "step_tflop": sum(part_flops.values()) / 1e12,
                "flops_include_recompute": recompute_counted,
                "unet_mfu_pct": mfu(part_flops.get("unet_fwd_bwd", 0), unet_seconds, peak),
                "step_mfu_pct": mfu(sum(part_flops.values()), medians["compute"], peak)}
        rows.append(row | {key: round(value, 1) for key, value in info.items()})
    return rows


def print_parameter_counts(args, info) -> None:
    """Parameter counts of the UNet built, against DESIGN.md's published ones for SVD-xt."""
    if args.pipeline == "genex" and args.full:
        print(f"SVD-xt UNet: {info['unet_m']:.1f} M parameters (DESIGN.md {SVD_UNET_PARAMS_M}), "
              f"temporal_transformer_block {info['trainable_m']:.1f} M (DESIGN.md {SVD_TEMPORAL_PARAMS_M})")
    else:
        print(f"{args.pipeline} UNet: {info['unet_m']:.1f} M parameters, {info['trainable_m']:.1f} M trainable")


def count_on_meta(args, configs: list[StepConfig]) -> dict:
    """--device meta: each configuration's model FLOPs per part, from the step's own model work on empty meta tensors."""
    # Float32 throughout: the count is the same in any precision, and the meta device has no autocast to mix them.
    dtype = torch.float32
    with tempfile.TemporaryDirectory() as workdir:
        if args.pipeline == "genex":
            models, work, meta_batch = genex_models(args, dtype), genex_model_work, genex_meta_batch
        else:
            models, work, meta_batch = pecn_models(args, dtype, Path(workdir)), pecn_model_work, pecn_meta_batch
    print_parameter_counts(args, models["info"])
    timer = StepTimer(lambda: None)
    rows = []
    for config in configs:
        # Model FLOPs, as on a real device: without the recomputation of gradient checkpointing.
        counted = dataclasses.replace(config, checkpointing=False)
        flops = timer.count_flops(lambda: work(args, models, meta_batch(args, counted, models), counted, timer, None, torch.Tensor.backward))
        row = {"config": config.name, "pipeline": args.pipeline, "size": size_label(args), "scl_samples": args.num_scl_samples if config.scl else 0, "cached_latents": config.cached}
        row |= {f"{part}_tflop": flops.get(part, 0) / 1e12 for part in PARTS[args.pipeline] if part not in ("data", "optimizer")}
        row["step_tflop"] = sum(flops.values()) / 1e12
        row["x_first"] = row["step_tflop"] / rows[0]["step_tflop"] if rows else 1.0
        rows.append(row | {key: round(value, 1) for key, value in models["info"].items()})
    columns = [key for key in rows[0] if key not in ("pipeline", "unet_m", "trainable_m")]
    print("TFLOP per part of one step, counted on the meta device with torch.utils.flop_counter (model FLOPs: no recomputation); "
          "x_first: step_tflop / the first row's.")
    return report(f"train_step {args.pipeline} {'full' if args.full else 'tiny'} flops", rows, columns)


def main(argv=None) -> dict:
    args = parse_args(argv)
    configs = step_configs(args)
    if args.device == "meta":
        return count_on_meta(args, configs)
    synchronize = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as workdir:
        # The scripts' own Accelerator (their flags' defaults), on the benchmarked device.
        accelerator = create_accelerator(shared_training_args(args, workdir), cpu=args.device == "cpu")
        setup = genex_setup if args.pipeline == "genex" else pecn_setup
        step, info = setup(args, accelerator, configs, Path(workdir))
        print_parameter_counts(args, info)
        timer, flops, peaks, totals = measure(args, step, configs, synchronize)
    rows = result_rows(args, configs, info, timer, flops, peaks, totals)
    memory = ["peak_gpu_gib", "peak_reserved_gib"] if args.device == "cuda" else ["peak_rss_gib"]
    columns = ["config", "size", "precision", "checkpointing", "scl_samples", "cached_latents", "optimizer"]
    columns += [f"{part}_ms" for part in PARTS[args.pipeline]] + ["step_ms", "total_ms", "samples_per_s", "x_first", "loss"] + memory
    columns += ([f"fits_{RECIPE_BUDGET_GIB:g}gib"] if args.device == "cuda" else []) + ["unet_tflop", "step_tflop", "unet_mfu_pct", "step_mfu_pct"]
    print("step_ms: one step's compute, the device synchronized around each part; data_ms: DataLoader work in the main process "
          "(overlapped by workers in training); total_ms: both, median of interleaved rounds; samples_per_s: batch / step_ms; x_first: step_ms / the first row's; "
          "loss: mean training loss of the timed steps (the same for the same options and seed); "
          + (f"peak_gpu_gib / peak_reserved_gib: torch.cuda.max_memory_allocated / max_memory_reserved; fits_{RECIPE_BUDGET_GIB:g}gib: reserved <= {RECIPE_BUDGET_GIB:g} GiB (the CUDA context, about 0.5 GiB, comes on top)." if args.device == "cuda" else "peak_rss_gib: peak resident memory of the whole process (CPU)."))
    return report(f"train_step {args.pipeline} {'full' if args.full else 'tiny'}", rows, columns)


if __name__ == "__main__":
    run_cli(main)
