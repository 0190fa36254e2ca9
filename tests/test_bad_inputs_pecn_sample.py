"""Bad input to sample_from_pix2pix.py (validation pairs -> edited frames, grids and scores). The matrix's rules:
tests/bad_inputs_support.py."""

import json
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from PIL import Image

from bad_inputs_support import (COLOUR_MODES, SIZE, Built, Case, Env, Outcome, assert_colour, checkpoint_folder, empty_folder, params,
                                ssv2_pair_in_mode, svd_folder, t2i_folder, try_case)

ENTRY = "sample_from_pix2pix.py"
CASES: list[Case] = []


def sampler_argv(env: Env, output: Path, *extra: str, model: Optional[Path] = None, frames: Optional[Path] = None,
                 annotation: Optional[Path] = None) -> list[str]:
    return ["--model_dir", str(model or env.ip2p), "--frames_dir", str(frames or env.ssv2 / f"frames_{SIZE}x{SIZE}"),
            "--val_annotations", str(annotation or env.ssv2 / "annotations" / "val_filtered.json"), "--output_dir", str(output),
            "--num_samples", "1", "--num_inference_steps", "1", "--device", "cpu", "--input_frame_idx", "20", "--target_frame_idx", "21",
            "--no-add_progress", "--seed", "0", *extra]


# ----------------------------------------------------------------------------- --model_dir


def sampler_with_model(tmp: Path, env: Env, make: Callable[[Path, Env], Path]) -> Built:
    """sample_from_pix2pix.py on a model folder that `make` writes."""
    model = make(tmp, env)
    return Built(sampler_argv(env, tmp / "results", model=model), {"model": str(model)})


CASES.append(Case("sampler-pecn-model-empty-folder", ENTRY, partial(sampler_with_model, make=empty_folder), "error",
                  (r"{model}", r"not an InstructPix2Pix pipeline folder")))
CASES.append(Case("sampler-pecn-model-is-checkpoint", ENTRY, partial(sampler_with_model, make=checkpoint_folder), "error",
                  (r"{model}", r"checkpoint-<step> folder is for resuming")))
CASES.append(Case("sampler-pecn-model-is-svd", ENTRY, partial(sampler_with_model, make=svd_folder), "error", (r"{model}", r"InstructPix2Pix")))
CASES.append(Case("sampler-pecn-unet-4-channels", ENTRY, partial(sampler_with_model, make=t2i_folder), "error", (r"{model}", r"UNet has 4 input channels")))


# ----------------------------------------------------------------------------- frame indices and annotations


def sampler_with_flags(tmp: Path, env: Env, flags: tuple[str, ...] = ()) -> Built:
    return Built(sampler_argv(env, tmp / "results", *flags), {"annotation": str(env.ssv2 / "annotations" / "val_filtered.json")})


CASES.append(Case("sampler-pecn-target-beyond-every-video", ENTRY, partial(sampler_with_flags, flags=("--target_frame_idx", "500")), "error",
                  (r"{annotation}", r"no pair of frames 20 -> 500")))
CASES.append(Case("sampler-pecn-num_inference_steps-0", ENTRY, partial(sampler_with_flags, flags=("--num_inference_steps", "0")), "error",
                  (r"--num_inference_steps must be at least 1, got 0",), code=2))
CASES.append(Case("sampler-pecn-target-beyond-some-videos", ENTRY, sampler_with_flags, "skip",
                  (r"Videos of the annotation file with no pair: video shorter than 22 frames: 2",)))


def sampler_on_annotation_text(tmp: Path, env: Env, text: str) -> Built:
    annotation = tmp / "val_filtered.json"
    annotation.write_text(text)
    return Built(sampler_argv(env, tmp / "results", annotation=annotation), {"annotation": str(annotation)})


CASES.append(Case("sampler-pecn-annotations-malformed-json", ENTRY, partial(sampler_on_annotation_text, text="[{"), "error",
                  (r"{annotation}", r"malformed JSON")))


# ----------------------------------------------------------------------------- frames in other colour modes


def sampler_frames_in_mode(tmp: Path, env: Env, mode: str) -> Built:
    root, video_id = ssv2_pair_in_mode(tmp, env, mode)
    annotation = root / "annotations" / "train_filtered.json"
    return Built(sampler_argv(env, tmp / "results", frames=root / f"frames_{SIZE}x{SIZE}", annotation=annotation),
                 {"id": video_id, "results": str(tmp / "results")})


def grid_input_in_colour(built: Built, outcome: Outcome, mode: str) -> None:
    """The grid's first third is the input frame as the model saw it, and the copy baseline scored it."""
    grid = np.asarray(Image.open(Path(built.names["results"]) / "grids" / f"{built.names['id']}.png").convert("RGB"))
    assert_colour(grid[:, :SIZE].astype(np.float64), COLOUR_MODES[mode][1], channel_axis=-1)
    results = json.loads((Path(built.names["results"]) / "results.json").read_text())
    assert results["samples"][0]["copy_psnr"] is None  # input and target are the same colour: identical


CASES.extend(Case(f"sampler-pecn-frames-{mode}", ENTRY, partial(sampler_frames_in_mode, mode=mode), "works", (), partial(grid_input_in_colour, mode=mode))
             for mode in ("16bit-gray", "rgba"))


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case, matrix_env, tmp_path, capsys, caplog):
    try_case(case, matrix_env, tmp_path, capsys, caplog)
