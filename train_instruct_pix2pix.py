r"""Train InstructPix2Pix to predict a future Something-Something V2 frame (PECN).

    accelerate launch train_instruct_pix2pix.py --pretrained_model_name_or_path=timbrooks/instruct-pix2pix \
        --resolution=128 --input_frame_idx=20 --target_frame_idx=21 --add_progress --output_dir=outputs/instruct_pix2pix_128

Pairs are (frame --input_frame_idx, frame --target_frame_idx) of the filtered SSv2 videos, with the
prompt "Generate a future frame of this action: <label>[. And <p>% of the action has been completed.]".
The structure and flags follow diffusers' examples/instruct_pix2pix/train_instruct_pix2pix.py.
"""

import argparse
import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common.checkpoints import save_checkpoint
from common.cli import SetupError, model_folder_error, run_cli
from common.conditioning import conditioning_dropout_masks
from common.images import to_rgb
from common.pixels import to_model_range
from common.trackers import log_validation_images
from pecn.predict import predict_frame, rgb_frames
from pecn.visualize import comparison_grid
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

logger = logging.getLogger("train_instruct_pix2pix")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("model and data")
    group.add_argument("--pretrained_model_name_or_path", type=str, required=True, help="InstructPix2Pix (8-channel UNet) or Stable Diffusion text-to-image (4-channel UNet, conv_in is grown to 8) folder or hub id.")
    group.add_argument("--data_root", type=str, default="data/sthv2", help="SSv2 root written by pecn.dataset and pecn.video_loader.")
    group.add_argument("--frames_dir", type=str, default=None, help="Extracted frames; default <data_root>/frames_<resolution>x<resolution>.")
    group.add_argument("--train_annotations", type=str, default=None, help="Default <data_root>/annotations/train_filtered.json.")
    group.add_argument("--val_annotations", type=str, default=None, help="Default <data_root>/annotations/val_filtered.json.")
    group.add_argument("--input_frame_idx", type=int, default=20, help="0-based index of the input frame N.")
    group.add_argument("--target_frame_idx", type=int, default=21, help="0-based index of the frame to predict, N+T.")
    group.add_argument("--add_progress", action="store_true", help='Append ". And <p>%% of the action has been completed." to the prompt.')
    group.add_argument("--max_train_samples", type=int, default=None, help="Use only the first this many training pairs (quick tests).")
    group.add_argument("--resolution", type=int, default=128, help="Square training resolution; frames of another size are resized.")
    group.add_argument("--random_flip", action="store_true", help="Mirror pairs horizontally, swapping left and right in the prompt to match.")
    group.add_argument("--train_batch_size", type=int, default=16, help="Pairs per process per batch.")
    group.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes.")
    group.add_argument("--conditioning_dropout_prob", type=float, default=0.05, help="p: text dropped for u < 2p, input image for p <= u < 3p (classifier-free guidance).")

    group = parser.add_argument_group("validation")
    group.add_argument("--num_validation_images", type=int, default=4, help="Validate on the first this many validation pairs.")
    group.add_argument("--validation_epochs", type=int, default=1, help="Validate every this many epochs (and at the end).")
    group.add_argument("--validation_num_inference_steps", type=int, default=20, help="Sampling steps of validation predictions.")
    group.add_argument("--validation_image_guidance_scale", type=float, default=1.5, help="Image guidance scale of validation predictions.")
    group.add_argument("--validation_guidance_scale", type=float, default=7.0, help="Text guidance scale of validation predictions.")
    add_shared_training_args(parser)
    args = parser.parse_args(argv)
    check_shared_args(args)
    root = Path(args.data_root)
    args.frames_dir = args.frames_dir or str(root / f"frames_{args.resolution}x{args.resolution}")
    args.train_annotations = args.train_annotations or str(root / "annotations" / "train_filtered.json")
    args.val_annotations = args.val_annotations or str(root / "annotations" / "val_filtered.json")
    if args.input_frame_idx >= args.target_frame_idx:
        raise SetupError(f"--target_frame_idx ({args.target_frame_idx}) must come after --input_frame_idx ({args.input_frame_idx})")
    return args


def load_models(args):
    """Scheduler, tokenizer, text encoder, VAE and UNet of a Stable Diffusion family folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from pecn.unet import expand_conv_in

    path = args.pretrained_model_name_or_path
    try:
        noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", variant=args.variant)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", variant=args.variant)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=args.variant)
    except (OSError, ValueError) as error:
        raise model_folder_error(path, error, "Stable Diffusion / InstructPix2Pix", args.variant) from None
    # InstructPix2Pix conditions on the input image latents: 4 noisy + 4 image channels.
    return noise_scheduler, tokenizer, text_encoder, vae, expand_conv_in(unet)


def mirror_prompt(prompt: str) -> str:
    """Swap 'left' and 'right' so a horizontally flipped pair is still described truthfully."""
    swap = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}
    return re.sub(r"\b(left|right|Left|Right)\b", lambda match: swap[match.group(0)], prompt)


def make_preprocess(args, tokenizer):
    """HF Datasets transform: PIL pairs to uint8 tensors, prompts (and their mirrored form) to token ids.

    The flip itself is drawn in the training loop from the run's generator, so it resumes exactly.
    """

    def to_tensor(image):
        image = to_rgb(image)
        if image.size != (args.resolution, args.resolution):
            image = image.resize((args.resolution, args.resolution), resample=3)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def tokenize(prompts):
        return list(tokenizer(prompts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt").input_ids)

    def preprocess(examples):
        prompts = list(examples["edit_prompt"])
        batch = {
            "original_pixel_values": [to_tensor(image) for image in examples["input_image"]],
            "edited_pixel_values": [to_tensor(image) for image in examples["edited_image"]],
            "input_ids": tokenize(prompts),
        }
        if args.random_flip:
            batch["mirrored_input_ids"] = tokenize([mirror_prompt(prompt) for prompt in prompts])
        return batch

    return preprocess


def random_flip(batch, generator, device):
    """Mirror each pair with probability 1/2 (both images), and give it the prompt with left and right swapped."""
    flip = torch.rand(batch["input_ids"].shape[0], generator=generator, device=device) < 0.5
    for key in ("original_pixel_values", "edited_pixel_values"):
        batch[key] = torch.where(flip[:, None, None, None], batch[key].flip(-1), batch[key])
    batch["input_ids"] = torch.where(flip[:, None], batch["mirrored_input_ids"], batch["input_ids"])
    return batch


def collate(examples):
    return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}


def diffusion_target(noise_scheduler, latents, noise, timesteps):
    """What the UNet regresses: the noise (epsilon) or the velocity, per the scheduler's prediction type."""
    if noise_scheduler.config.prediction_type == "epsilon":
        return noise
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise SetupError(f"unknown prediction type {noise_scheduler.config.prediction_type}")


def load_pipeline(args, unet, **components):
    """An InstructPix2Pix pipeline around `unet`, with the base folder's own sampling scheduler."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    return StableDiffusionInstructPix2PixPipeline.from_pretrained(
        args.pretrained_model_name_or_path, unet=unet, variant=args.variant, safety_checker=None, feature_extractor=None, requires_safety_checker=False, **components
    )


def validate(args, accelerator, pipeline, val_dataset, epoch: int, step: int) -> None:
    """Predict the first validation pairs; save and log [input | ground truth | prediction] grids."""
    from PIL import Image

    pipeline.set_progress_bar_config(disable=True)
    folder = Path(args.output_dir) / "validation" / f"epoch_{epoch:03d}_step_{step}"
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed or 0)
    grids = {}
    with inference_precision(accelerator, [pipeline.unet, pipeline.vae, pipeline.text_encoder]):
        for example in map(rgb_frames, val_dataset.select(range(min(args.num_validation_images, len(val_dataset))))):
            prediction = predict_frame(pipeline, example["input_image"], example["edit_prompt"], args.validation_num_inference_steps,
                                       args.validation_image_guidance_scale, args.validation_guidance_scale, generator)
            name = f"{example['id']}"
            grids[name] = comparison_grid([example["input_image"], example["edited_image"], prediction])
            Image.fromarray(grids[name]).save(folder / f"{name}.png")
    log_validation_images(accelerator, grids, step)
    logger.info("Validation grids [input | ground truth | prediction] of epoch %d in %s", epoch, folder)


def main(argv=None):
    from accelerate.utils import set_seed

    from pecn.pairs import build_pair_dataset

    args = parse_args(argv)
    accelerator = create_accelerator(args)
    setup_logging(accelerator, args.output_dir)
    logger.info(accelerator.state)
    if args.seed is not None:
        set_seed(args.seed)
    allow_tf32(args.allow_tf32)

    # Models: frozen VAE and text encoder in the weight dtype; the whole UNet trains.
    noise_scheduler, tokenizer, text_encoder, vae, unet = load_models(args)
    dtype = weight_dtype(accelerator)
    vae.requires_grad_(False).to(accelerator.device, dtype=dtype)
    text_encoder.requires_grad_(False).to(accelerator.device, dtype=dtype)
    unet.train()
    enable_memory_efficient_attention(unet, args.enable_xformers_memory_efficient_attention)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = list(unet.named_parameters())
    ema, ema_names = create_ema(trainable, args.ema_decay) if args.use_ema else (None, None)
    generator = create_generator(accelerator, args.seed)

    # Data: (frame N, frame N+T, prompt) pairs through the HF Datasets adapter.
    pair_args = dict(frames_dir=args.frames_dir, input_frame_idx=args.input_frame_idx, target_frame_idx=args.target_frame_idx, add_progress=args.add_progress)
    with accelerator.main_process_first():
        train_dataset, _ = build_pair_dataset(args.train_annotations, max_samples=args.max_train_samples, **pair_args)
        val_dataset = build_pair_dataset(args.val_annotations, max_samples=args.num_validation_images, **pair_args)[0] if args.num_validation_images > 0 else None
    train_dataset = train_dataset.with_transform(make_preprocess(args, tokenizer))
    dataloader = torch.utils.data.DataLoader(train_dataset, shuffle=True, collate_fn=collate, batch_size=args.train_batch_size, num_workers=args.dataloader_num_workers)
    null_prompt_ids = tokenizer([""], max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        null_text_embedding = text_encoder(null_prompt_ids.to(accelerator.device))[0].float()

    # Optimizer, schedule, Accelerate, trackers; resume restores step, optimizer, schedule, EMA and random streams.
    unet, optimizer, dataloader, lr_scheduler, plan = prepare_training(
        accelerator, args, unet, unet.parameters(), dataloader, args.train_batch_size, "instruct_pix2pix", ema, ema_names, generator)
    global_step, max_train_steps = plan.global_step, plan.max_train_steps

    logger.info("%d pairs, %d epochs, %d optimizer steps, batch %d x %d processes x %d accumulation",
                len(train_dataset), plan.num_train_epochs, max_train_steps, args.train_batch_size, accelerator.num_processes, args.gradient_accumulation_steps)
    progress = tqdm(range(max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process)
    nonfinite = NonFiniteLossGuard(accelerator, args.max_nonfinite_steps)
    for epoch in range(plan.first_epoch, plan.num_train_epochs):
        for batch in epoch_batches(accelerator, dataloader, epoch, plan.batches_to_skip if epoch == plan.first_epoch else 0):
            with accelerator.accumulate(unet):
                # Encode: target latents (sampled, scaled), input-image latents (mode, unscaled), prompts.
                if args.random_flip:
                    batch = random_flip(batch, generator, accelerator.device)
                with torch.no_grad():
                    edited = to_model_range(batch["edited_pixel_values"], dtype)
                    latents = vae.encode(edited).latent_dist.sample(generator).float() * vae.config.scaling_factor
                    original_latents = vae.encode(to_model_range(batch["original_pixel_values"], dtype)).latent_dist.mode().float()
                    text_embedding = text_encoder(batch["input_ids"])[0].float()

                # Conditioning dropout, so classifier-free guidance works on text and image.
                keep_text, keep_image = conditioning_dropout_masks(latents.shape[0], args.conditioning_dropout_prob, generator, latents.device)
                text_embedding = torch.where(keep_text[:, None, None].bool(), text_embedding, null_text_embedding)
                original_latents = original_latents * keep_image[:, None, None, None]

                # Noise at a uniform timestep and predict.
                noise = torch.randn(latents.shape, generator=generator, device=latents.device)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=latents.device)
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                prediction = unet(torch.cat([noisy_latents, original_latents], dim=1), timesteps, text_embedding, return_dict=False)[0]
                loss = F.mse_loss(prediction.float(), diffusion_target(noise_scheduler, latents, noise, timesteps).float())

                # Step (gradients are averaged across processes by DDP); a NaN or inf loss updates nothing.
                accelerator.backward(loss)
                nonfinite.observe(loss)
                step_is_finite = nonfinite.step_is_finite() if accelerator.sync_gradients else True
                if step_is_finite:
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                    optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            # EMA, logging and checkpoint happen once per optimizer step.
            if ema is not None and step_is_finite:
                ema.step(accelerator.unwrap_model(unet).parameters())
            global_step += 1
            progress.update(1)
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0], "nonfinite_steps": nonfinite.total}
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            accelerator.log(logs, step=global_step)
            if global_step % args.checkpointing_steps == 0 or nonfinite.should_stop:
                checkpoint = save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit, ema, ema_names, generator)
            if nonfinite.should_stop:
                accelerator.end_training()
                raise nonfinite.stop_error(global_step, checkpoint)
            if global_step >= max_train_steps:
                break

        # Validation every --validation_epochs epochs and at the end, with the EMA weights if used.
        is_last = global_step >= max_train_steps or epoch == plan.num_train_epochs - 1
        if val_dataset is not None and accelerator.is_main_process and ((epoch + 1) % args.validation_epochs == 0 or is_last):
            with ema_weights_swapped_in(ema, list(accelerator.unwrap_model(unet).parameters())):
                pipeline = load_pipeline(args, accelerator.unwrap_model(unet), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
                validate(args, accelerator, pipeline, val_dataset, epoch, global_step)
        if global_step >= max_train_steps:
            break

    log_weight_checksums(accelerator, accelerator.unwrap_model(unet).parameters())

    # Save: a complete InstructPix2Pix pipeline folder, with the EMA weights if used.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(unet)
        with ema_weights_swapped_in(ema, list(unet.parameters())):
            load_pipeline(args, unet).save_pretrained(args.output_dir)
        logger.info("Saved the InstructPix2Pix pipeline to %s", args.output_dir)
    accelerator.end_training()


if __name__ == "__main__":
    run_cli(main)
