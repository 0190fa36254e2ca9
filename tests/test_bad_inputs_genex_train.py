"""Bad input to train_world_explorer.py: refused before the first step with one line, and what it reads from a
frames folder ("train_world_explorer.py data"). The matrix's rules: tests/bad_inputs_support.py."""

import shutil
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import pytest

from bad_inputs_support import (CLIP_LENGTH, COLOUR_MODES, HEIGHT, WIDTH, Built, Case, Env, Outcome, as_255, assert_colour, checkpoint_folder,
                                empty_folder, fake_checkpoint, ip2p_folder, ip2p_trainable, missing_folder, other_shape, params, pipeline_saved,
                                svd_trainable, svd_with_4_channel_unet, try_case, write_frame_folder)

ENTRY = "train_world_explorer.py"
DATA = "train_world_explorer.py data"
NOT_SVD = r"not a Stable Video Diffusion pipeline folder"
CASES: list[Case] = []


def genex_argv(env: Env, output: Path, *extra: str, base: Optional[Path] = None, model: Optional[Path] = None) -> list[str]:
    return [f"--pretrained_model_name_or_path={model or env.svd}", f"--base_folder={base or env.frames}", f"--num_frames={CLIP_LENGTH - 2}",
            f"--width={WIDTH}", f"--height={HEIGHT}", f"--output_dir={output}", "--max_train_steps=1", "--checkpointing_steps=1",
            "--lr_warmup_steps=0", "--seed=1", "--num_workers=0", "--report_to=none", "--mixed_precision=no", *extra]


# ----------------------------------------------------------------------------- flags


def genex_with_flags(tmp: Path, env: Env, flags: tuple[str, ...]) -> Built:
    return Built(genex_argv(env, tmp / "run", *flags), {"base": str(env.frames)})


CASES.append(Case("genex-num_frames-beyond-every-clip", ENTRY, partial(genex_with_flags, flags=("--num_frames=50",)), "error",
                  (r"{base}", r"no frame folder has num_frames=50", r"the longest.* has 6")))
CASES.append(Case("genex-width-not-multiple", ENTRY, partial(genex_with_flags, flags=("--width=66",)), "error", (r"--width 66", r"multiples of \d+")))
CASES.append(Case("genex-height-not-multiple", ENTRY, partial(genex_with_flags, flags=("--height=30",)), "error", (r"--height 30", r"multiples of \d+")))


# ----------------------------------------------------------------------------- --pretrained_model_name_or_path


def genex_with_model(tmp: Path, env: Env, make: Callable[[Path, Env], Path]) -> Built:
    """train_world_explorer.py on a model folder that `make` writes."""
    model = make(tmp, env)
    return Built(genex_argv(env, tmp / "run", model=model), {"model": str(model)})


CASES.append(Case("genex-model-empty-folder", ENTRY, partial(genex_with_model, make=empty_folder), "error", (r"{model}", NOT_SVD)))
CASES.append(Case("genex-model-missing", ENTRY, partial(genex_with_model, make=missing_folder), "error", (r"{model}", r"folder does not exist")))


def svd_unet_only(tmp: Path, env: Env) -> Path:
    shutil.copytree(env.svd / "unet", tmp / "model" / "unet")
    return tmp / "model"


CASES.append(Case("genex-model-only-unet", ENTRY, partial(genex_with_model, make=svd_unet_only), "error", (r"{model}", NOT_SVD)))
CASES.append(Case("genex-model-is-instruct-pix2pix", ENTRY, partial(genex_with_model, make=ip2p_folder), "error", (r"{model}", NOT_SVD)))
CASES.append(Case("genex-model-is-checkpoint", ENTRY, partial(genex_with_model, make=checkpoint_folder), "error", (r"{model}", NOT_SVD)))
CASES.append(Case("genex-unet-4-channels", ENTRY, partial(genex_with_model, make=svd_with_4_channel_unet), "error",
                  (r"{model}", r"unet takes 4 input channels, SVD needs 2 x 4")))


# ----------------------------------------------------------------------------- --resume_from_checkpoint


def genex_resume(tmp: Path, env: Env, weights: Callable[[Env], dict], resume: str = "checkpoint-2") -> Built:
    """Resume from a checkpoint holding `weights`; earlier results in output_dir must survive."""
    output = tmp / "run"
    checkpoint = fake_checkpoint(output / "checkpoint-2", weights(env))
    finished = output / "validation" / "step_2" / "pano.mp4"
    finished.parent.mkdir(parents=True)
    finished.write_bytes(b"a finished validation video")
    keep = sorted(checkpoint.iterdir()) + [finished]
    return Built(genex_argv(env, output, f"--resume_from_checkpoint={resume}"), {"checkpoint": str(checkpoint)}, keep)


CASES.append(Case("genex-checkpoint-of-pecn-run", ENTRY, partial(genex_resume, weights=ip2p_trainable, resume="latest"), "error",
                  (r"{checkpoint}", r"trainable parameters do not match this run", r"another trainable set")))


def svd_trainable_wider(env: Env) -> dict:
    return other_shape(svd_trainable(env))


CASES.append(Case("genex-checkpoint-other-shapes", ENTRY, partial(genex_resume, weights=svd_trainable_wider), "error",
                  (r"{checkpoint}", r"has shape \(\d+.*\), the model expects")))
CASES.append(Case("genex-resume-not-a-checkpoint", ENTRY, partial(genex_resume, weights=svd_trainable, resume="checkpoint-7"), "error",
                  (r"checkpoint-7", r"not a complete checkpoint folder")))


def genex_fresh_start(tmp: Path, env: Env) -> Built:
    return Built(genex_argv(env, tmp / "run", "--resume_from_checkpoint=latest", "--max_train_steps=1"), {"output": str(tmp / "run")})


CASES.append(Case("genex-resume-latest-none", ENTRY, genex_fresh_start, "fresh start", (r"no checkpoint in {output} yet, starting a fresh run",),
                  pipeline_saved))


# ----------------------------------------------------------------------------- optional packages


CASES.append(Case("genex-xformers-absent", ENTRY, partial(genex_with_flags, flags=("--enable_xformers_memory_efficient_attention",)), "error",
                  (r"--enable_xformers_memory_efficient_attention", r"xformers is not installed")))
CASES.append(Case("genex-bitsandbytes-absent", ENTRY, partial(genex_with_flags, flags=("--use_8bit_adam",)), "error",
                  (r"--use_8bit_adam", r"needs bitsandbytes")))


# ----------------------------------------------------------------------------- --base_folder


def genex_on_base(tmp: Path, env: Env, make: Callable[[Path], Path], flags: tuple[str, ...] = ()) -> Built:
    """train_world_explorer.py (or its dataset) on a --base_folder that `make` writes."""
    base = make(tmp)
    return Built(genex_argv(env, tmp / "run", *flags, base=base), {"base": str(base)})


def base_missing(tmp: Path) -> Path:
    return tmp / "nowhere"


CASES.append(Case("genex-base-folder-missing", ENTRY, partial(genex_on_base, make=base_missing), "error", (r"{base}", r"does not exist")))


def base_without_images(tmp: Path) -> Path:
    base = tmp / "frames"
    (base / "realistic" / "video_00001").mkdir(parents=True)
    (base / "realistic" / "video_00001" / "notes.txt").write_text("no frames here")
    return base


CASES.append(Case("genex-base-folder-without-images", ENTRY, partial(genex_on_base, make=base_without_images), "error",
                  (r"{base}", r"no folder of frame images")))


def base_with_broken_frame(tmp: Path) -> Path:
    base = tmp / "frames"
    folder = write_frame_folder(base / "realistic" / "video_00001", CLIP_LENGTH, seed=0)
    (folder / "frame_0003.png").write_bytes(b"")
    return base


CASES.append(Case("genex-frame-unreadable", ENTRY, partial(genex_on_base, make=base_with_broken_frame, flags=("--num_frames=6",)), "error",
                  (r"frame_0003\.png", r"cannot read image")))


# ----------------------------------------------------------------------------- what train_world_explorer.py reads from a frames folder


def base_with_gap(tmp: Path) -> Path:
    """A complete folder, and one with frames 1-3 and 7-9: a window of 4 there would join frames that are not consecutive."""
    base = tmp / "frames"
    write_frame_folder(base / "realistic" / "video_00001", CLIP_LENGTH, seed=0)
    write_frame_folder(base / "realistic" / "video_00002", 6, seed=1, numbers=[1, 2, 3, 7, 8, 9])
    return base


def no_window_across_gap(built: Built, outcome: Outcome) -> None:
    """A window of frames is consecutive frames of the video, or the folder is not used."""
    dataset = outcome.value if not isinstance(outcome.value, tuple) else outcome.value[0]
    for epoch in range(5):
        dataset.set_epoch(epoch)
        for index, (_, frames) in enumerate(dataset.videos):
            start = dataset.window_start(index)
            numbers = [int(path.stem.split("_")[-1]) for path in frames[start : start + dataset.num_frames]]
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers


CASES.append(Case("genex-frames-gap-in-numbering", DATA, partial(genex_on_base, make=base_with_gap), "skip", (r"gap",), no_window_across_gap))


def base_with_other_files(tmp: Path) -> Path:
    base = tmp / "frames"
    folder = write_frame_folder(base / "realistic" / "video_00001", CLIP_LENGTH, seed=0)
    (folder / "notes.txt").write_text("camera path: straight")
    (folder / "Thumbs.db").write_bytes(b"\0" * 64)
    (folder / ".frame_0003.png.swp").write_bytes(b"\0" * 64)
    (folder / "poses.json").write_text("{}")
    return base


def only_images_read(built: Built, outcome: Outcome) -> None:
    assert [len(frames) for _, frames in outcome.value.videos] == [CLIP_LENGTH]


CASES.append(Case("genex-frames-with-other-files", DATA, partial(genex_on_base, make=base_with_other_files), "works", (), only_images_read))


def base_in_mode(tmp: Path, mode: str) -> Path:
    writer, _ = COLOUR_MODES[mode]
    folder = tmp / "frames" / "realistic" / "video_00001"
    folder.mkdir(parents=True)
    suffix = ".jpg" if mode == "cmyk" else ".png"
    for number in range(1, CLIP_LENGTH + 1):
        writer(folder / f"frame_{number:04d}{suffix}", (WIDTH, HEIGHT))
    return tmp / "frames"


def frames_in_colour(built: Built, outcome: Outcome, mode: str) -> None:
    clip = outcome.value[0]["pixel_values"]
    assert clip.shape == (CLIP_LENGTH - 2, 3, HEIGHT, WIDTH)
    assert_colour(as_255(clip), COLOUR_MODES[mode][1], channel_axis=1)


CASES.extend(Case(f"genex-frames-{mode}", DATA, partial(genex_on_base, make=partial(base_in_mode, mode=mode)), "works", (),
                  partial(frames_in_colour, mode=mode)) for mode in COLOUR_MODES)


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case, matrix_env, tmp_path, capsys, caplog):
    try_case(case, matrix_env, tmp_path, capsys, caplog)
