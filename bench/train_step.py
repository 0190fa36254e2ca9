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

from bench.timing import interleaved_medians, report

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


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The switches that may differ between configurations timed side by side on the same models."""

    name: str
    scl: bool
    cached: bool
    checkpointing: bool


def parse_args(argv=None):
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
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Recompute UNet activations in the backward pass.")
    parser.add_argument("--scl_loss", action="store_true", help="GenEx: add the spherical contrastive loss.")
    parser.add_argument("--num_scl_samples", type=int, default=3, help="GenEx: yaw rotations of the spherical contrastive loss.")
    parser.add_argument("--decode_chunk_size", type=int, default=8, help="GenEx: frames per VAE call (encode, and SCL's decode).")
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
    args = parser.parse_args(argv)
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
        genex_only = [flag for flag, value in [("--num_frames", args.num_frames), ("--scl_loss", args.scl_loss), ("--cached_latents", args.cached_latents)] if value]
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
    if args.steps < 1 or args.warmup < 0 or args.num_scl_samples < 1 or args.batch_size < 1:
        parser.error("--steps, --num_scl_samples and --batch_size must be >= 1, --warmup >= 0")
    return args


def step_configs(args) -> list[StepConfig]:
    """The flags' configuration, or with --compare: the compared switches all off, then each one on."""
    base = dict(scl=args.scl_loss, cached=args.cached_latents, checkpointing=args.gradient_checkpointing)
    if not args.compare:
        return [StepConfig("run", **base)]
    fields = {"scl": "scl", "cache": "cached", "checkpointing": "checkpointing"}
    off = base | {fields[name]: False for name in args.compare}
    return [StepConfig("base", **off)] + [StepConfig(f"+{name}", **(off | {fields[name]: True})) for name in args.compare]


def count_cpu_attention_flops() -> None:
    """Count attention on the CPU as on CUDA and meta: torch.utils.flop_counter has no formula for SDPA's CPU kernels."""
    from torch.utils import flop_counter

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
        self.current = None
        self.flops = None

    @contextlib.contextmanager
    def part(self, name: str):
        if self.flops is not None:
            from torch.utils.flop_counter import FlopCounterMode

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
        self.current = None

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
    from common.training import add_shared_training_args, check_shared_args

    parser = argparse.ArgumentParser()
    add_shared_training_args(parser)
    argv = ["--output_dir", output_dir, "--mixed_precision", args.mixed_precision] + ["--use_8bit_adam"] * args.use_8bit_adam
    shared = parser.parse_args(argv)
    check_shared_args(shared)
    return shared


def create_accelerator(args):
    from accelerate import Accelerator

    from common.training import flush_denormals

    flush_denormals()
    return Accelerator(mixed_precision=args.mixed_precision, cpu=args.device == "cpu")


def prepare_training(args, accelerator, models: dict, configs: list[StepConfig], workdir: Path):
    """The UNet as the scripts set it up (checkpointing as the first configuration, --compile in place), AdamW (or
    8-bit AdamW) and the LR schedule of common.training, wrapped by Accelerate; models["unet"] becomes the wrapped UNet.

    Returns (the unwrapped UNet, the scripts' optimisation arguments, optimizer, LR scheduler).
    """
    from common.training import create_lr_scheduler, create_optimizer

    base_unet = models["unet"]
    set_checkpointing(base_unet, configs[0].checkpointing)
    if args.compile:
        base_unet.compile()
    shared = shared_training_args(args, str(workdir))
    optimizer = create_optimizer(models["params"], shared, accelerator.num_processes, args.batch_size)
    lr_scheduler = create_lr_scheduler(optimizer, shared, max_train_steps=10**6, num_processes=accelerator.num_processes)
    models["unet"], optimizer, lr_scheduler = accelerator.prepare(base_unet, optimizer, lr_scheduler)
    return base_unet, shared, optimizer, lr_scheduler


def set_checkpointing(unet, enabled: bool) -> None:
    if enabled != unet.is_gradient_checkpointing:
        (unet.enable_gradient_checkpointing if enabled else unet.disable_gradient_checkpointing)()


def forever(loader):
    while True:
        yield from loader


def smooth_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random RGB image (compresses and decodes like a photo, unlike white noise)."""
    from PIL import Image

    coarse = rng.integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def write_frame_folders(root: Path, count: int, num_frames: int, width: int, height: int) -> Path:
    """`count` folders of `num_frames` JPEG frames, as prepare_dataset.py writes them."""
    from PIL import Image

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
        from bench.full_size import build_svd_full

        models = build_svd_full(dtype, args.device)
    else:
        from genex.tiny import build_tiny_svd_pipeline

        models = build_tiny_svd_pipeline().components
    return models["feature_extractor"], models["image_encoder"], models["vae"], models["unet"]


def genex_models(args, dtype) -> dict:
    """The SVD components as train_world_explorer.py holds them: frozen modules in `dtype`, float32 temporal blocks (on --device meta: there)."""
    from genex.generate import check_svd_fits
    from train_world_explorer import freeze_all_but_temporal_blocks

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
    return dict(feature_extractor=feature_extractor, image_encoder=image_encoder, vae=vae, unet=unet, params=params, dtype=dtype, info=info)


def genex_model_work(args, models: dict, batch: dict, config: StepConfig, timer: StepTimer, generator, backward) -> None:
    """The model work of one train_world_explorer.py step, per timed (or counted) part: VAE and CLIP encodes, UNet forward + backward, SCL.

    `batch` is a DataLoader batch on the device (uint8 pixels; the cached statistics with `config.cached`).
    """
    from common.conditioning import conditioning_dropout_masks
    from genex.conditioning import add_time_ids, clip_image_embedding, encode_cond_latents, encode_video_latents, fps_id_for, sample_latents
    from genex.data import to_model_range
    from genex.edm import append_dims, denoise, edm_loss, sample_cond_sigma, sample_sigma
    from genex.spherical import combine_edm_scl, decode_x0, sample_yaw_angles, scl_beta_released, scl_encode, spherical_contrastive_loss

    vae, unet, dtype, chunk = models["vae"], models["unet"], models["dtype"], args.decode_chunk_size
    with timer.part("data"):
        frames = to_model_range(batch["pixel_values"], dtype) if "pixel_values" in batch else None
        first_frame = frames[:, 0] if frames is not None else to_model_range(batch["first_frame"], dtype)
    batch_size, device = first_frame.shape[0], first_frame.device
    with torch.no_grad():
        # Cached: z0 drawn from the stored posteriors; only the noise-augmented first frame is encoded.
        with timer.part("vae_encode"):
            if config.cached:
                z0 = sample_latents(batch["latent_mean"], batch["latent_std"], vae.config.scaling_factor, generator)
            else:
                z0 = encode_video_latents(vae, frames, generator, chunk)
            cond_sigma = sample_cond_sigma((batch_size,), generator, device)
            cond_latents = encode_cond_latents(vae, first_frame, cond_sigma.to(dtype), args.num_frames, generator).float()
        if config.cached:
            clip_embedding = batch["clip_embedding"].float().unsqueeze(1)
        else:
            with timer.part("clip_encode"):
                clip_embedding = clip_image_embedding(models["image_encoder"], models["feature_extractor"], first_frame).float()
    keep_clip, keep_latent = conditioning_dropout_masks(batch_size, 0.1, generator, device)
    clip_embedding = clip_embedding * append_dims(keep_clip, clip_embedding.ndim)
    cond_latents = cond_latents * append_dims(keep_latent, cond_latents.ndim)
    sigma = sample_sigma((batch_size,), 0.7, 1.6, generator, device)
    noisy = z0 + append_dims(sigma, z0.ndim) * torch.randn(z0.shape, generator=generator, device=device)
    time_ids = add_time_ids(fps_id_for(7), 127, cond_sigma).to(device)
    with timer.part("unet_fwd_bwd"):
        D = denoise(unet, noisy, sigma, cond_latents, clip_embedding, time_ids)
    # The backward is split at D so that the losses' share (SCL's decode and re-encode) is timed apart.
    D_leaf = D.detach().requires_grad_()
    with timer.part("scl"):
        loss = edm_loss(D_leaf, z0, sigma)
        if config.scl:
            x_pred = decode_x0(vae, D_leaf.to(dtype), chunk, config.checkpointing)
            thetas = sample_yaw_angles(args.num_scl_samples, generator)
            # As the script: SCL's VAE chunks are checkpointed when the UNet is.
            loss_scl = spherical_contrastive_loss(x_pred, frames, sigma, thetas, lambda pixels: scl_encode(vae, pixels, chunk, config.checkpointing))
            beta = scl_beta_released(0, 1)
            # The meta device holds no values for the ten-times rule: the term is kept, as in a step that keeps it.
            loss = (1 - beta) * loss + beta * loss_scl if loss.is_meta else combine_edm_scl(loss, loss_scl, beta)[0]
        backward(loss)
    with timer.part("unet_fwd_bwd"):
        D.backward(D_leaf.grad)


def genex_meta_batch(args, config: StepConfig, models: dict) -> dict:
    """Empty meta tensors shaped and typed as a GenEx batch: FrameFolderDataset's, or LatentCacheDataset's with `config.cached`."""
    scale = 2 ** (len(models["vae"].config.block_out_channels) - 1)
    clip, pixels = (args.batch_size, args.num_frames), (3, args.height, args.width)
    batch = {"pixel_values": torch.empty(*clip, *pixels, dtype=torch.uint8, device="meta")}
    if not config.cached:
        return batch
    latents = torch.empty(*clip, models["vae"].config.latent_channels, args.height // scale, args.width // scale, dtype=torch.float16, device="meta")
    cached = {"latent_mean": latents, "latent_std": latents, "first_frame": batch["pixel_values"][:, 0],
              "clip_embedding": torch.empty(args.batch_size, models["image_encoder"].config.projection_dim, device="meta")}
    # As LatentCacheDataset: the other frames' pixels only for SCL.
    return cached | (batch if config.scl else {})


def genex_setup(args, accelerator, configs, workdir: Path):
    """Models placed as train_world_explorer.py places them, the optimizer, data; returns (step function, info)."""
    from genex.data import FrameFolderDataset
    from genex.latent_cache import LatentCacheDataset, build_latent_cache
    from common.training import weight_dtype
    from train_world_explorer import device_placement

    dtype = weight_dtype(accelerator)
    device = accelerator.device
    models = genex_models(args, dtype)
    vae, image_encoder = models["vae"], models["image_encoder"]
    frames_root = write_frame_folders(workdir / "frames", args.batch_size, args.num_frames, args.width, args.height)
    loaders = {}
    if any(not config.cached for config in configs):
        loaders[False] = FrameFolderDataset(frames_root, args.num_frames, args.width, args.height)
    if any(config.cached for config in configs):
        # The cache as genex.cache_latents writes it, from the models as built; read with the script's dataset.
        build_latent_cache(frames_root, workdir / "cache", vae, image_encoder, models["feature_extractor"], args.width, args.height, device, dtype, args.decode_chunk_size)
        loaders[True] = LatentCacheDataset(frames_root, workdir / "cache", args.num_frames, args.width, args.height,
                                           with_pixels=any(config.cached and config.scl for config in configs))
    batches = {cached: forever(torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=0)) for cached, dataset in loaders.items()}

    # Frozen modules on the device only when a step needs them (the script's placement when every configuration is cached).
    placement = argparse.Namespace(latents_cache_dir=str(workdir / "cache") if False not in loaders else None, scl_loss=any(config.scl for config in configs))
    on_device, off_device = device_placement(placement, vae, image_encoder)
    for module in off_device:
        module.to("cpu")
    for module in on_device:
        module.to(device)
    params = models["params"]
    base_unet, shared, optimizer, lr_scheduler = prepare_training(args, accelerator, models, configs, workdir)
    generator = torch.Generator(device=device).manual_seed(0)

    def step(config: StepConfig, timer: StepTimer) -> None:
        set_checkpointing(base_unet, config.checkpointing)
        with timer.part("data"):
            batch = {key: value.to(device) for key, value in next(batches[config.cached]).items() if torch.is_tensor(value)}
        genex_model_work(args, models, batch, config, timer, generator, accelerator.backward)
        with timer.part("optimizer"):
            accelerator.clip_grad_norm_(params, shared.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)

    return step, models["info"]


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def build_pecn_models(args, dtype, workdir: Path) -> dict:
    """noise_scheduler, tokenizer, text_encoder, vae, unet: tiny (pecn/tiny.py) or full size (bench/full_size.py)."""
    if args.full:
        from bench.full_size import build_instruct_pix2pix_full

        return build_instruct_pix2pix_full(dtype, args.device)
    from diffusers import DDPMScheduler

    from pecn.tiny import INSTRUCT_PIX2PIX_SCHEDULER_CONFIG, build_tiny_components

    return build_tiny_components(8, 0, workdir / "tokenizer") | {"noise_scheduler": DDPMScheduler(**INSTRUCT_PIX2PIX_SCHEDULER_CONFIG)}


def pecn_models(args, dtype, workdir: Path) -> dict:
    """The InstructPix2Pix components as train_instruct_pix2pix.py holds them: frozen VAE and text encoder in `dtype` on the device, a float32 8-channel UNet."""
    from pecn.unet import expand_conv_in

    models = build_pecn_models(args, dtype, workdir)
    unet = expand_conv_in(models["unet"]).float().to(args.device)
    unet.train()
    for name in ("vae", "text_encoder"):
        models[name].requires_grad_(False).to(args.device, dtype=dtype)
    tokenizer = models["tokenizer"]
    null_prompt_ids = tokenizer([""], max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        null_text_embedding = models["text_encoder"](null_prompt_ids.to(args.device))[0].float()
    params = list(unet.parameters())
    info = {"unet_m": sum(p.numel() for p in params) / 1e6, "trainable_m": sum(p.numel() for p in params) / 1e6}
    return models | dict(unet=unet, params=params, dtype=dtype, null_text_embedding=null_text_embedding, info=info)


def pecn_model_work(args, models: dict, batch: dict, config: StepConfig, timer: StepTimer, generator, backward) -> torch.Tensor:
    """The model work of one train_instruct_pix2pix.py step, per timed (or counted) part: VAE and text encodes, UNet forward + backward; returns the loss."""
    import torch.nn.functional as F

    from common.conditioning import conditioning_dropout_masks
    from common.pixels import to_model_range
    from train_instruct_pix2pix import diffusion_target

    vae, noise_scheduler, dtype = models["vae"], models["noise_scheduler"], models["dtype"]
    device = batch["input_ids"].device
    with torch.no_grad():
        with timer.part("vae_encode"):
            edited = to_model_range(batch["edited_pixel_values"], dtype)
            latents = vae.encode(edited).latent_dist.sample(generator).float() * vae.config.scaling_factor
            original_latents = vae.encode(to_model_range(batch["original_pixel_values"], dtype)).latent_dist.mode().float()
        with timer.part("text_encode"):
            text_embedding = models["text_encoder"](batch["input_ids"])[0].float()
    keep_text, keep_image = conditioning_dropout_masks(latents.shape[0], 0.05, generator, device)
    text_embedding = torch.where(keep_text[:, None, None].bool(), text_embedding, models["null_text_embedding"])
    original_latents = original_latents * keep_image[:, None, None, None]
    noise = torch.randn(latents.shape, generator=generator, device=device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=device)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    with timer.part("unet_fwd_bwd"):
        prediction = models["unet"](torch.cat([noisy_latents, original_latents], dim=1), timesteps, text_embedding, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), diffusion_target(noise_scheduler, latents, noise, timesteps).float())
        backward(loss)
    return loss


def pecn_meta_batch(args, config: StepConfig, models: dict) -> dict:
    """Empty meta tensors shaped and typed as a batch of train_instruct_pix2pix.py's transform and collate."""
    pixels = torch.empty(args.batch_size, 3, args.width, args.width, dtype=torch.uint8, device="meta")
    input_ids = torch.empty(args.batch_size, models["tokenizer"].model_max_length, dtype=torch.long, device="meta")
    return {"original_pixel_values": pixels, "edited_pixel_values": pixels, "input_ids": input_ids}


def pecn_setup(args, accelerator, configs, workdir: Path):
    """Models placed as train_instruct_pix2pix.py places them, the optimizer, data; returns (step function, info)."""
    from PIL import Image

    from common.training import NonFiniteLossGuard, weight_dtype
    from pecn.prompts import build_prompt
    from train_instruct_pix2pix import collate, make_preprocess

    device = accelerator.device
    models = pecn_models(args, weight_dtype(accelerator), workdir)
    params = models["params"]
    base_unet, shared, optimizer, lr_scheduler = prepare_training(args, accelerator, models, configs, workdir)

    # Data: PNG pairs and a progress prompt through the script's own transform and collate, one example at a time as HF Datasets does.
    rng = np.random.default_rng(0)
    prompt = build_prompt("Pushing something from left to right", True, 20, 40)
    samples = [(png_bytes(smooth_image(rng, args.width, args.width)), png_bytes(smooth_image(rng, args.width, args.width))) for _ in range(args.batch_size)]
    preprocess = make_preprocess(argparse.Namespace(resolution=args.width, random_flip=False), models["tokenizer"])
    generator = torch.Generator(device=device).manual_seed(0)
    nonfinite = NonFiniteLossGuard(accelerator, shared.max_nonfinite_steps)

    def load_batch() -> dict:
        examples = []
        for original, edited in samples:
            columns = preprocess({"input_image": [Image.open(io.BytesIO(original))], "edited_image": [Image.open(io.BytesIO(edited))], "edit_prompt": [prompt]})
            examples.append({key: values[0] for key, values in columns.items()})
        return {key: value.to(device) for key, value in collate(examples).items()}

    def step(config: StepConfig, timer: StepTimer) -> None:
        set_checkpointing(base_unet, config.checkpointing)
        with timer.part("data"):
            batch = load_batch()
        loss = pecn_model_work(args, models, batch, config, timer, generator, accelerator.backward)
        with timer.part("optimizer"):
            nonfinite.observe(loss)
            if nonfinite.step_is_finite():
                accelerator.clip_grad_norm_(params, shared.max_grad_norm)
                optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)

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
        row |= {"step_ms": 1e3 * medians["compute"], "total_ms": 1e3 * totals[config.name], "samples_per_s": args.batch_size / medians["compute"]}
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
    from bench.full_size import SVD_TEMPORAL_PARAMS_M, SVD_UNET_PARAMS_M

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
    accelerator = create_accelerator(args)
    synchronize = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as workdir:
        setup = genex_setup if args.pipeline == "genex" else pecn_setup
        step, info = setup(args, accelerator, configs, Path(workdir))
        print_parameter_counts(args, info)
        timer, flops, peaks, totals = measure(args, step, configs, synchronize)
    rows = result_rows(args, configs, info, timer, flops, peaks, totals)
    memory = ["peak_gpu_gib", "peak_reserved_gib"] if args.device == "cuda" else ["peak_rss_gib"]
    columns = ["config", "size", "precision", "checkpointing", "scl_samples", "cached_latents", "optimizer"]
    columns += [f"{part}_ms" for part in PARTS[args.pipeline]] + ["step_ms", "total_ms", "samples_per_s", "x_first"] + memory
    columns += ([f"fits_{RECIPE_BUDGET_GIB:g}gib"] if args.device == "cuda" else []) + ["unet_tflop", "step_tflop", "unet_mfu_pct", "step_mfu_pct"]
    print("step_ms: one step's compute, the device synchronized around each part; data_ms: DataLoader work in the main process "
          "(overlapped by workers in training); total_ms: both, median of interleaved rounds; samples_per_s: batch / step_ms; x_first: step_ms / the first row's; "
          + (f"peak_gpu_gib / peak_reserved_gib: torch.cuda.max_memory_allocated / max_memory_reserved; fits_{RECIPE_BUDGET_GIB:g}gib: reserved <= {RECIPE_BUDGET_GIB:g} GiB (the CUDA context, about 0.5 GiB, comes on top)." if args.device == "cuda" else "peak_rss_gib: peak resident memory of the whole process (CPU)."))
    return report(f"train_step {args.pipeline} {'full' if args.full else 'tiny'}", rows, columns)


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
