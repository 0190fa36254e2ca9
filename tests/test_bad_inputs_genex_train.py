"""Bad input to train_world_explorer.py: refused before the first step with one line, and what it reads from a
frames folder ("train_world_explorer.py data"). The matrix's rules: tests/bad_inputs_support.py."""

import json
import re
import shutil
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import pytest
from PIL import Image

from bad_inputs_support import (CLIP_LENGTH, COLOUR_MODES, EARLIER_RUN_REFUSED, HEIGHT, UNWRITABLE, WIDTH, Built, Case, Env, Outcome, as_255,
                                assert_colour, checkpoint_folder, copy_of_run, cut_in_half, damaged_checkpoint_cases, earlier_run_folder,
                                earlier_run_replaced, empty_folder, fake_checkpoint, files_under, ip2p_folder, ip2p_trainable, missing_folder,
                                noise_frames, other_shape, params, pipeline_saved, real_run, svd_trainable, svd_with_4_channel_unet, try_case,
                                unrelated_files, unwritable_folder, write_frame_folder)

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


def genex_with_output(tmp: Path, env: Env, flags: tuple[str, ...]) -> Built:
    return Built(genex_argv(env, tmp / "run", *flags), {"output": str(tmp / "run")})


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


# ----------------------------------------------------------------------------- --output_dir holding an earlier run


def genex_real_run(env: Env) -> Path:
    return real_run(env, "train_world_explorer.py", genex_argv(env, env.root / "unused"))


def genex_into_earlier_run(tmp: Path, env: Env, flags: tuple[str, ...] = (), pipeline_only: bool = False) -> Built:
    """train_world_explorer.py into a folder an earlier run left (checkpoints, pipeline, validation video, logs); every file of it
    must stay byte for byte as it was unless --overwrite_output_dir removes it."""
    output = tmp / "run"
    if pipeline_only:
        shutil.copytree(env.svd, output)
        keep = files_under(output)
    else:
        keep = earlier_run_folder(output, env, env.svd)
    return Built(genex_argv(env, output, *flags), {"output": str(output)}, keep)


CASES.append(Case("genex-output-holds-earlier-run", ENTRY, genex_into_earlier_run, "error", EARLIER_RUN_REFUSED, code=2))


def genex_rerun(tmp: Path, env: Env) -> Built:
    """The same command run twice: the second run must not touch the first run's files."""
    output, keep = copy_of_run(genex_real_run(env), tmp)
    return Built(genex_argv(env, output, "--max_train_steps=2"), {"output": str(output)}, keep)


CASES.append(Case("genex-rerun-into-same-folder", ENTRY, genex_rerun, "error", (r"--output_dir {output}: holds an earlier run", r"checkpoint-2"),
                  code=2))
CASES.append(Case("genex-resume-latest-pipeline-without-checkpoint", ENTRY,
                  partial(genex_into_earlier_run, flags=("--resume_from_checkpoint=latest",), pipeline_only=True), "error",
                  (r"--output_dir {output}: holds a saved pipeline \(model_index.json\) but no checkpoint to resume from", r"--overwrite_output_dir"),
                  code=2))
CASES.append(Case("genex-overwrite-and-resume", ENTRY, partial(genex_into_earlier_run, flags=("--overwrite_output_dir", "--resume_from_checkpoint=latest")),
                  "error", (r"--overwrite_output_dir and --resume_from_checkpoint contradict each other",), code=2))


def genex_overwrite_the_model(tmp: Path, env: Env) -> Built:
    """--overwrite_output_dir into the folder of the model the run starts from."""
    output = tmp / "run"
    shutil.copytree(env.svd, output)
    return Built(genex_argv(env, output, "--overwrite_output_dir", model=output), {"output": str(output)}, files_under(output))


CASES.append(Case("genex-overwrite-output-is-the-model", ENTRY, genex_overwrite_the_model, "error",
                  (r"--output_dir {output}: holds --pretrained_model_name_or_path", r"would delete the model"), code=2))


def genex_overwrite(tmp: Path, env: Env) -> Built:
    """--overwrite_output_dir over an earlier run, beside files no training wrote (which must stay byte for byte)."""
    built = genex_into_earlier_run(tmp, env, flags=("--overwrite_output_dir",))
    return Built(built.argv, built.names, unrelated_files(tmp / "run"))


def replaced_and_settings_recorded(built: Built, outcome: Outcome) -> None:
    earlier_run_replaced(built, outcome)
    settings = json.loads((Path(built.names["output"]) / "trained_settings.json").read_text())
    assert {k: settings[k] for k in ("width", "height", "num_frames", "fps", "motion_bucket_id")} == {
        "width": WIDTH, "height": HEIGHT, "num_frames": CLIP_LENGTH - 2, "fps": 7, "motion_bucket_id": 127}


CASES.append(Case("genex-overwrite-output-dir", ENTRY, genex_overwrite, "works", (), replaced_and_settings_recorded, code=0))


def genex_rotation_beside_another_run(tmp: Path, env: Env) -> Built:
    """Resumed from checkpoint-2 with --checkpoints_total_limit 1 beside checkpoint-9 of another run (e.g. one that raced into
    the same folder): rotation removes only this run's older checkpoints and leaves the other run's."""
    output = tmp / "run"
    shutil.copytree(genex_real_run(env), output)
    shutil.copytree(output / "checkpoint-2", output / "checkpoint-9")
    (output / "checkpoint-9" / "training_state.json").write_text(json.dumps({"global_step": 9, "run_id": "another run"}))
    argv = genex_argv(env, output, "--resume_from_checkpoint=checkpoint-2", "--max_train_steps=3", "--checkpoints_total_limit=1")
    return Built(argv, {"output": str(output)}, files_under(output / "checkpoint-9"))


def only_this_runs_checkpoints_rotated(built: Built, outcome: Outcome) -> None:
    assert sorted(p.name for p in Path(built.names["output"]).glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-9"]


CASES.append(Case("genex-rotation-keeps-this-runs-checkpoints", ENTRY, genex_rotation_beside_another_run, "works", (r"Resumed from .*checkpoint-2",),
                  only_this_runs_checkpoints_rotated, code=0))


# ----------------------------------------------------------------------------- mistakes caught before the first step


CASES.extend(Case(f"genex-{flag}-{value}", ENTRY, partial(genex_with_flags, flags=(f"--{flag}={value}",)), "error",
                  (fr"--{flag} must be at least {minimum}, got {value}",), code=2)
             for flag, value, minimum in (("checkpointing_steps", 0, 1), ("validation_steps", 0, 1), ("max_train_steps", 0, 1),
                                          ("num_validation_images", -1, 0), ("lr_warmup_steps", -5, 0)))
CASES.append(Case("genex-fp16-on-cpu", ENTRY, partial(genex_with_flags, flags=("--mixed_precision=fp16",)), "error",
                  (r"--mixed_precision fp16", r"cannot run fp16 on cpu", r"use --mixed_precision bf16 or --mixed_precision no"), code=2))


def genex_validation_image_broken(tmp: Path, env: Env) -> Built:
    """The second of the validation images used is cut short: the run must stop before step 1, not at its first validation."""
    folder = tmp / "panoramas"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(noise_frames(1, 2 * HEIGHT, HEIGHT, seed=1)[0]).save(folder / name)
    cut_in_half(folder / "b.png")
    argv = genex_argv(env, tmp / "run", f"--validation_images_folder={folder}", "--num_validation_images=2")
    return Built(argv, {"bad": str(folder / "b.png")})


CASES.append(Case("genex-validation-image-broken", ENTRY, genex_validation_image_broken, "error", (r"{bad}: cannot read image",), code=2))


def genex_wandb(tmp: Path, env: Env, offline: bool) -> Built:
    """--report_to wandb on a machine never logged in (no key, no ~/.netrc entry), without or with WANDB_MODE=offline."""
    home = tmp / "home"
    home.mkdir()
    variables = {"WANDB_MODE": "offline" if offline else None, "WANDB_API_KEY": None, "WANDB_IDENTITY_TOKEN_FILE": None, "NETRC": None,
                 "HOME": str(home), "WANDB_DIR": str(tmp)}
    return Built(genex_argv(env, tmp / "run", "--report_to=wandb"), {"output": str(tmp / "run"), "wandb": str(tmp / "wandb")}, env=variables)


def wandb_logged_offline(built: Built, outcome: Outcome) -> None:
    assert list(Path(built.names["wandb"]).glob("offline-run-*")), "no offline wandb run was written"
    assert (Path(built.names["output"]) / "model_index.json").is_file()


CASES.append(Case("genex-wandb-not-logged-in", ENTRY, partial(genex_wandb, offline=False), "error",
                  (r"--report_to wandb: not logged in to Weights & Biases", r"wandb login", r"WANDB_MODE=offline"), code=2))
CASES.append(Case("genex-wandb-offline-not-logged-in", ENTRY, partial(genex_wandb, offline=True), "works", (), wandb_logged_offline, code=0))


def genex_output_unwritable(tmp: Path, env: Env) -> Built:
    output = unwritable_folder(tmp / "run")
    return Built(genex_argv(env, output), {"output": str(output)})


CASES.append(Case("genex-output-unwritable", ENTRY, genex_output_unwritable, "error", (r"--output_dir {output}", UNWRITABLE), code=2))


def genex_processes_not_connected(tmp: Path, env: Env) -> Built:
    """What `accelerate launch --config_file accelerate_config.yaml` (multi-GPU, 2 processes) gives the first process on a machine
    without GPUs: a world of 2 that Accelerate runs as 1. (Without LOCAL_RANK, so that Accelerate here does not wait for a second
    process; tests/test_bad_inputs_matrix.py runs the real launch.)"""
    return Built(genex_argv(env, tmp / "run"), env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": None})


CASES.append(Case("genex-processes-not-connected", ENTRY, genex_processes_not_connected, "error",
                  (r"the launcher started 2 processes, but they are not connected", r"--num_processes 1"), code=2))


def lr_warms_up_then_stays(built: Built, outcome: Outcome) -> None:
    """constant_with_warmup: lr = learning_rate * min(1, step / warmup) after each optimizer step."""
    log = (Path(built.names["output"]) / "train.log").read_text()
    rates = [float(rate) for rate in re.findall(r"train\.steps - step \d+/\d+: .* lr ([0-9.e-]+)", log)]
    assert rates == pytest.approx([1e-4 * min(1, step / 2) for step in (1, 2, 3)])


CASES.append(Case("genex-lr-warmup-with-constant", ENTRY,
                  partial(genex_with_output, flags=("--lr_scheduler=constant", "--lr_warmup_steps=2", "--learning_rate=1e-4", "--max_train_steps=3",
                                                    "--checkpointing_steps=3")),
                  "works", (r"--lr_scheduler constant with --lr_warmup_steps 2: linear warm-up over 2 optimizer steps, then constant",),
                  lr_warms_up_then_stays, code=0))


# ----------------------------------------------------------------------------- a damaged checkpoint


CASES.extend(damaged_checkpoint_cases("genex", ENTRY, genex_real_run, genex_argv))


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case, matrix_env, tmp_path, capsys, caplog, monkeypatch):
    try_case(case, matrix_env, tmp_path, capsys, caplog, monkeypatch)
