r"""Train InstructPix2Pix to predict a future Something-Something V2 frame (PECN).

    accelerate launch train_instruct_pix2pix.py --pretrained_model_name_or_path=timbrooks/instruct-pix2pix \
        --resolution=128 --input_frame_idx=20 --target_frame_idx=21 --add_progress --output_dir=outputs/instruct_pix2pix_128

Pairs are (frame --input_frame_idx, frame --target_frame_idx) of the filtered SSv2 videos, with the
prompt "Generate a future frame of this action: <label>[. And <p>% of the action has been completed.]".
The structure and flags follow diffusers' examples/instruct_pix2pix/train_instruct_pix2pix.py.
"""

import argparse
import logging
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from common.cli import SetupError, run_cli
from common.loop import backward_and_step, end_optimizer_step, epoch_batches, epochs
from common.trackers import log_validation_images
from common.training import create_ema, create_generator, ema_weights_swapped_in, finish_run
from common.training import inference_precision, parse_training_args, prepare_training, prepare_unet, start_run, weight_dtype
from pecn.models import load_models, load_pipeline
from pecn.pairs import build_pair_dataset, collate, pair_transform
from pecn.predict import predict_frame, rgb_frames
from pecn.step import Objective, add_objective_args, loss_of, predict
from pecn.visualize import comparison_grid

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
    group.add_argument("--train_batch_size", type=int, default=16, help="Pairs per process per batch.")
    group.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes.")

    add_objective_args(parser)

    group = parser.add_argument_group("validation")
    group.add_argument("--num_validation_images", type=int, default=4, help="Validate on the first this many validation pairs.")
    group.add_argument("--validation_epochs", type=int, default=1, help="Validate every this many epochs (and at the end).")
    group.add_argument("--validation_num_inference_steps", type=int, default=20, help="Sampling steps of validation predictions.")
    group.add_argument("--validation_image_guidance_scale", type=float, default=1.5, help="Image guidance scale of validation predictions.")
    group.add_argument("--validation_guidance_scale", type=float, default=7.0, help="Text guidance scale of validation predictions.")
    args = parse_training_args(parser, argv)
    root = Path(args.data_root)
    args.frames_dir = args.frames_dir or str(root / f"frames_{args.resolution}x{args.resolution}")
    args.train_annotations = args.train_annotations or str(root / "annotations" / "train_filtered.json")
    args.val_annotations = args.val_annotations or str(root / "annotations" / "val_filtered.json")
    if args.input_frame_idx >= args.target_frame_idx:
        raise SetupError(f"--target_frame_idx ({args.target_frame_idx}) must come after --input_frame_idx ({args.input_frame_idx})")
    return args


def validate(args, accelerator, pipeline, val_dataset, epoch: int, step: int) -> None:
    """Predict the first validation pairs; save and log [input | ground truth | prediction] grids."""
    examples = val_dataset.select(range(min(args.num_validation_images, len(val_dataset))))
    folder = Path(args.output_dir) / "validation" / f"epoch_{epoch:03d}_step_{step}"
    logger.info("Validation after epoch %d (step %d): %d prediction(s), %d sampling steps each, into %s",
                epoch, step, len(examples), args.validation_num_inference_steps, folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipeline.set_progress_bar_config(leave=False, desc="sampling")
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed or 0)
    grids = {}
    with inference_precision(accelerator, [pipeline.unet, pipeline.vae, pipeline.text_encoder]):
        for example in tqdm(map(rgb_frames, examples), total=len(examples), desc="validation", unit="pair"):
            prediction = predict_frame(pipeline, example["input_image"], example["edit_prompt"], args.validation_num_inference_steps,
                                       args.validation_image_guidance_scale, args.validation_guidance_scale, generator)
            name = f"{example['id']}"
            grids[name] = comparison_grid([example["input_image"], example["edited_image"], prediction])
            Image.fromarray(grids[name]).save(folder / f"{name}.png")
    log_validation_images(accelerator, grids, step)


def main(argv=None):
    args = parse_args(argv)
    accelerator = start_run(args, logger)

    # Models: frozen VAE and text encoder in the weight dtype; the whole UNet trains.
    components = load_models(args.pretrained_model_name_or_path, args.variant)
    tokenizer, text_encoder, vae, unet = components.tokenizer, components.text_encoder, components.vae, components.unet
    dtype = weight_dtype(accelerator)
    vae.requires_grad_(False).to(accelerator.device, dtype=dtype)
    text_encoder.requires_grad_(False).to(accelerator.device, dtype=dtype)
    unet.train()
    prepare_unet(unet, args)
    trainable = list(unet.named_parameters())
    ema, ema_names = create_ema(trainable, args.ema_decay) if args.use_ema else (None, None)

    # Data: (frame N, frame N+T, prompt) pairs through the HF Datasets adapter.
    pair_args = dict(frames_dir=args.frames_dir, input_frame_idx=args.input_frame_idx, target_frame_idx=args.target_frame_idx, add_progress=args.add_progress)
    with accelerator.main_process_first():
        train_dataset, _ = build_pair_dataset(args.train_annotations, max_samples=args.max_train_samples, **pair_args)
        val_dataset = build_pair_dataset(args.val_annotations, max_samples=args.num_validation_images, **pair_args)[0] if args.num_validation_images > 0 else None
    train_dataset = train_dataset.with_transform(pair_transform(args.resolution, tokenizer, with_mirrored_prompts=args.random_flip))
    dataloader = torch.utils.data.DataLoader(train_dataset, shuffle=True, collate_fn=collate, batch_size=args.train_batch_size, num_workers=args.dataloader_num_workers)
    null_prompt_ids = tokenizer([""], max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        null_text_embedding = text_encoder(null_prompt_ids.to(accelerator.device))[0].float()

    # Optimizer, schedule, Accelerate, trackers; resume restores step, optimizer, schedule, EMA and random streams.
    run = prepare_training(accelerator, args, unet, [p for _, p in trainable], dataloader, args.train_batch_size, "instruct_pix2pix", "pairs",
                           ema, ema_names, create_generator(accelerator, args.seed))

    objective = Objective.from_args(args)
    for epoch in epochs(run):
        for batch in epoch_batches(run, epoch):
            with accelerator.accumulate(run.model):
                prediction, target = predict(batch, run.model, components, null_text_embedding, objective, run.generator, dtype)
                backward_and_step(run, loss_of(prediction, target), {})
            if accelerator.sync_gradients:
                end_optimizer_step(run)
        # Validation every --validation_epochs epochs and at the end, with the EMA weights if used.
        is_last = run.done or epoch == run.num_train_epochs - 1
        if val_dataset is not None and accelerator.is_main_process and ((epoch + 1) % args.validation_epochs == 0 or is_last):
            with ema_weights_swapped_in(ema, run.params):
                pipeline = load_pipeline(args.pretrained_model_name_or_path, accelerator.unwrap_model(run.model), args.variant,
                                         vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
                validate(args, accelerator, pipeline, val_dataset, epoch, run.global_step)

    # Save: a complete InstructPix2Pix pipeline folder, with the EMA weights if used.
    finish_run(run, lambda trained_unet: load_pipeline(args.pretrained_model_name_or_path, trained_unet, args.variant).save_pretrained(args.output_dir))


if __name__ == "__main__":
    run_cli(main)
