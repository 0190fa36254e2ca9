"""Bad input to sample_world_explorer.py (a panorama -> a forward walk video). The matrix's rules: tests/bad_inputs_support.py."""

import json
import shutil
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import av
import pytest
from PIL import Image

from bad_inputs_support import (COLOUR_MODES, HEIGHT, UNWRITABLE, WIDTH, Built, Case, Env, Outcome, empty_folder, ip2p_folder, noise_frames, params,
                                svd_with_4_channel_unet, try_case, unwritable_folder)

ENTRY = "sample_world_explorer.py"
NOT_SVD = r"not a Stable Video Diffusion pipeline folder"
CASES: list[Case] = []


def sample_argv(env: Env, panorama: Path, output: Path, *extra: str, model: Optional[Path] = None) -> list[str]:
    return ["--model_dir", str(model or env.svd), "--panorama", str(panorama), "--output", str(output), "--width", str(WIDTH),
            "--height", str(HEIGHT), "--num_frames", "2", "--num_inference_steps", "1", "--decode_chunk_size", "2", "--device", "cpu", *extra]


def good_panorama(tmp: Path) -> Path:
    path = tmp / "pano.png"
    Image.fromarray(noise_frames(1, 2 * HEIGHT, HEIGHT, seed=4)[0]).save(path)
    return path


# ----------------------------------------------------------------------------- --model_dir and flags


def sample_with_model(tmp: Path, env: Env, make: Callable[[Path, Env], Path]) -> Built:
    """sample_world_explorer.py on a model folder that `make` writes."""
    model = make(tmp, env)
    return Built(sample_argv(env, good_panorama(tmp), tmp / "walk.mp4", model=model), {"model": str(model)})


CASES.append(Case("sampler-genex-model-empty-folder", ENTRY, partial(sample_with_model, make=empty_folder), "error", (r"{model}", NOT_SVD)))
CASES.append(Case("sampler-genex-model-is-instruct-pix2pix", ENTRY, partial(sample_with_model, make=ip2p_folder), "error", (r"{model}", NOT_SVD)))
CASES.append(Case("sampler-genex-unet-4-channels", ENTRY, partial(sample_with_model, make=svd_with_4_channel_unet), "error",
                  (r"{model}", r"unet takes 4 input channels, SVD needs 2 x 4")))


def sample_with_flags(tmp: Path, env: Env, flags: tuple[str, ...]) -> Built:
    return Built(sample_argv(env, good_panorama(tmp), tmp / "walk.mp4", *flags))


def sample_over_earlier_video(tmp: Path, env: Env, flags: tuple[str, ...]) -> Built:
    """A typo'd rerun of the sampler onto the video of an earlier run, which must stay as it was."""
    output = tmp / "walk.mp4"
    output.write_bytes(b"the earlier run's video")
    return Built(sample_argv(env, good_panorama(tmp), output, *flags), keep=[output])


CASES.append(Case("sampler-genex-num_frames-0", ENTRY, partial(sample_over_earlier_video, flags=("--num_frames", "0")), "error",
                  (r"--num_frames must be at least 1, got 0",), code=2))
CASES.append(Case("sampler-genex-width-not-multiple", ENTRY, partial(sample_with_flags, flags=("--width", "66")), "error",
                  (r"--width 66", r"multiples of \d+")))


# ----------------------------------------------------------------------------- --panorama


def sample_on_panorama(tmp: Path, env: Env, make: Callable[[Path], Path]) -> Built:
    """sample_world_explorer.py on a panorama file that `make` writes."""
    panorama = make(tmp)
    return Built(sample_argv(env, panorama, tmp / "walk.mp4"), {"panorama": str(panorama), "output": str(tmp / "walk.mp4")})


def panorama_missing(tmp: Path) -> Path:
    return tmp / "pano.png"


CASES.append(Case("sampler-genex-panorama-missing", ENTRY, partial(sample_on_panorama, make=panorama_missing), "error",
                  (r"{panorama}", r"cannot read image")))


def panorama_text(tmp: Path) -> Path:
    (tmp / "pano.png").write_text("not an image")
    return tmp / "pano.png"


CASES.append(Case("sampler-genex-panorama-not-an-image", ENTRY, partial(sample_on_panorama, make=panorama_text), "error",
                  (r"{panorama}", r"cannot read image")))


def panorama_in_mode(tmp: Path, mode: str) -> Path:
    path = tmp / ("pano.jpg" if mode == "cmyk" else "pano.png")
    COLOUR_MODES[mode][0](path, (2 * HEIGHT, HEIGHT))
    return path


def video_written(built: Built, outcome: Outcome) -> None:
    with av.open(built.names["output"]) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    # A 2:1 panorama gives a 2:1 video at the model's width.
    assert len(frames) == 2 and frames[0].shape == (WIDTH // 2, WIDTH, 3)


CASES.extend(Case(f"sampler-genex-panorama-{mode}", ENTRY, partial(sample_on_panorama, make=partial(panorama_in_mode, mode=mode)), "works",
                  (r"Wrote 2 frames",), video_written) for mode in ("cmyk", "16bit-gray", "rgba", "grayscale"))


# ----------------------------------------------------------------------------- --output, and the defaults a trained model brings


def sample_into(tmp: Path, env: Env, make: Callable[[Path], Path]) -> Built:
    output = make(tmp)
    return Built(sample_argv(env, good_panorama(tmp), output), {"output": str(output)})


def output_in_unwritable_folder(tmp: Path) -> Path:
    return unwritable_folder(tmp / "videos") / "walk.mp4"


def output_is_a_folder(tmp: Path) -> Path:
    (tmp / "walk.mp4").mkdir()
    return tmp / "walk.mp4"


CASES.append(Case("sampler-genex-output-unwritable", ENTRY, partial(sample_into, make=output_in_unwritable_folder), "error",
                  (r"--output .*videos", UNWRITABLE), code=2))
CASES.append(Case("sampler-genex-output-is-a-folder", ENTRY, partial(sample_into, make=output_is_a_folder), "error",
                  (r"--output {output}: is a folder",), code=2))


def model_trained_at_other_settings(tmp: Path, env: Env) -> Built:
    """A model trained at 128x64, 3 frames, fps 5 (its trained_settings.json, as training writes it), sampled without those flags."""
    model = tmp / "model"
    shutil.copytree(env.svd, model)
    (model / "trained_settings.json").write_text(json.dumps({"width": 2 * WIDTH, "height": 2 * HEIGHT, "num_frames": 3, "fps": 5,
                                                             "motion_bucket_id": 100}))
    output = tmp / "walk.mp4"
    argv = ["--model_dir", str(model), "--panorama", str(good_panorama(tmp)), "--output", str(output), "--num_inference_steps", "1",
            "--decode_chunk_size", "2", "--device", "cpu"]
    return Built(argv, {"output": str(output)})


def video_at_trained_settings(built: Built, outcome: Outcome) -> None:
    with av.open(built.names["output"]) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        rate = stream.average_rate
    assert len(frames) == 3 and frames[0].shape == (WIDTH, 2 * WIDTH, 3) and rate == 5


CASES.append(Case("sampler-genex-defaults-to-trained-settings", ENTRY, model_trained_at_other_settings, "works",
                  (r"Generating 3 frames at 128x64, fps 5, motion bucket 100",), video_at_trained_settings, code=0))


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case, matrix_env, tmp_path, capsys, caplog, monkeypatch):
    try_case(case, matrix_env, tmp_path, capsys, caplog, monkeypatch)
