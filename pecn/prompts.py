"""The PECN edit prompt, identical for training, validation and sampling."""

from typing import Optional

PROMPT_PREFIX = "Generate a future frame of this action: "


def progress_percent(input_frame_idx: int, num_frames: int) -> int:
    """Share of the video before the input frame, floored to a multiple of 10 (frame 20 of 33 -> 60)."""
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if not 0 <= input_frame_idx < num_frames:
        raise ValueError(f"input_frame_idx {input_frame_idx} is outside a video of {num_frames} frames (0-based)")
    return int((input_frame_idx / num_frames) * 10) * 10


def build_prompt(label: str, add_progress: bool = False, input_frame_idx: Optional[int] = None, num_frames: Optional[int] = None) -> str:
    """`Generate a future frame of this action: <label>`, plus `. And <p>% of the action has been completed.` with progress."""
    prompt = PROMPT_PREFIX + label
    if not add_progress:
        return prompt
    if input_frame_idx is None or num_frames is None:
        raise ValueError(
            "a progress prompt needs input_frame_idx and num_frames; num_frames comes from the annotations "
            "written by `python -m pecn.video_loader`"
        )
    return f"{prompt}. And {progress_percent(input_frame_idx, num_frames)}% of the action has been completed."
