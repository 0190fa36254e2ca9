r"""Fine-tune the temporal transformer blocks of Stable Video Diffusion to walk forward into panoramas.

    accelerate launch --config_file accelerate_config.yaml train_world_explorer.py \
        --base_folder=./Genex-DB --pretrained_model_name_or_path=stabilityai/stable-video-diffusion-img2vid-xt-1-1 \
        --num_frames=25 --width=1024 --height=576 --output_dir=./models/genex_explorer

The objective is EDM with SVD's v-scaling (genex/edm.py), optionally with the spherical
contrastive loss (genex/spherical.py). See DESIGN.md for the formulas.
"""

import argparse
import logging

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from common.cli import SetupError, run_cli
from common.loop import backward_and_step, end_optimizer_step, epoch_batches, epochs
from common.output_dir import validation_folder
from common.trackers import log_validation_videos
from common.training import create_ema, create_generator, ema_weights_swapped_in, finish_run, require_at_least
from common.training import inference_precision, parse_training_args, prepare_training, prepare_unet, start_run, weight_dtype
from common.video import write_mp4
from genex.data import FrameFolderDataset, first_clips
from genex.generate import generate_video, list_images, load_rgb
from genex.latent_cache import LatentCacheDataset, cache_fingerprint
from genex.models import build_pipeline, device_placement, freeze_all_but_temporal_blocks, load_models, moved_to, save_final_pipeline
from genex.step import Objective, add_objective_args, fixed_draw_loss, loss_of, objective_problem, predict

logger = logging.getLogger("train_world_explorer")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("model and data")
    group.add_argument("--pretrained_model_name_or_path", type=str, required=True, help="SVD pipeline folder or hub id (unet/, vae/, image_encoder/, feature_extractor/, scheduler/).")
    group.add_argument("--base_folder", type=str, required=True, help="Folder holding (possibly nested) folders of frames, as prepare_dataset.py writes.")
    group.add_argument("--num_frames", type=int, default=25, help="Frames per training clip (a random contiguous window).")
    group.add_argument("--width", type=int, default=1024, help="Training width in pixels.")
    group.add_argument("--height", type=int, default=576, help="Training height in pixels.")
    group.add_argument("--per_gpu_batch_size", type=int, default=1, help="Clips per process per batch.")
    group.add_argument("--num_workers", type=int, default=4, help="DataLoader worker processes.")
    group.add_argument("--latents_cache_dir", type=str, default=None, help=(
        "Train from cached VAE posteriors and CLIP embeddings; build the cache first with python -m genex.cache_latents "
        "(same model, --base_folder, --width, --height; its default place is <base_folder>/.latent_cache). A cache of other "
        "models, another resolution or changed frames is refused. A step then encodes only the noise-augmented first "
        "frame: the image encoder and the VAE decoder stay on the CPU (the decoder is on the device with --scl_loss, "
        "which also reads the frames; both come to the device for the duration of a validation)."))
    group.add_argument("--compile", action="store_true", help="torch.compile the UNet (default mode). Needs a working compiler toolchain (Triton on GPU, a C++ compiler on CPU); the first steps are slow, later ones faster on GPU.")

    add_objective_args(parser)

    group = parser.add_argument_group("validation")
    group.add_argument("--validation_images_folder", type=str, default=None, help="Folder of panoramas to generate validation videos from.")
    group.add_argument("--num_validation_images", type=int, default=1, help="How many images of the folder to use.")
    group.add_argument("--validation_steps", type=int, default=500, help="Validate every this many optimizer steps (and at the end).")
    group.add_argument("--validation_num_inference_steps", type=int, default=25, help="Sampling steps of validation videos.")
    group.add_argument("--fixed_draw_loss_steps", type=int, default=0, help=(
        "Every this many optimizer steps, before the first and at the end, log loss_edm_fixed_draws (TensorBoard/wandb and train.log): "
        "the EDM loss of the first --fixed_draw_loss_clips training clips with the same sigma and noise at every evaluation, a curve "
        "that falls as the model learns where the training loss swings with the sigma drawn each step. 0: off."))
    group.add_argument("--fixed_draw_loss_clips", type=int, default=8, help="Clips of the fixed-draw loss (all the training set's if it has fewer).")
    args = parse_training_args(parser, argv)
    require_at_least(args, 1, "num_frames", "width", "height", "per_gpu_batch_size", "decode_chunk_size", "fps",
                     "validation_steps", "validation_num_inference_steps", "fixed_draw_loss_clips")
    require_at_least(args, 0, "num_workers", "num_validation_images", "motion_bucket_id", "fixed_draw_loss_steps")
    problem = objective_problem(Objective.from_args(args))
    if problem:
        raise SetupError(problem)
    if args.scl_num_frames is not None and not args.scl_loss:
        raise SetupError("--scl_num_frames chooses the frames of the spherical contrastive loss: add --scl_loss, or drop it")
    if args.validation_images_folder:
        # Every image a validation will use is decoded now: a broken one would stop the run at its first validation.
        for path in list_images(args.validation_images_folder, args.num_validation_images):
            load_rgb(path)
    return args


def validate(args, accelerator, unet, encoders, step: int) -> None:
    """Generate a video from each validation panorama with the current weights; save and log them."""
    images = list_images(args.validation_images_folder, args.num_validation_images)
    folder = validation_folder(args.output_dir, step)
    logger.info("Validation at step %d: %d video(s) of %d frames, %d sampling steps each, into %s",
                step, len(images), args.num_frames, args.validation_num_inference_steps, folder)
    pipeline = build_pipeline(args.pretrained_model_name_or_path, accelerator.unwrap_model(unet), encoders)
    pipeline.set_progress_bar_config(leave=False, desc="sampling")
    videos, frames = {}, {}
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed or 0)
    with inference_precision(accelerator, [pipeline.unet, encoders.vae, encoders.image_encoder]):
        for path in tqdm(images, desc="validation", unit="video"):
            frames[path.stem] = generate_video(
                pipeline, load_rgb(path), args.width, args.height, args.num_frames, args.fps,
                args.motion_bucket_id, args.validation_num_inference_steps, args.decode_chunk_size, generator,
            )
            videos[path.stem] = write_mp4(frames[path.stem], folder / f"{path.stem}.mp4", fps=args.fps)
    log_validation_videos(accelerator, videos, frames, step)


def log_fixed_draw_loss(args, accelerator, unet, encoders, batches: list[dict], dtype, step: int) -> None:
    """The EDM loss of the fixed clips with fixed draws (genex.step.fixed_draw_loss) at `step`, to the trackers and train.log."""
    value = fixed_draw_loss(batches, accelerator.unwrap_model(unet), encoders, Objective.from_args(args), args.seed or 0, dtype, accelerator.device)
    accelerator.log({"loss_edm_fixed_draws": value}, step=step)
    logger.info("step %d: loss_edm_fixed_draws %.6g (%d clips, the same draws at every evaluation)", step, value, len(batches))


def main(argv=None):
    args = parse_args(argv)
    accelerator = start_run(args, logger)

    # Models: only the temporal blocks train; the frozen VAE and image encoder are held in the weight dtype,
    # on the device only where a step needs them.
    encoders, unet = load_models(args.pretrained_model_name_or_path, args.variant, args.width, args.height)
    # The cache's fingerprint is of the weights as loaded, before the cast to the weight dtype.
    fingerprint = cache_fingerprint(*encoders, args.width, args.height) if args.latents_cache_dir else None
    dtype = weight_dtype(accelerator)
    for module in (encoders.vae, encoders.image_encoder):
        module.requires_grad_(False).to(dtype=dtype)
    on_device, off_device = device_placement(bool(args.latents_cache_dir), args.scl_loss, encoders)
    for module in on_device:
        module.to(accelerator.device)
    trainable = freeze_all_but_temporal_blocks(unet, dtype)
    prepare_unet(unet, args)
    ema, ema_names = create_ema(trainable, args.ema_decay) if args.use_ema else (None, None)
    logger.info("Training %.1f M of %.1f M UNet parameters", sum(p.numel() for _, p in trainable) / 1e6, sum(p.numel() for p in unet.parameters()) / 1e6)

    # Data: random windows of frames from every folder under --base_folder (or their cached posteriors, same windows).
    if args.latents_cache_dir:
        dataset = LatentCacheDataset(args.base_folder, args.latents_cache_dir, args.num_frames, args.width, args.height,
                                     seed=args.seed or 0, with_pixels=args.scl_loss, fingerprint=fingerprint)
    else:
        dataset = FrameFolderDataset(args.base_folder, args.num_frames, args.width, args.height, seed=args.seed or 0)
    dataloader = DataLoader(dataset, batch_size=args.per_gpu_batch_size, shuffle=True, num_workers=args.num_workers)
    # The fixed-draw loss's clips, read before any epoch is set: the windows of epoch 0, the same on every run and resumption.
    fixed_batches = first_clips(dataset, args.fixed_draw_loss_clips) if args.fixed_draw_loss_steps and accelerator.is_main_process else []
    # Optimizer, schedule, Accelerate, trackers; resume restores step, optimizer, schedule, EMA and random streams.
    run = prepare_training(accelerator, args, unet, [p for _, p in trainable], dataloader, args.per_gpu_batch_size, "genex_explorer", "clips",
                           ema, ema_names, create_generator(accelerator, args.seed))

    objective = Objective.from_args(args)
    # On the main process, as validation: the unwrapped UNet's forward passes need no other process.
    if fixed_batches and run.global_step == 0:
        log_fixed_draw_loss(args, accelerator, run.model, encoders, fixed_batches, dtype, 0)
    for epoch in epochs(run):
        for batch in epoch_batches(run, epoch, dataset.set_epoch):
            with accelerator.accumulate(run.model):
                prediction = predict(batch, run.model, encoders, objective, run.generator, dtype)
                loss, logs = loss_of(prediction, encoders.vae, objective, run.generator, run.global_step, run.max_train_steps, args.gradient_checkpointing)
                backward_and_step(run, loss, logs)
            if not accelerator.sync_gradients:
                continue
            end_optimizer_step(run)
            if fixed_batches and (run.global_step % args.fixed_draw_loss_steps == 0 or run.done):
                log_fixed_draw_loss(args, accelerator, run.model, encoders, fixed_batches, dtype, run.global_step)
            # Validation on the main process, with the EMA weights if used and every module on the device.
            if args.validation_images_folder and accelerator.is_main_process and (run.global_step % args.validation_steps == 0 or run.done):
                with ema_weights_swapped_in(ema, run.params), moved_to(accelerator.device, off_device):
                    validate(args, accelerator, run.model, encoders, run.global_step)

    # Save: the EMA weights if used, inside a complete pipeline folder (the base's frozen weights bit for bit), with the
    # settings it was trained at, which the sampler uses as its defaults.
    settings = {name: getattr(args, name) for name in ("width", "height", "num_frames", "fps", "motion_bucket_id", "pretrained_model_name_or_path")}
    finish_run(run, lambda trained_unet: save_final_pipeline(args.pretrained_model_name_or_path, args.variant, trained_unet, args.output_dir, settings))


if __name__ == "__main__":
    run_cli(main)
