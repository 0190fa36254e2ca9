r"""Fine-tune the temporal transformer blocks of Stable Video Diffusion to walk forward into panoramas.

    accelerate launch --config_file accelerate_config.yaml train_world_explorer.py \
        --base_folder=./Genex-DB --pretrained_model_name_or_path=stabilityai/stable-video-diffusion-img2vid-xt-1-1 \
        --num_frames=25 --width=1024 --height=576 --output_dir=./models/genex_explorer

The objective is EDM with SVD's v-scaling (genex/edm.py), optionally with the spherical
contrastive loss (genex/spherical.py). See DESIGN.md for the formulas.
"""

import argparse
import contextlib
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from common.checkpoints import save_checkpoint
from common.cli import SetupError, model_folder_error, run_cli
from common.conditioning import conditioning_dropout_masks
from common.trackers import log_validation_videos
from common.training import (
    NonFiniteLossGuard,
    add_shared_training_args,
    allow_tf32,
    check_shared_args,
    create_accelerator,
    create_ema,
    create_generator,
    ema_weights_swapped_in,
    log_weight_checksums,
    prepare_training,
    enable_memory_efficient_attention,
    epoch_batches,
    inference_precision,
    setup_logging,
    weight_dtype,
)
from common.video import write_mp4

logger = logging.getLogger("train_world_explorer")

TRAINABLE_MARKER = "temporal_transformer_block"


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

    group = parser.add_argument_group("objective")
    group.add_argument("--p_mean", type=float, default=0.7, help="Mean of log sigma (EDM's P_mean).")
    group.add_argument("--p_std", type=float, default=1.6, help="Std of log sigma (EDM's P_std).")
    group.add_argument("--fps", type=int, default=7, help="Frame rate the model is conditioned on; the UNet sees fps - 1, as in the pipeline.")
    group.add_argument("--motion_bucket_id", type=int, default=127, help="Motion bucket id the model is conditioned on.")
    group.add_argument("--conditioning_dropout_prob", type=float, default=0.1, help="p: CLIP embedding dropped for u < 2p, conditioning latent for p <= u < 3p.")
    group.add_argument("--scl_loss", action="store_true", help="Add the spherical contrastive loss (yaw-rotation consistency of the x0 estimate).")
    group.add_argument("--num_scl_samples", type=int, default=3, help="Yaw rotations per step for the spherical contrastive loss.")
    group.add_argument("--scl_beta", type=float, default=None, help="Constant SCL weight beta (the paper's form); default: GenEx's released schedule 0.05 -> 1 over the first half of training.")
    group.add_argument("--decode_chunk_size", type=int, default=8, help="Frames per VAE call: encoding clips, SCL's decode and encodes (each chunk checkpointed with --gradient_checkpointing), validation.")

    group = parser.add_argument_group("validation")
    group.add_argument("--validation_images_folder", type=str, default=None, help="Folder of panoramas to generate validation videos from.")
    group.add_argument("--num_validation_images", type=int, default=1, help="How many images of the folder to use.")
    group.add_argument("--validation_steps", type=int, default=500, help="Validate every this many optimizer steps (and at the end).")
    group.add_argument("--validation_num_inference_steps", type=int, default=25, help="Sampling steps of validation videos.")
    add_shared_training_args(parser)
    args = parser.parse_args(argv)
    check_shared_args(args)
    if args.num_scl_samples < 1:
        raise SetupError("--num_scl_samples must be at least 1")
    if args.validation_images_folder:
        from genex.generate import list_images

        list_images(args.validation_images_folder)
    return args


def load_models(args):
    """The five SVD components from a pipeline folder; a clear error when it is not one, or its UNet or --width/--height do not fit."""
    from diffusers import EulerDiscreteScheduler, UNetSpatioTemporalConditionModel

    from genex.cache_latents import load_encoders
    from genex.generate import check_svd_fits

    path = args.pretrained_model_name_or_path
    vae, image_encoder, feature_extractor = load_encoders(args)
    try:
        unet = UNetSpatioTemporalConditionModel.from_pretrained(path, subfolder="unet", variant=args.variant)
        EulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
    except (OSError, ValueError) as error:
        raise model_folder_error(path, error, "Stable Video Diffusion", args.variant) from None
    check_svd_fits(vae, unet, path, args.width, args.height)
    return feature_extractor, image_encoder, vae, unet


def select_temporal_blocks(unet) -> list:
    """Make exactly the temporal transformer blocks trainable; returns them as (name, parameter)."""
    for name, param in unet.named_parameters():
        param.requires_grad_(TRAINABLE_MARKER in name)
    return [(name, param) for name, param in unet.named_parameters() if param.requires_grad]


def freeze_all_but_temporal_blocks(unet, dtype) -> list:
    """Only temporal transformer blocks train; every other weight is frozen and held in `dtype`."""
    trainable = select_temporal_blocks(unet)
    if not trainable:
        raise SetupError(f"the UNet has no parameters named *{TRAINABLE_MARKER}*: is it an SVD UNet?")
    for param in unet.parameters():
        if not param.requires_grad:
            param.data = param.data.to(dtype)
    return trainable


def build_pipeline(args, unet, vae, image_encoder, feature_extractor):
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline

    scheduler = EulerDiscreteScheduler.from_pretrained(args.pretrained_model_name_or_path, subfolder="scheduler")
    return StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler, feature_extractor=feature_extractor)


def device_placement(args, vae, image_encoder) -> tuple[list, list]:
    """(frozen modules a training step needs on the device, those kept on the CPU)."""
    # With cached latents a step encodes only the first frame (VAE encoder), and decodes only for SCL.
    if not args.latents_cache_dir:
        return [vae, image_encoder], []
    if args.scl_loss:
        return [vae], [image_encoder]
    return [vae.encoder, vae.quant_conv], [vae.decoder, image_encoder]


@contextlib.contextmanager
def moved_to(device, modules):
    """Inside, `modules` are on `device`; afterwards back on the CPU."""
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")


def validate(args, accelerator, unet, vae, image_encoder, feature_extractor, step: int) -> None:
    """Generate a video from each validation panorama with the current weights and log it."""
    from genex.generate import generate_video, list_images, load_rgb

    pipeline = build_pipeline(args, accelerator.unwrap_model(unet), vae, image_encoder, feature_extractor)
    pipeline.set_progress_bar_config(disable=True)
    folder = Path(args.output_dir) / "validation" / f"step_{step}"
    videos, frames = {}, {}
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed or 0)
    with inference_precision(accelerator, [pipeline.unet, vae, image_encoder]):
        for path in list_images(args.validation_images_folder, args.num_validation_images):
            frames[path.stem] = generate_video(
                pipeline, load_rgb(path), args.width, args.height, args.num_frames, args.fps,
                args.motion_bucket_id, args.validation_num_inference_steps, args.decode_chunk_size, generator,
            )
            videos[path.stem] = write_mp4(frames[path.stem], folder / f"{path.stem}.mp4", fps=args.fps)
    log_validation_videos(accelerator, videos, frames, step)
    logger.info("Validation videos of step %d in %s", step, folder)


def save_final_pipeline(args, accelerator, unet) -> None:
    """Write output_dir as a complete SVD pipeline: the base's frozen weights bit for bit, trained temporal blocks."""
    from diffusers import StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel

    from common.checkpoints import load_trainable_state_dict, trainable_state_dict

    final_unet = UNetSpatioTemporalConditionModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="unet", variant=args.variant)
    select_temporal_blocks(final_unet)
    load_trainable_state_dict(final_unet, trainable_state_dict(accelerator.unwrap_model(unet)), "trained UNet")
    pipeline = StableVideoDiffusionPipeline.from_pretrained(args.pretrained_model_name_or_path, unet=final_unet, variant=args.variant)
    pipeline.save_pretrained(args.output_dir)
    logger.info("Saved the fine-tuned pipeline to %s", args.output_dir)


def main(argv=None):
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from genex.conditioning import (
        add_time_ids,
        clip_image_embedding,
        encode_cond_latents,
        encode_video_latents,
        fps_id_for,
    )
    from genex.data import FrameFolderDataset, to_model_range
    from genex.latent_cache import LatentCacheDataset, cache_fingerprint, sample_latents
    from genex.edm import append_dims, denoise, edm_loss, sample_cond_sigma, sample_sigma
    from genex.spherical import combine_edm_scl, decode_x0, sample_yaw_angles, scl_beta_released, scl_encode, spherical_contrastive_loss

    args = parse_args(argv)
    accelerator = create_accelerator(args)
    setup_logging(accelerator, args.output_dir)
    logger.info(accelerator.state)
    if args.seed is not None:
        set_seed(args.seed)
    allow_tf32(args.allow_tf32)

    # Models: frozen VAE and image encoder in the weight dtype, on the device only where a step needs them.
    feature_extractor, image_encoder, vae, unet = load_models(args)
    # The cache's fingerprint is of the weights as loaded, before the cast to the weight dtype.
    fingerprint = cache_fingerprint(vae, image_encoder, feature_extractor, args.width, args.height) if args.latents_cache_dir else None
    dtype = weight_dtype(accelerator)
    vae.requires_grad_(False).to(dtype=dtype)
    image_encoder.requires_grad_(False).to(dtype=dtype)
    on_device, off_device = device_placement(args, vae, image_encoder)
    for module in on_device:
        module.to(accelerator.device)
    trainable = freeze_all_but_temporal_blocks(unet, dtype)
    trainable_params = [p for _, p in trainable]
    enable_memory_efficient_attention(unet, args.enable_xformers_memory_efficient_attention)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.compile:
        # In place: parameter names, checkpoints and the final save see the plain UNet.
        unet.compile()
    ema, ema_names = create_ema(trainable, args.ema_decay) if args.use_ema else (None, None)
    generator = create_generator(accelerator, args.seed)
    logger.info("Training %.1f M of %.1f M UNet parameters", sum(p.numel() for p in trainable_params) / 1e6, sum(p.numel() for p in unet.parameters()) / 1e6)

    # Data: random windows of frames from every folder under --base_folder (or their cached posteriors, same windows).
    if args.latents_cache_dir:
        dataset = LatentCacheDataset(args.base_folder, args.latents_cache_dir, args.num_frames, args.width, args.height,
                                     seed=args.seed or 0, with_pixels=args.scl_loss, fingerprint=fingerprint)
    else:
        dataset = FrameFolderDataset(args.base_folder, args.num_frames, args.width, args.height, seed=args.seed or 0)
    dataloader = DataLoader(dataset, batch_size=args.per_gpu_batch_size, shuffle=True, num_workers=args.num_workers)
    # Optimizer, schedule, Accelerate, trackers; resume restores step, optimizer, schedule, EMA and random streams.
    unet, optimizer, dataloader, lr_scheduler, plan = prepare_training(
        accelerator, args, unet, trainable_params, dataloader, args.per_gpu_batch_size, "genex_explorer", ema, ema_names, generator)
    global_step, max_train_steps = plan.global_step, plan.max_train_steps

    logger.info("%d clips, %d epochs, %d optimizer steps, batch %d x %d processes x %d accumulation",
                len(dataset), plan.num_train_epochs, max_train_steps, args.per_gpu_batch_size, accelerator.num_processes, args.gradient_accumulation_steps)
    fps_id = fps_id_for(args.fps)

    def scl_encoder(pixels):
        return scl_encode(vae, pixels, args.decode_chunk_size, args.gradient_checkpointing)

    progress = tqdm(range(max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process)
    nonfinite = NonFiniteLossGuard(accelerator, args.max_nonfinite_steps)
    for epoch in range(plan.first_epoch, plan.num_train_epochs):
        dataset.set_epoch(epoch)
        for batch in epoch_batches(accelerator, dataloader, epoch, plan.batches_to_skip if epoch == plan.first_epoch else 0):
            with accelerator.accumulate(unet):
                # Encode: clean latents z0 (from the cache, a draw from the stored posterior with the same eps),
                # the CLIP embedding of the clean first frame, and that frame noise-augmented.
                frames = to_model_range(batch["pixel_values"].to(accelerator.device), dtype) if "pixel_values" in batch else None
                with torch.no_grad():
                    if args.latents_cache_dir:
                        latent_mean, latent_std = batch["latent_mean"].to(accelerator.device), batch["latent_std"].to(accelerator.device)
                        z0 = sample_latents(latent_mean, latent_std, vae.config.scaling_factor, generator)
                        first_frame = to_model_range(batch["first_frame"].to(accelerator.device), dtype)
                        clip_embedding = batch["clip_embedding"].to(accelerator.device).float().unsqueeze(1)
                    else:
                        z0 = encode_video_latents(vae, frames, generator, args.decode_chunk_size)
                        first_frame = frames[:, 0]
                        clip_embedding = clip_image_embedding(image_encoder, feature_extractor, first_frame).float()
                    batch_size = z0.shape[0]
                    cond_sigma = sample_cond_sigma((batch_size,), generator, accelerator.device)
                    cond_latents = encode_cond_latents(vae, first_frame, cond_sigma.to(dtype), args.num_frames, generator).float()

                # Conditioning dropout, so classifier-free guidance works at inference.
                keep_clip, keep_latent = conditioning_dropout_masks(batch_size, args.conditioning_dropout_prob, generator, accelerator.device)
                clip_embedding = clip_embedding * append_dims(keep_clip, clip_embedding.ndim)
                cond_latents = cond_latents * append_dims(keep_latent, cond_latents.ndim)

                # Noise at a log-normal sigma and predict the clean latents.
                sigma = sample_sigma((batch_size,), args.p_mean, args.p_std, generator, accelerator.device)
                noisy = z0 + append_dims(sigma, z0.ndim) * torch.randn(z0.shape, generator=generator, device=z0.device)
                time_ids = add_time_ids(fps_id, args.motion_bucket_id, cond_sigma).to(accelerator.device)
                D = denoise(unet, noisy, sigma, cond_latents, clip_embedding, time_ids)
                loss_edm = edm_loss(D, z0, sigma)
                logs = {"loss_edm": loss_edm.detach()}

                # Spherical contrastive loss on the decoded x0 estimate, rotated in yaw.
                loss = loss_edm
                if args.scl_loss:
                    x_pred = decode_x0(vae, D.to(dtype), args.decode_chunk_size, args.gradient_checkpointing)
                    thetas = sample_yaw_angles(args.num_scl_samples, generator)
                    loss_scl = spherical_contrastive_loss(x_pred, frames, sigma, thetas, scl_encoder)
                    beta = args.scl_beta if args.scl_beta is not None else scl_beta_released(global_step, max_train_steps)
                    loss, beta_used = combine_edm_scl(loss_edm, loss_scl, beta)
                    logs.update(loss_scl=loss_scl.detach(), scl_beta=beta_used)

                # Step (gradients are averaged across processes by DDP).
                accelerator.backward(loss)
                nonfinite.observe(loss)
                step_is_finite = nonfinite.step_is_finite() if accelerator.sync_gradients else True
                if step_is_finite:
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        logs["grad_norm"] = accelerator.clip_grad_norm_(trainable_params, args.max_grad_norm)
                    optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            # EMA, logging, checkpoint and validation happen once per optimizer step; a NaN or inf loss updates nothing.
            if ema is not None and step_is_finite:
                ema.step(trainable_params)
            global_step += 1
            progress.update(1)
            logs = {key: float(value) for key, value in logs.items()} | {"loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0], "nonfinite_steps": nonfinite.total}
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            accelerator.log(logs, step=global_step)
            if global_step % args.checkpointing_steps == 0 or nonfinite.should_stop:
                checkpoint = save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit, ema, ema_names, generator)
            if nonfinite.should_stop:
                accelerator.end_training()
                raise nonfinite.stop_error(global_step, checkpoint)
            is_last = global_step >= max_train_steps
            if args.validation_images_folder and (global_step % args.validation_steps == 0 or is_last) and accelerator.is_main_process:
                with ema_weights_swapped_in(ema, trainable_params), moved_to(accelerator.device, off_device):
                    validate(args, accelerator, unet, vae, image_encoder, feature_extractor, global_step)
            if is_last:
                break
        if global_step >= max_train_steps:
            break

    log_weight_checksums(accelerator, trainable_params)

    # Save: the EMA weights if used, inside a complete pipeline folder.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with ema_weights_swapped_in(ema, trainable_params):
            save_final_pipeline(args, accelerator, unet)
    accelerator.end_training()


if __name__ == "__main__":
    run_cli(main)
