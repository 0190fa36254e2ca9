"""Bad input to train_instruct_pix2pix.py: refused before the first step with one line, and the pairs and models it
builds from its flags ("train_instruct_pix2pix.py data" / "models"). The matrix's rules: tests/bad_inputs_support.py."""

import json
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from bad_inputs_support import (COLOUR_MODES, NUM_FRAMES, SIZE, Built, Case, Env, Outcome, as_255, assert_colour, empty_folder, fake_checkpoint,
                                ip2p_trainable, missing_folder, other_shape, params, pipeline_saved, ssv2_pair_in_mode, svd_folder, svd_trainable,
                                t2i_folder, try_case, with_unet_in_channels)

ENTRY = "train_instruct_pix2pix.py"
DATA = "train_instruct_pix2pix.py data"
MODELS = "train_instruct_pix2pix.py models"
NOT_IP2P = r"not a Stable Diffusion / InstructPix2Pix pipeline folder"
CASES: list[Case] = []


def pecn_argv(env: Env, output: Path, *extra: str, model: Optional[Path] = None, data_root: Optional[Path] = None) -> list[str]:
    return [f"--pretrained_model_name_or_path={model or env.ip2p}", f"--data_root={data_root or env.ssv2}", f"--resolution={SIZE}",
            f"--output_dir={output}", "--train_batch_size=2", "--max_train_steps=1", "--checkpointing_steps=1", "--lr_warmup_steps=0",
            "--seed=1", "--report_to=none", "--mixed_precision=no", "--num_validation_images=0", *extra]


# ----------------------------------------------------------------------------- frame indices


def pecn_with_flags(tmp: Path, env: Env, flags: tuple[str, ...] = ()) -> Built:
    return Built(pecn_argv(env, tmp / "run", *flags), {"annotation": str(env.ssv2 / "annotations" / "train_filtered.json")})


CASES.append(Case("pecn-target-beyond-every-video", ENTRY, partial(pecn_with_flags, flags=("--target_frame_idx=500",)), "error",
                  (r"{annotation}", r"no pair of frames 20 -> 500", r"video shorter than 501 frames")))


def skipped_short_videos(built: Built, outcome: Outcome) -> None:
    assert outcome.value[1] == {"video shorter than 22 frames": 2}


CASES.append(Case("pecn-target-beyond-some-videos", DATA, pecn_with_flags, "skip",
                  (r"{annotation}: \d+ pairs of frames 20 -> 21; skipped 2 video shorter than 22 frames",), skipped_short_videos))


# ----------------------------------------------------------------------------- --pretrained_model_name_or_path


def pecn_with_model(tmp: Path, env: Env, make: Callable[[Path, Env], Path]) -> Built:
    """train_instruct_pix2pix.py on a model folder that `make` writes."""
    model = make(tmp, env)
    return Built(pecn_argv(env, tmp / "run", model=model), {"model": str(model)})


CASES.append(Case("pecn-model-empty-folder", ENTRY, partial(pecn_with_model, make=empty_folder), "error", (r"{model}", NOT_IP2P)))
CASES.append(Case("pecn-model-missing", ENTRY, partial(pecn_with_model, make=missing_folder), "error", (r"{model}", r"folder does not exist")))


def ip2p_unet_only(tmp: Path, env: Env) -> Path:
    shutil.copytree(env.ip2p / "unet", tmp / "model" / "unet")
    return tmp / "model"


CASES.append(Case("pecn-model-only-unet", ENTRY, partial(pecn_with_model, make=ip2p_unet_only), "error", (r"{model}", NOT_IP2P)))
CASES.append(Case("pecn-model-is-svd", ENTRY, partial(pecn_with_model, make=svd_folder), "error", (r"{model}", NOT_IP2P)))


def ip2p_with_5_channel_unet(tmp: Path, env: Env) -> Path:
    from diffusers import UNet2DConditionModel

    return with_unet_in_channels(tmp, env.ip2p, UNet2DConditionModel, 5)


CASES.append(Case("pecn-unet-5-channels", ENTRY, partial(pecn_with_model, make=ip2p_with_5_channel_unet), "error",
                  (r"{model}", r"5 input channels", r"expected 4 .* or 8")))


def unet_has_8_channels(built: Built, outcome: Outcome) -> None:
    unet = outcome.value[-1]
    assert unet.config.in_channels == 8 and unet.conv_in.weight.shape[1] == 8


CASES.append(Case("pecn-unet-4-channels-grows", MODELS, partial(pecn_with_model, make=t2i_folder), "works", (), unet_has_8_channels))


# ----------------------------------------------------------------------------- --resume_from_checkpoint


def pecn_resume(tmp: Path, env: Env, weights: Callable[[Env], dict], resume: str = "checkpoint-2") -> Built:
    """Resume from a checkpoint holding `weights`; the checkpoint must survive."""
    output = tmp / "run"
    checkpoint = fake_checkpoint(output / "checkpoint-2", weights(env))
    return Built(pecn_argv(env, output, f"--resume_from_checkpoint={resume}"), {"checkpoint": str(checkpoint)}, sorted(checkpoint.iterdir()))


CASES.append(Case("pecn-checkpoint-of-genex-run", ENTRY, partial(pecn_resume, weights=svd_trainable, resume="latest"), "error",
                  (r"{checkpoint}", r"trainable parameters do not match this run")))


def ip2p_trainable_wider(env: Env) -> dict:
    return other_shape(ip2p_trainable(env))


CASES.append(Case("pecn-checkpoint-other-shapes", ENTRY, partial(pecn_resume, weights=ip2p_trainable_wider), "error",
                  (r"{checkpoint}", r"has shape \(\d+.*\), the model expects")))


def pecn_fresh_start(tmp: Path, env: Env) -> Built:
    return Built(pecn_argv(env, tmp / "run", "--resume_from_checkpoint=latest"), {"output": str(tmp / "run")})


CASES.append(Case("pecn-resume-latest-none", ENTRY, pecn_fresh_start, "fresh start", (r"no checkpoint in {output} yet, starting a fresh run",),
                  pipeline_saved))


# ----------------------------------------------------------------------------- optional packages


CASES.append(Case("pecn-xformers-absent", ENTRY, partial(pecn_with_flags, flags=("--enable_xformers_memory_efficient_attention",)), "error",
                  (r"--enable_xformers_memory_efficient_attention", r"xformers is not installed")))
CASES.append(Case("pecn-bitsandbytes-absent", ENTRY, partial(pecn_with_flags, flags=("--use_8bit_adam",)), "error",
                  (r"--use_8bit_adam", r"needs bitsandbytes")))


# ----------------------------------------------------------------------------- annotations and frames


def pecn_data_copy(tmp: Path, env: Env, change_entries: Optional[Callable[[list], Any]] = None) -> Path:
    """A data root whose train_filtered.json is the prepared one, changed by `change_entries`."""
    root = tmp / "sthv2"
    (root / "annotations").mkdir(parents=True)
    (root / f"frames_{SIZE}x{SIZE}").symlink_to(env.ssv2 / f"frames_{SIZE}x{SIZE}")
    for name in ("train_filtered.json", "val_filtered.json"):
        entries = json.loads((env.ssv2 / "annotations" / name).read_text())
        (root / "annotations" / name).write_text(json.dumps(change_entries(entries) if change_entries else entries))
    return root


def pecn_on_annotations(tmp: Path, env: Env, change_entries: Optional[Callable[[list], Any]] = None, text: Optional[str] = None,
                        frames: bool = True) -> Built:
    """train_instruct_pix2pix.py with a train_filtered.json changed by `change_entries` (or replaced by `text`), and no
    frames folder unless `frames`."""
    root = pecn_data_copy(tmp, env, change_entries)
    annotation = root / "annotations" / "train_filtered.json"
    if text is not None:
        annotation.write_text(text)
    if not frames:
        (root / f"frames_{SIZE}x{SIZE}").unlink()
    return Built(pecn_argv(env, tmp / "run", data_root=root), {"annotation": str(annotation), "frames": str(root / f"frames_{SIZE}x{SIZE}")})


CASES.append(Case("pecn-annotations-malformed-json", ENTRY, partial(pecn_on_annotations, text='[{"id": '), "error", (r"{annotation}", r"malformed JSON")))
CASES.append(Case("pecn-annotations-wrong-schema", ENTRY, partial(pecn_on_annotations, text='{"id": "1"}'), "error",
                  (r"{annotation}", r"expected a list of entries")))


def without_num_frames(entries: list) -> list:
    return [{k: v for k, v in entry.items() if k != "num_frames"} for entry in entries]


CASES.append(Case("pecn-annotations-without-num_frames", ENTRY, partial(pecn_on_annotations, change_entries=without_num_frames), "error",
                  (r"{annotation}", r"has no num_frames", r"pecn.video_loader")))
CASES.append(Case("pecn-frames-folder-missing", ENTRY, partial(pecn_on_annotations, frames=False), "error", (r"{frames}", r"does not exist")))


def pecn_frame_unreadable(tmp: Path, env: Env) -> Built:
    """Every prepared pair, with the input frame of one video an empty file."""
    root = pecn_data_copy(tmp, env)
    frames = root / f"frames_{SIZE}x{SIZE}"
    frames.unlink()
    shutil.copytree(env.ssv2 / f"frames_{SIZE}x{SIZE}", frames)
    entry = next(e for e in json.loads((root / "annotations" / "train_filtered.json").read_text()) if e["num_frames"] == NUM_FRAMES)
    (frames / entry["id"] / "00020.png").write_bytes(b"")
    return Built(pecn_argv(env, tmp / "run", data_root=root), {"bad": str(frames / entry["id"] / "00020.png")})


CASES.append(Case("pecn-frame-unreadable", DATA, pecn_frame_unreadable, "skip", (r"{bad}: cannot read image", r"skipped .*1 frame files unreadable")))


def pecn_odd_resolution(tmp: Path, env: Env) -> Built:
    """--resolution 30 from 32x32 frames: no multiple of 8, which diffusers' UNet2DConditionModel handles."""
    return Built(pecn_argv(env, tmp / "run", "--resolution=30", f"--frames_dir={env.ssv2 / f'frames_{SIZE}x{SIZE}'}"), {"output": str(tmp / "run")})


CASES.append(Case("pecn-resolution-not-multiple-of-8", ENTRY, pecn_odd_resolution, "works", (), pipeline_saved))


def pecn_frames_in_mode(tmp: Path, env: Env, mode: str) -> Built:
    """One pair whose input and target frames are `mode` images."""
    root, video_id = ssv2_pair_in_mode(tmp, env, mode)
    return Built(pecn_argv(env, tmp / "run", data_root=root), {"id": video_id})


def pair_in_colour(built: Built, outcome: Outcome, mode: str) -> None:
    example = outcome.value[0][0]
    for key in ("original_pixel_values", "edited_pixel_values"):
        assert example[key].shape == (3, SIZE, SIZE)
        assert_colour(as_255(example[key]), COLOUR_MODES[mode][1], channel_axis=0)


CASES.extend(Case(f"pecn-frames-{mode}", DATA, partial(pecn_frames_in_mode, mode=mode), "works", (), partial(pair_in_colour, mode=mode))
             for mode in COLOUR_MODES)


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case, matrix_env, tmp_path, capsys, caplog):
    try_case(case, matrix_env, tmp_path, capsys, caplog)
