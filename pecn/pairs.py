"""HuggingFace Datasets adapter: (frame N, frame N+T, prompt) pairs of the filtered SSv2 videos.

Columns: input_image, edited_image (PIL RGB, lazily decoded by `datasets.Image`), edit_prompt,
id, task, label, num_frames, progress (percent, or -1 without progress). A video that has no
frame `target_frame_idx`, whose extraction failed, or whose frame files are missing or not
readable images yields no pair; those are counted by reason and reported, unreadable files by name.
`pair_transform` and `collate` turn the pairs into training batches (uint8 pixels, token ids).
"""

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import torch
from PIL import Image

from common.images import to_rgb
from pecn.dataset import load_annotations
from pecn.prompts import build_prompt, progress_percent
from pecn.video_loader import frame_path

logger = logging.getLogger(__name__)


class PairDatasetError(ValueError):
    """Annotations that cannot give any training pair."""


def check_frame_indices(input_frame_idx: int, target_frame_idx: int) -> None:
    if input_frame_idx < 0 or target_frame_idx <= input_frame_idx:
        raise PairDatasetError(f"need 0 <= input_frame_idx < target_frame_idx, got {input_frame_idx} and {target_frame_idx}")


def unreadable_image(path: Path) -> Optional[str]:
    """Why `path` is not a readable image (None when it is); only the header is read, pixels are decoded later."""
    try:
        with Image.open(path) as image:
            image.size
    except (OSError, ValueError) as error:
        return str(error) or type(error).__name__
    return None


def pair_records(entries: list[dict], annotation_file, frames_dir, input_frame_idx: int, target_frame_idx: int,
                 add_progress: bool) -> tuple[list[dict], Counter]:
    """The pair rows of `entries`, and the count of skipped videos by reason."""
    records, skipped = [], Counter()
    for entry in entries:
        if "num_frames" not in entry:
            raise PairDatasetError(f"{annotation_file}: entry {entry.get('id')} has no num_frames; run `python -m pecn.video_loader` first")
        num_frames = int(entry["num_frames"])
        if entry.get("extract_error"):
            skipped["extraction failed"] += 1
            continue
        if num_frames <= target_frame_idx:
            skipped[f"video shorter than {target_frame_idx + 1} frames"] += 1
            continue
        input_path, target_path = (frame_path(frames_dir, entry["id"], i) for i in (input_frame_idx, target_frame_idx))
        if not (input_path.is_file() and target_path.is_file()):
            skipped[f"frame files missing in {frames_dir}"] += 1
            continue
        # A broken frame would otherwise stop training mid-epoch, inside the DataLoader.
        problems = {path: reason for path in (input_path, target_path) if (reason := unreadable_image(path))}
        if problems:
            for path, reason in problems.items():
                logger.warning("%s: cannot read image (%s); its pair is skipped", path, reason)
            skipped["frame files unreadable"] += 1
            continue
        records.append({
            "input_image": str(input_path),
            "edited_image": str(target_path),
            "edit_prompt": build_prompt(entry["label"], add_progress, input_frame_idx, num_frames),
            "id": str(entry["id"]),
            "task": entry.get("task", ""),
            "label": entry["label"],
            "num_frames": num_frames,
            "progress": progress_percent(input_frame_idx, num_frames) if add_progress else -1,
        })
    return records, skipped


def build_pair_dataset(annotation_file: os.PathLike, frames_dir: os.PathLike, input_frame_idx: int = 20, target_frame_idx: int = 21,
                       add_progress: bool = False, max_samples: Optional[int] = None) -> tuple[datasets.Dataset, dict[str, int]]:
    """The pairs of one filtered annotation file, in its order, and the videos that gave none, counted by reason."""
    check_frame_indices(input_frame_idx, target_frame_idx)
    if not Path(frames_dir).is_dir():
        raise PairDatasetError(f"{frames_dir}: frames folder does not exist; run `python -m pecn.video_loader` with this size")
    entries = load_annotations(annotation_file)
    records, skipped = pair_records(entries, annotation_file, frames_dir, input_frame_idx, target_frame_idx, add_progress)
    summary = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items())) or "none"
    if not records:
        raise PairDatasetError(f"{annotation_file}: no pair of frames {input_frame_idx} -> {target_frame_idx} among {len(entries)} videos (skipped: {summary})")
    if skipped:
        logger.warning("%s: %d pairs of frames %d -> %d; skipped %s", annotation_file, len(records), input_frame_idx, target_frame_idx, summary)
    if max_samples is not None:
        records = records[:max_samples]
    features = datasets.Features({
        "input_image": datasets.Image(), "edited_image": datasets.Image(), "edit_prompt": datasets.Value("string"),
        "id": datasets.Value("string"), "task": datasets.Value("string"), "label": datasets.Value("string"),
        "num_frames": datasets.Value("int32"), "progress": datasets.Value("int32"),
    })
    columns = {name: [record[name] for record in records] for name in features}
    return datasets.Dataset.from_dict(columns, features=features), dict(sorted(skipped.items()))


def mirror_prompt(prompt: str) -> str:
    """Swap 'left' and 'right' so a horizontally flipped pair is still described truthfully."""
    swap = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}
    return re.sub(r"\b(left|right|Left|Right)\b", lambda match: swap[match.group(0)], prompt)


def pair_transform(resolution: int, tokenizer, with_mirrored_prompts: bool = False):
    """HF Datasets transform: PIL pairs to uint8 [3,R,R] tensors, prompts (and, for flips, their mirrored form) to token ids.

    The flip itself is drawn in the training step from the run's generator (pecn.step.random_flip), so it resumes exactly.
    """

    def to_tensor(image):
        image = to_rgb(image)
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), resample=Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def tokenize(prompts):
        return list(tokenizer(prompts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt").input_ids)

    def transform(examples):
        prompts = list(examples["edit_prompt"])
        batch = {
            "original_pixel_values": [to_tensor(image) for image in examples["input_image"]],
            "edited_pixel_values": [to_tensor(image) for image in examples["edited_image"]],
            "input_ids": tokenize(prompts),
        }
        if with_mirrored_prompts:
            batch["mirrored_input_ids"] = tokenize([mirror_prompt(prompt) for prompt in prompts])
        return batch

    return transform


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}
