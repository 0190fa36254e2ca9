"""What the bad-input matrix (tests/test_bad_inputs_*.py, one file per entry point) shares.

Every entry point is tried against inputs it must refuse clearly, skip countably, or read right. A
Case names the entry point a user runs, the builder of its bad input, and what the user must see:

- "error": a non-zero exit code and ONE line on stderr with "error:" that matches every pattern
  (the file or flag, and the problem); never a traceback;
- "skip": the run succeeds and its summary (stdout, stderr or log) counts and names what was skipped;
- "stopped": the summary names the file and the problem, and the run exits non-zero because a whole
  part of the input (a scene's table) could not be read;
- "works": the run succeeds and reads the input right (`check`);
- "fresh start": `--resume_from_checkpoint latest` with no checkpoint trains from step 0 and says so.

A builder takes (tmp folder, shared Env) and returns a Built: the argv of its entry point, the names
the expected message must mention, the environment variables the run sees, and the finished outputs
a bad input must not cost. Outputs it lists in `keep` (earlier frames, checkpoints, filtered
annotations, a whole earlier run) must be byte for byte the same after the run; a case that reruns
into the same folder lists everything the first run wrote. A case with a `code` must exit with
exactly that code. `try_case` runs one case and `assert_outcome` is the one check of what the user saw.
"""

import hashlib
import importlib
import io
import json
import logging
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from common.cli import run_cli

WIDTH, HEIGHT = 64, 32  # GenEx frames and panoramas
SIZE = 32  # PECN frames
NUM_FRAMES = 24  # frames of every synthetic SSv2 video
CLIP_LENGTH = 6  # frames of every GenEx frame folder

DECODE_FAILURE = r"truncated|decoding failed|no frame"


@dataclass
class Env:
    """Inputs built once per test session: tiny pipelines, a GenEx frames folder, a prepared synthetic SSv2."""

    root: Path
    svd: Path
    ip2p: Path
    t2i: Path
    frames: Path
    ssv2: Path


@dataclass
class Built:
    argv: list[str]
    names: dict[str, str] = field(default_factory=dict)
    keep: list[Path] = field(default_factory=list)
    # Environment variables set for the run (None: unset), restored afterwards.
    env: dict[str, Optional[str]] = field(default_factory=dict)


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    log: str
    value: Any = None


@dataclass(frozen=True)
class Case:
    id: str
    entry: str
    build: Callable[[Path, Env], Built]
    expect: str
    says: tuple[str, ...] = ()
    check: Optional[Callable[[Built, Outcome], None]] = None
    xfail: Optional[str] = None
    code: Optional[int] = None


# ----------------------------------------------------------------------------- shared inputs


def noise_frames(count: int, width: int, height: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def write_frame_folder(folder: Path, count: int, seed: int, numbers=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for number, frame in zip(numbers or range(1, count + 1), noise_frames(count, WIDTH, HEIGHT, seed)):
        Image.fromarray(frame).save(folder / f"frame_{number:04d}.png")
    return folder


def build_env(root: Path) -> Env:
    from genex.tiny import save_tiny_svd_pipeline
    from pecn import dataset, video_loader
    from pecn.synthetic import write_synthetic_ssv2
    from pecn.tiny import save_tiny_pipeline

    ssv2 = root / "sthv2"
    write_synthetic_ssv2(ssv2, train_per_class=1, val_per_class=1, test_videos=0, num_frames=NUM_FRAMES, width=SIZE, height=SIZE, short_videos=2)
    dataset.main(["--data_root", str(ssv2), "--train_per_task", "100", "--val_per_task", "100"])
    video_loader.main(["--data_root", str(ssv2), "--sizes", f"{SIZE}x{SIZE}", "--num_workers", "1"])
    frames = root / "frames"
    for k in range(2):
        write_frame_folder(frames / "realistic" / f"video_{k + 1:05d}", CLIP_LENGTH, seed=k)
    return Env(root, save_tiny_svd_pipeline(root / "svd"), save_tiny_pipeline("instruct_pix2pix", root / "ip2p"),
               save_tiny_pipeline("text_to_image", root / "t2i"), frames, ssv2)


# ----------------------------------------------------------------------------- running an entry point


def _exit_code(error: SystemExit) -> int:
    """What the interpreter does with SystemExit: a string is printed to stderr and exits 1."""
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code
    print(error.code, file=sys.stderr)
    return 1


def unset_accelerate_state() -> None:
    """Accelerate's process-wide state unset, as in the fresh process of a user's command: for a script's main run in the tests' process."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_main(argv: list[str], module_name: str, wrap: bool):
    """main(argv) of a script, as a fresh process runs it; `wrap`: its __main__ goes through common.cli.run_cli."""
    unset_accelerate_state()
    main = importlib.import_module(module_name).main
    if wrap:
        return run_cli(lambda: main(argv))
    return main(argv)


def run_prepare(argv: list[str]):
    import prepare_dataset

    sys.exit(prepare_dataset.main(argv))


def genex_dataset(argv: list[str]):
    """The dataset train_world_explorer.py builds from these flags."""
    import train_world_explorer
    from genex.data import FrameFolderDataset

    args = train_world_explorer.parse_args(argv)
    return FrameFolderDataset(args.base_folder, args.num_frames, args.width, args.height, seed=args.seed or 0)


def pecn_pairs(argv: list[str]):
    """The training pairs train_instruct_pix2pix.py builds from these flags, with its own preprocessing."""
    import train_instruct_pix2pix
    from transformers import CLIPTokenizer

    from pecn.pairs import build_pair_dataset, pair_transform

    args = train_instruct_pix2pix.parse_args(argv)
    tokenizer = CLIPTokenizer.from_pretrained(args.pretrained_model_name_or_path, subfolder="tokenizer")
    pairs, skipped = build_pair_dataset(args.train_annotations, args.frames_dir, args.input_frame_idx, args.target_frame_idx, args.add_progress)
    return pairs.with_transform(pair_transform(args.resolution, tokenizer, with_mirrored_prompts=args.random_flip)), skipped


def pecn_models(argv: list[str]):
    import train_instruct_pix2pix
    from pecn.models import load_models

    args = train_instruct_pix2pix.parse_args(argv)
    return load_models(args.pretrained_model_name_or_path, args.variant)


# How a user starts each command-line entry point from the repository root.
COMMANDS = {
    "prepare_dataset.py": ["prepare_dataset.py"],
    "pecn.dataset": ["-m", "pecn.dataset"],
    "pecn.video_loader": ["-m", "pecn.video_loader"],
    "train_world_explorer.py": ["train_world_explorer.py"],
    "sample_world_explorer.py": ["sample_world_explorer.py"],
    "train_instruct_pix2pix.py": ["train_instruct_pix2pix.py"],
    "sample_from_pix2pix.py": ["sample_from_pix2pix.py"],
}

# The same entry points in this process; "<script> data" / "models" is what that script builds from its flags.
ENTRIES: dict[str, Callable] = {
    "prepare_dataset.py": run_prepare,
    "pecn.dataset": partial(run_main, module_name="pecn.dataset", wrap=False),
    "pecn.video_loader": partial(run_main, module_name="pecn.video_loader", wrap=False),
    "train_world_explorer.py": partial(run_main, module_name="train_world_explorer", wrap=True),
    "train_world_explorer.py data": genex_dataset,
    "sample_world_explorer.py": partial(run_main, module_name="sample_world_explorer", wrap=True),
    "train_instruct_pix2pix.py": partial(run_main, module_name="train_instruct_pix2pix", wrap=True),
    "train_instruct_pix2pix.py data": pecn_pairs,
    "train_instruct_pix2pix.py models": pecn_models,
    "sample_from_pix2pix.py": partial(run_main, module_name="sample_from_pix2pix", wrap=True),
}


def run_entry(entry: str, argv: list[str], capsys, caplog) -> Outcome:
    """Run one entry point in this process as a user's shell would see it: exit code, stdout, stderr, log and warnings."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    value, code = None, 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = ENTRIES[entry](argv)
        except SystemExit as error:
            code = _exit_code(error)
        finally:
            # The training scripts add a train.log handler to the root logger on every run.
            for handler in set(root.handlers) - set(handlers):
                root.removeHandler(handler)
                handler.close()
    captured = capsys.readouterr()
    log = caplog.text + "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    return Outcome(code, captured.out, captured.err, log, value)


# ----------------------------------------------------------------------------- what the user must see


def digest(paths) -> dict:
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}


def patterns(case: Case, built: Built) -> list[str]:
    return [pattern.format(**{k: re.escape(v) for k, v in built.names.items()}) for pattern in case.says]


def assert_outcome(case: Case, built: Built, outcome: Outcome) -> None:
    """What the user sees is what `case.expect` says: one error line, a counted skip, a stop, a correct read or a fresh start."""
    shown = outcome.out + outcome.err + outcome.log
    assert "Traceback" not in shown, shown[-3000:]
    if case.code is not None:
        assert outcome.code == case.code, (outcome.code, shown[-3000:])
    if case.expect == "error":
        assert outcome.code != 0, shown[-3000:]
        lines = [line for line in outcome.err.splitlines() if "error:" in line]
        assert len(lines) == 1, outcome.err[-3000:]
        for pattern in patterns(case, built):
            assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    else:
        assert (outcome.code != 0) == (case.expect == "stopped"), shown[-3000:]
        for pattern in patterns(case, built):
            assert re.search(pattern, shown), f"{pattern!r} not in:\n{shown[-3000:]}"
    if case.check:
        case.check(built, outcome)


def files_under(*folders: Path) -> list[Path]:
    """Every file under `folders`: what a rerun must leave byte for byte as it was."""
    return sorted(path for folder in folders for path in Path(folder).rglob("*") if path.is_file())


def try_case(case: Case, env: Env, tmp: Path, capsys, caplog, monkeypatch=None) -> None:
    """Build the case's input, run its entry point, check what the user saw, and that no finished output changed.
    A case that sets environment variables needs pytest's `monkeypatch`, which restores them."""
    built = case.build(tmp, env)
    assert monkeypatch is not None or not built.env, "this case sets environment variables: pass monkeypatch"
    for name, value in built.env.items():
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    before = digest(built.keep)
    # What the builder printed or logged (a first run of a rerun case) is not what this run shows.
    capsys.readouterr()
    caplog.clear()
    outcome = run_entry(case.entry, built.argv, capsys, caplog)
    assert_outcome(case, built, outcome)
    assert digest(built.keep) == before, "a finished output changed"


def params(cases: list[Case]) -> list:
    """The cases as pytest parameters named by their ids; a case with `xfail` must fail."""
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []) for c in cases]


# ----------------------------------------------------------------------------- folders a run cannot write


def unwritable_folder(path: Path) -> Path:
    """Make `path` a folder this user cannot write into: a read-only folder for an ordinary user; for root, who may write into
    any folder, a regular file where the folder should be (as when a mount point is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.mkdir()
        path.chmod(0o555)
    else:
        path.write_text("a file where a folder should be")
    return path


UNWRITABLE = r"cannot write into this folder"


# ----------------------------------------------------------------------------- videos


def write_video(path: Path, frames: list[np.ndarray], codec: str = "libx264", options: Optional[dict] = None) -> Path:
    """An mp4 (moov first, as published datasets are) or webm of `frames`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=options or ({"movflags": "faststart"} if codec == "libx264" else {})) as container:
        stream = container.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def first_packet_offset(path: Path) -> int:
    with av.open(str(path)) as container:
        return min(packet.pos for packet in container.demux(video=0) if packet.pos is not None and packet.pos >= 0)


def cut_mid_stream(path: Path) -> Path:
    """Keep the header and the first part of the frames, as an interrupted download does."""
    data = path.read_bytes()
    start = first_packet_offset(path)
    path.write_bytes(data[: start + (len(data) - start) // 2])
    return path


def cut_before_first_frame(path: Path) -> Path:
    """A header that declares frames, and no frame data."""
    path.write_bytes(path.read_bytes()[: first_packet_offset(path)])
    return path


def image_bytes(fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise_frames(1, WIDTH, HEIGHT, seed=9)[0]).save(buffer, format=fmt)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- images in every colour mode


def write_cmyk(path: Path, size) -> None:
    Image.new("CMYK", size, (0, 255, 255, 0)).save(path, format="JPEG", quality=100)


def write_gray16(path: Path, size) -> None:
    Image.fromarray(np.full(size[::-1], 100 * 257, np.uint16)).save(path, format="PNG")


def write_rgb16(path: Path, size) -> None:
    # cv2 takes BGR: this is RGB (200, 100, 50) in 16 bits per channel.
    ok, data = cv2.imencode(".png", np.full((size[1], size[0], 3), [50 * 257, 100 * 257, 200 * 257], np.uint16))
    path.write_bytes(data.tobytes())


def write_rgba(path: Path, size) -> None:
    Image.new("RGBA", size, (255, 0, 0, 128)).save(path, format="PNG")


def write_gray(path: Path, size) -> None:
    Image.new("L", size, 77).save(path, format="PNG")


# mode name -> (writer of a `size` image file, the 8-bit RGB a reader must see)
COLOUR_MODES = {
    "cmyk": (write_cmyk, (255, 0, 0)),
    "16bit-gray": (write_gray16, (100, 100, 100)),
    "16bit-rgb": (write_rgb16, (200, 100, 50)),
    "rgba": (write_rgba, (255, 127, 127)),  # half-transparent red over white
    "grayscale": (write_gray, (77, 77, 77)),
}


def as_255(pixels: torch.Tensor) -> np.ndarray:
    """Pixels as 0..255 floats, whether the loader gives uint8 or [-1, 1] floats."""
    pixels = pixels.float() if pixels.dtype == torch.uint8 else (pixels.float() + 1) * 127.5
    return pixels.numpy()


def assert_colour(pixels: np.ndarray, rgb, channel_axis: int) -> None:
    """Every pixel is `rgb` (JPEG rounding allowed), channels along `channel_axis`."""
    means = np.moveaxis(pixels, channel_axis, -1).reshape(-1, 3)
    assert np.abs(means - np.array(rgb)).max() <= 3, f"got {means.mean(0)}, expected {rgb}"


# ----------------------------------------------------------------------------- model folders given as --pretrained_model_name_or_path / --model_dir


def empty_folder(tmp: Path, env: Env) -> Path:
    (tmp / "model").mkdir()
    return tmp / "model"


def missing_folder(tmp: Path, env: Env) -> Path:
    return tmp / "no_model"


def ip2p_folder(tmp: Path, env: Env) -> Path:
    return env.ip2p


def svd_folder(tmp: Path, env: Env) -> Path:
    return env.svd


def t2i_folder(tmp: Path, env: Env) -> Path:
    return env.t2i


def checkpoint_folder(tmp: Path, env: Env) -> Path:
    """A checkpoint-<step> folder given where a pipeline is expected (of a run in another folder than the case's --output_dir)."""
    folder = tmp / "earlier_run" / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / "training_state.json").write_text('{"global_step": 2}')
    return folder


def with_unet_in_channels(tmp: Path, source: Path, unet_class, channels: int) -> Path:
    """A copy of the pipeline folder `source` whose UNet (random weights) takes `channels` input channels."""
    model = tmp / "model"
    shutil.copytree(source, model, ignore=shutil.ignore_patterns("unet"))
    config = dict(unet_class.load_config(source / "unet"), in_channels=channels)
    unet_class.from_config(config).save_pretrained(model / "unet")
    return model


def svd_with_4_channel_unet(tmp: Path, env: Env) -> Path:
    from diffusers import UNetSpatioTemporalConditionModel

    return with_unet_in_channels(tmp, env.svd, UNetSpatioTemporalConditionModel, 4)


# ----------------------------------------------------------------------------- checkpoints to resume from


def fake_checkpoint(folder: Path, weights: dict[str, torch.Tensor]) -> Path:
    """A complete-looking checkpoint folder holding `weights` as its trainable parameters."""
    folder.mkdir(parents=True)
    save_file(weights, str(folder / "0_trainable_weights.safetensors"))
    (folder / "training_state.json").write_text('{"global_step": 2}')
    return folder


def svd_trainable(env: Env) -> dict[str, torch.Tensor]:
    state = load_file(str(env.svd / "unet" / "diffusion_pytorch_model.safetensors"))
    return {name: tensor for name, tensor in state.items() if "temporal_transformer_block" in name}


def ip2p_trainable(env: Env) -> dict[str, torch.Tensor]:
    return load_file(str(env.ip2p / "unet" / "diffusion_pytorch_model.safetensors"))


def other_shape(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same names, one weight twice as wide: a run of a bigger model."""
    name = sorted(state)[0]
    return {**state, name: torch.zeros(state[name].shape[0] * 2, *state[name].shape[1:])}


def pipeline_saved(built: Built, outcome: Outcome) -> None:
    assert (Path(built.names["output"]) / "model_index.json").is_file()
    assert (Path(built.names["output"]) / "checkpoint-1").is_dir()


def earlier_run_folder(output: Path, env: Env, pipeline: Path) -> list[Path]:
    """What an earlier training run leaves: two checkpoints, a saved pipeline, a validation output, logs and train.log."""
    for step in (1, 2):
        folder = output / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "training_state.json").write_text(json.dumps({"global_step": step, "run_id": "earlier"}))
        (folder / "optimizer.bin").write_bytes(b"earlier optimizer")
    shutil.copytree(pipeline, output, dirs_exist_ok=True)
    (output / "validation" / "step_2").mkdir(parents=True)
    (output / "validation" / "step_2" / "pano.mp4").write_bytes(b"an earlier validation video")
    (output / "logs" / "run").mkdir(parents=True)
    (output / "logs" / "run" / "events.out.tfevents.1").write_bytes(b"earlier events")
    (output / "train.log").write_text("the earlier run's log\n")
    return files_under(output)


# What refusing a folder that holds earlier_run_folder's run says.
EARLIER_RUN_REFUSED = (r"--output_dir {output}: holds an earlier run \(checkpoint-1, checkpoint-2, a saved pipeline \(model_index.json\)\)",
                       r"--resume_from_checkpoint latest", r"--overwrite_output_dir")


def copy_of_run(run: Path, tmp: Path) -> tuple[Path, list[Path]]:
    """A copy of a finished run to run again into, and every file of it (which the second run must leave byte for byte)."""
    shutil.copytree(run, tmp / "run")
    return tmp / "run", files_under(tmp / "run")


def unrelated_files(output: Path) -> list[Path]:
    """Files a user keeps in an output folder that no training wrote: --overwrite_output_dir must leave them."""
    (output / "notes.txt").write_text("which runs went where")
    (output / "my_data").mkdir(parents=True)
    (output / "my_data" / "frames.txt").write_text("not training's")
    (output / "validation" / "keep_me.txt").write_text("not a step folder")
    return [output / "notes.txt", output / "my_data" / "frames.txt", output / "validation" / "keep_me.txt"]


def earlier_run_replaced(built: Built, outcome: Outcome) -> None:
    """--overwrite_output_dir: the earlier run's checkpoints, validation step and logs are gone, this run's are there."""
    output = Path(built.names["output"])
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-1"]
    assert json.loads((output / "checkpoint-1" / "training_state.json").read_text())["run_id"] != "earlier"
    assert not (output / "validation" / "step_2").exists() and not (output / "logs" / "run").exists()
    assert "the earlier run's log" not in (output / "train.log").read_text()
    assert (output / "model_index.json").is_file()
    assert re.search(r"--overwrite_output_dir: removed the earlier run's .*checkpoint-1, checkpoint-2", outcome.log + outcome.err)


# ----------------------------------------------------------------------------- SSv2 frames, for PECN training and sampling


def ssv2_pair_in_mode(tmp: Path, env: Env, mode: str) -> tuple[Path, str]:
    """A data root with one pair whose input and target frames are `mode` images (a CMYK one is JPEG data,
    as frames are read by content); returns the root and the video's id."""
    root = tmp / "sthv2"
    entry = next(e for e in json.loads((env.ssv2 / "annotations" / "train_filtered.json").read_text()) if e["num_frames"] == NUM_FRAMES)
    frames = root / f"frames_{SIZE}x{SIZE}" / entry["id"]
    shutil.copytree(env.ssv2 / f"frames_{SIZE}x{SIZE}" / entry["id"], frames)
    for index in (20, 21):
        COLOUR_MODES[mode][0](frames / f"{index:05d}.png", (SIZE, SIZE))
    (root / "annotations").mkdir()
    (root / "annotations" / "train_filtered.json").write_text(json.dumps([entry]))
    return root, entry["id"]


# ----------------------------------------------------------------------------- real runs, whose checkpoints some cases damage


REAL_RUNS: dict[str, Path] = {}


def real_run(env: Env, script: str, argv: list[str]) -> Path:
    """A finished 2-step run of `script` (checkpoint-1, checkpoint-2, the pipeline), trained once per session; returns its folder."""
    if script not in REAL_RUNS:
        output = env.root / f"real_run_{Path(script).stem}"
        root = logging.getLogger()
        handlers = list(root.handlers)
        try:
            run_main([*argv, f"--output_dir={output}", "--max_train_steps=2", "--checkpointing_steps=1"], Path(script).stem, wrap=False)
        finally:
            for handler in set(root.handlers) - set(handlers):
                root.removeHandler(handler)
                handler.close()
        REAL_RUNS[script] = output
    return REAL_RUNS[script]


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# Ways a checkpoint file gets damaged (a copy cut short, a disk error), and what the user must be told.
CHECKPOINT_DAMAGE = {
    "cut-safetensors": ("0_trainable_weights.safetensors", cut_in_half, r"cut short or damaged"),
    "cut-optimizer": ("optimizer.bin", cut_in_half, r"cut short or damaged"),
    "empty-scheduler": ("scheduler.bin", lambda path: path.write_bytes(b""), r"is empty"),
    "garbage-training-state": ("training_state.json", lambda path: path.write_text('{"global_st'), r"not readable JSON"),
}


def damaged_checkpoint_cases(pipeline: str, entry: str, run_of: Callable[[Env], Path], argv_of: Callable[..., list[str]]) -> list[Case]:
    """One case per CHECKPOINT_DAMAGE: `--resume_from_checkpoint latest` from a copy of a real run (`run_of`) whose newest
    checkpoint has that file damaged; one line names the file and the previous checkpoint, and no file of the run changes."""

    def build(tmp: Path, env: Env, damage: str) -> Built:
        output, keep = copy_of_run(run_of(env), tmp)
        name, spoil, _ = CHECKPOINT_DAMAGE[damage]
        spoil(output / "checkpoint-2" / name)
        keep = files_under(output)
        return Built(argv_of(env, output, "--resume_from_checkpoint=latest", "--max_train_steps=3"),
                     {"bad": str(output / "checkpoint-2" / name), "previous": str(output / "checkpoint-1")}, keep)

    return [Case(f"{pipeline}-checkpoint-{damage}", entry, partial(build, damage=damage), "error",
                 (r"{bad}: " + says, r"the checkpoint is damaged", r"--resume_from_checkpoint {previous}"), code=2)
            for damage, (_, _, says) in CHECKPOINT_DAMAGE.items()]
