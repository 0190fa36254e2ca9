"""Builders of bad inputs for tests/test_bad_inputs.py, and the in-process runner of each entry point.

Every builder takes (tmp folder, shared Env) and returns a Built: the argv of its entry point, the
names that the expected message must mention, and the finished outputs that must survive the run.
"""

import io
import json
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from safetensors.torch import save_file

WIDTH, HEIGHT = 64, 32  # GenEx frames and panoramas
SIZE = 32  # PECN frames
NUM_FRAMES = 24  # frames of every synthetic SSv2 video
CLIP_LENGTH = 6  # frames of every GenEx frame folder


@dataclass
class Env:
    """Inputs built once per module: tiny pipelines, a GenEx frames folder, a prepared synthetic SSv2."""

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


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    log: str
    value: Any = None


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


def _cli(module_name: str, wrap: bool) -> Callable:
    """main(argv) of a script; `wrap`: its __main__ goes through common.cli.run_cli."""

    def call(argv):
        import importlib

        from common.cli import run_cli

        main = importlib.import_module(module_name).main
        if wrap:
            return run_cli(lambda: main(argv))
        return main(argv)

    return call


def _prepare(argv):
    import prepare_dataset

    sys.exit(prepare_dataset.main(argv))


def _genex_data(argv):
    """The dataset train_world_explorer.py builds from these flags."""
    import train_world_explorer
    from genex.data import FrameFolderDataset

    args = train_world_explorer.parse_args(argv)
    return FrameFolderDataset(args.base_folder, args.num_frames, args.width, args.height, seed=args.seed or 0)


def _pecn_data(argv):
    """The training pairs train_instruct_pix2pix.py builds from these flags, with its own preprocessing."""
    import train_instruct_pix2pix
    from transformers import CLIPTokenizer

    from pecn.pairs import build_pair_dataset, pair_transform

    args = train_instruct_pix2pix.parse_args(argv)
    tokenizer = CLIPTokenizer.from_pretrained(args.pretrained_model_name_or_path, subfolder="tokenizer")
    pairs, skipped = build_pair_dataset(args.train_annotations, args.frames_dir, args.input_frame_idx, args.target_frame_idx, args.add_progress)
    return pairs.with_transform(pair_transform(args.resolution, tokenizer, with_mirrored_prompts=args.random_flip)), skipped


def _pecn_models(argv):
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

ENTRIES: dict[str, Callable] = {
    "prepare_dataset.py": _prepare,
    "pecn.dataset": _cli("pecn.dataset", wrap=False),
    "pecn.video_loader": _cli("pecn.video_loader", wrap=False),
    "train_world_explorer.py": _cli("train_world_explorer", wrap=True),
    "train_world_explorer.py data": _genex_data,
    "sample_world_explorer.py": _cli("sample_world_explorer", wrap=True),
    "train_instruct_pix2pix.py": _cli("train_instruct_pix2pix", wrap=True),
    "train_instruct_pix2pix.py data": _pecn_data,
    "train_instruct_pix2pix.py models": _pecn_models,
    "sample_from_pix2pix.py": _cli("sample_from_pix2pix", wrap=True),
}


def run_entry(entry: str, argv: list[str], capsys, caplog) -> Outcome:
    """Run one entry point in this process as a user's shell would see it: exit code, stdout, stderr, log and warnings."""
    import logging

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


def mp4_frames(seed: int, count: int = 12) -> list[np.ndarray]:
    return noise_frames(count, WIDTH, HEIGHT, seed)


# ----------------------------------------------------------------------------- prepare_dataset.py


def prepare_argv(dataset: Path, output: Path, frames: int = 4) -> list[str]:
    return ["--dataset_path", str(dataset), "--output_dir", str(output), "--scene_types", "realistic",
            "--frames_per_video", str(frames), "--num_workers", "1", "--image_size", str(WIDTH), str(HEIGHT), "--quiet"]


def finished_video(output: Path, name: str) -> list[Path]:
    """A video folder a previous run completed: a rerun must leave its bytes alone."""
    folder = write_frame_folder(output / "realistic" / name, 4, seed=5)
    return sorted(folder.iterdir())


def prepare_folder_layout(tmp: Path, bad_name: str, make_bad: Callable[[Path], None]) -> Built:
    """Realistic/<bad_name> beside a good video; video_00002 is finished from a previous run."""
    dataset, output = tmp / "Genex-DB-src", tmp / "out"
    make_bad(dataset / "Realistic" / bad_name)
    write_video(dataset / "Realistic" / "b_good.mp4", mp4_frames(1))
    write_video(dataset / "Realistic" / "c_good.mp4", mp4_frames(2))
    keep = finished_video(output, "video_00002")
    return Built(prepare_argv(dataset, output), {"bad": f"Realistic/{bad_name}"}, keep)


def mp4_truncated(tmp: Path, env: Env) -> Built:
    return prepare_folder_layout(tmp, "a_cut.mp4", lambda path: cut_mid_stream(write_video(path, mp4_frames(0, 24))))


def mp4_zero_frames(tmp: Path, env: Env) -> Built:
    return prepare_folder_layout(tmp, "a_empty.mp4", lambda path: cut_before_first_frame(write_video(path, mp4_frames(0))))


def mp4_is_an_image(tmp: Path, env: Env) -> Built:
    def make(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes("PNG"))

    return prepare_folder_layout(tmp, "a_still.mp4", make)


def mp4_shorter_than_frames_per_video(tmp: Path, env: Env) -> Built:
    dataset, output = tmp / "src", tmp / "out"
    write_video(dataset / "Realistic" / "short.mp4", mp4_frames(0, 2))
    return Built(prepare_argv(dataset, output, frames=4), {"bad": "Realistic/short.mp4"})


def write_parquet(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=1)
    return path


def parquet_truncated_row(tmp: Path, env: Env) -> Built:
    dataset, output = tmp / "src", tmp / "out"
    good = write_video(tmp / "good.mp4", mp4_frames(1)).read_bytes()
    cut = cut_mid_stream(write_video(tmp / "cut.mp4", mp4_frames(0, 24))).read_bytes()
    write_parquet(dataset / "Realistic" / "train-00000-of-00001.parquet", {"video": pa.array([good, cut], pa.binary())})
    return Built(prepare_argv(dataset, output), {"bad": "Realistic/train-00000-of-00001.parquet row 1"})


def parquet_without_video_column(tmp: Path, env: Env) -> Built:
    dataset, output = tmp / "src", tmp / "out"
    good = write_video(tmp / "good.mp4", mp4_frames(1)).read_bytes()
    path = write_parquet(dataset / "Realistic" / "train-00000-of-00001.parquet", {"mp4": pa.array([good], pa.binary()), "caption": ["a walk"]})
    return Built(prepare_argv(dataset, output), {"bad": str(path)})


def parquet_is_lfs_pointer(tmp: Path, env: Env) -> Built:
    dataset, output = tmp / "src", tmp / "out"
    path = dataset / "Realistic" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 123456\n")
    return Built(prepare_argv(dataset, output), {"bad": str(path)})


def csv_without_video_column(tmp: Path, env: Env) -> Built:
    dataset, output = tmp / "src", tmp / "out"
    path = dataset / "Realistic" / "train.csv"
    path.parent.mkdir(parents=True)
    path.write_text("clip,caption\nb'x',a walk\n")
    return Built(prepare_argv(dataset, output), {"bad": str(path)})


def dataset_path_missing(tmp: Path, env: Env) -> Built:
    return Built(prepare_argv(tmp / "nowhere", tmp / "out"), {"bad": str(tmp / "nowhere")})


def no_scene_found(tmp: Path, env: Env) -> Built:
    (tmp / "src" / "Cartoon").mkdir(parents=True)
    return Built(prepare_argv(tmp / "src", tmp / "out"), {"bad": str(tmp / "src")})


# ----------------------------------------------------------------------------- SSv2 annotations (pecn.dataset)


def ssv2_copy(tmp: Path, env: Env) -> Path:
    """The synthetic SSv2 annotations, with filtered files finished by a previous run."""
    annotations = tmp / "sthv2" / "annotations"
    shutil.copytree(env.ssv2 / "annotations", annotations)
    return annotations


def filter_case(mutate: Callable[[Path], str]) -> Callable[[Path, Env], Built]:
    """pecn.dataset on a copy whose annotations `mutate` breaks; it returns the broken file's name."""

    def build(tmp: Path, env: Env) -> Built:
        annotations = ssv2_copy(tmp, env)
        bad = mutate(annotations)
        keep = [annotations / "train_filtered.json", annotations / "val_filtered.json"]
        return Built(["--data_root", str(tmp / "sthv2"), "--videos_dir", str(tmp / "no_videos")], {"bad": str(annotations / bad)}, keep)

    return build


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def labels_malformed(annotations: Path) -> str:
    (annotations / "labels.json").write_text('{"Moving something up": "0",')
    return "labels.json"


def train_malformed(annotations: Path) -> str:
    text = (annotations / "train.json").read_text()
    (annotations / "train.json").write_text(text[: len(text) // 2])
    return "train.json"


def validation_not_utf8(annotations: Path) -> str:
    (annotations / "validation.json").write_bytes(b'[{"id": "1", "label": "caf\xe9"}]')
    return "validation.json"


def labels_is_a_list(annotations: Path) -> str:
    edit_json(annotations / "labels.json", lambda labels: list(labels))
    return "labels.json"


def train_is_a_dict(annotations: Path) -> str:
    edit_json(annotations / "train.json", lambda entries: {entry["id"]: entry for entry in entries})
    return "train.json"


def train_entry_without_id(annotations: Path) -> str:
    edit_json(annotations / "train.json", lambda entries: entries[:3] + [{k: v for k, v in entries[3].items() if k != "id"}] + entries[4:])
    return "train.json"


def validation_entry_without_template(annotations: Path) -> str:
    edit_json(annotations / "validation.json", lambda entries: [{k: v for k, v in entries[0].items() if k != "template"}] + entries[1:])
    return "validation.json"


def template_not_in_labels(annotations: Path) -> str:
    edit_json(annotations / "labels.json", lambda labels: {k: v for k, v in labels.items() if k != "Covering something with something"})
    return "labels.json"


def labels_missing(annotations: Path) -> str:
    (annotations / "labels.json").unlink()
    return "labels.json"


# ----------------------------------------------------------------------------- SSv2 videos (pecn.video_loader)


def loader_case(break_video: Callable[[Path], None]) -> Callable[[Path, Env], Built]:
    """pecn.video_loader over three videos; the first is broken by `break_video`, the second was extracted before."""

    def build(tmp: Path, env: Env) -> Built:
        root = tmp / "sthv2"
        entries = [{k: v for k, v in e.items() if k not in ("num_frames", "extract_error")}
                   for e in json.loads((env.ssv2 / "annotations" / "val_filtered.json").read_text()) if e["num_frames"] == NUM_FRAMES][:3]
        annotation = root / "annotations" / "val_filtered.json"
        annotation.parent.mkdir(parents=True)
        annotation.write_text(json.dumps(entries))
        for entry in entries:
            (root / "videos").mkdir(exist_ok=True)
            shutil.copy(env.ssv2 / "videos" / f"{entry['id']}.webm", root / "videos")
        done = root / f"frames_{SIZE}x{SIZE}" / entries[1]["id"]
        shutil.copytree(env.ssv2 / f"frames_{SIZE}x{SIZE}" / entries[1]["id"], done)
        break_video(root / "videos" / f"{entries[0]['id']}.webm")
        argv = ["--data_root", str(root), "--annotation_files", str(annotation), "--sizes", f"{SIZE}x{SIZE}", "--num_workers", "1"]
        return Built(argv, {"bad": entries[0]["id"], "annotation": str(annotation)}, sorted(done.iterdir()))

    return build


def webm_truncated(path: Path) -> None:
    write_video(path, noise_frames(NUM_FRAMES, SIZE, SIZE, seed=3), codec="libvpx-vp9")
    cut_mid_stream(path)


def webm_zero_frames(path: Path) -> None:
    cut_before_first_frame(path)


def webm_is_an_image(path: Path) -> None:
    path.write_bytes(image_bytes("JPEG"))


def webm_missing(path: Path) -> None:
    path.unlink()


def loader_annotations_broken(text: str) -> Callable[[Path, Env], Built]:
    def build(tmp: Path, env: Env) -> Built:
        annotation = tmp / "sthv2" / "annotations" / "val_filtered.json"
        annotation.parent.mkdir(parents=True)
        annotation.write_text(text)
        return Built(["--data_root", str(tmp / "sthv2"), "--annotation_files", str(annotation), "--num_workers", "1"], {"bad": str(annotation)})

    return build


def extract_error_marked(built: Built, outcome: Outcome) -> None:
    """The failed video keeps its entry, marked, so the pair dataset counts it instead of losing it."""
    entries = {e["id"]: e for e in json.loads(Path(built.names["annotation"]).read_text())}
    assert entries[built.names["bad"]]["num_frames"] == 0 and entries[built.names["bad"]]["extract_error"]
    assert sum(1 for e in entries.values() if e["num_frames"] == NUM_FRAMES) == 2


# ----------------------------------------------------------------------------- images in every colour mode


# (mode name, writer of a WIDTHxHEIGHT image file, the 8-bit RGB a reader must see)
def _save(image: Image.Image, path: Path, **options) -> None:
    image.save(path, **options)


def write_cmyk(path: Path, size) -> None:
    _save(Image.new("CMYK", size, (0, 255, 255, 0)), path, format="JPEG", quality=100)


def write_gray16(path: Path, size) -> None:
    _save(Image.fromarray(np.full(size[::-1], 100 * 257, np.uint16)), path, format="PNG")


def write_rgb16(path: Path, size) -> None:
    # cv2 takes BGR: this is RGB (200, 100, 50) in 16 bits per channel.
    ok, data = cv2.imencode(".png", np.full((size[1], size[0], 3), [50 * 257, 100 * 257, 200 * 257], np.uint16))
    path.write_bytes(data.tobytes())


def write_rgba(path: Path, size) -> None:
    _save(Image.new("RGBA", size, (255, 0, 0, 128)), path, format="PNG")


def write_gray(path: Path, size) -> None:
    _save(Image.new("L", size, 77), path, format="PNG")


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


# ----------------------------------------------------------------------------- GenEx training


def genex_argv(env: Env, output: Path, *extra: str, base: Optional[Path] = None, model: Optional[Path] = None) -> list[str]:
    return [f"--pretrained_model_name_or_path={model or env.svd}", f"--base_folder={base or env.frames}", f"--num_frames={CLIP_LENGTH - 2}",
            f"--width={WIDTH}", f"--height={HEIGHT}", f"--output_dir={output}", "--max_train_steps=1", "--checkpointing_steps=1",
            "--lr_warmup_steps=0", "--seed=1", "--num_workers=0", "--report_to=none", "--mixed_precision=no", *extra]


def genex_flags(*flags: str) -> Callable[[Path, Env], Built]:
    def build(tmp: Path, env: Env) -> Built:
        return Built(genex_argv(env, tmp / "run", *flags), {"base": str(env.frames)})

    return build


def genex_model(make: Callable[[Path, Env], Path]) -> Callable[[Path, Env], Built]:
    """train_world_explorer.py on a model folder that `make` writes."""

    def build(tmp: Path, env: Env) -> Built:
        model = make(tmp, env)
        return Built(genex_argv(env, tmp / "run", model=model), {"model": str(model)})

    return build


def empty_folder(tmp: Path, env: Env) -> Path:
    (tmp / "model").mkdir()
    return tmp / "model"


def missing_folder(tmp: Path, env: Env) -> Path:
    return tmp / "no_model"


def svd_unet_only(tmp: Path, env: Env) -> Path:
    shutil.copytree(env.svd / "unet", tmp / "model" / "unet")
    return tmp / "model"


def ip2p_unet_only(tmp: Path, env: Env) -> Path:
    shutil.copytree(env.ip2p / "unet", tmp / "model" / "unet")
    return tmp / "model"


def ip2p_folder(tmp: Path, env: Env) -> Path:
    return env.ip2p


def svd_folder(tmp: Path, env: Env) -> Path:
    return env.svd


def checkpoint_folder(tmp: Path, env: Env) -> Path:
    """A checkpoint-<step> folder given where a pipeline is expected."""
    folder = tmp / "run" / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / "training_state.json").write_text('{"global_step": 2}')
    return folder


def svd_with_4_channel_unet(tmp: Path, env: Env) -> Path:
    from diffusers import UNetSpatioTemporalConditionModel

    model = tmp / "model"
    shutil.copytree(env.svd, model, ignore=shutil.ignore_patterns("unet"))
    config = dict(UNetSpatioTemporalConditionModel.load_config(env.svd / "unet"), in_channels=4)
    UNetSpatioTemporalConditionModel.from_config(config).save_pretrained(model / "unet")
    return model


def fake_checkpoint(folder: Path, weights: dict[str, torch.Tensor]) -> Path:
    """A complete-looking checkpoint folder holding `weights` as its trainable parameters."""
    folder.mkdir(parents=True)
    save_file(weights, str(folder / "0_trainable_weights.safetensors"))
    (folder / "training_state.json").write_text('{"global_step": 2}')
    return folder


def svd_trainable(env: Env) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = load_file(str(env.svd / "unet" / "diffusion_pytorch_model.safetensors"))
    return {name: tensor for name, tensor in state.items() if "temporal_transformer_block" in name}


def ip2p_trainable(env: Env) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(env.ip2p / "unet" / "diffusion_pytorch_model.safetensors"))


def other_shape(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same names, one weight twice as wide: a run of a bigger model."""
    name = sorted(state)[0]
    return {**state, name: torch.zeros(state[name].shape[0] * 2, *state[name].shape[1:])}


def genex_resume(weights: Callable[[Env], dict], resume: str = "checkpoint-2") -> Callable[[Path, Env], Built]:
    """Resume train_world_explorer.py from a checkpoint holding `weights`; earlier results in output_dir must survive."""

    def build(tmp: Path, env: Env) -> Built:
        output = tmp / "run"
        checkpoint = fake_checkpoint(output / "checkpoint-2", weights(env))
        finished = output / "validation" / "step_2" / "pano.mp4"
        finished.parent.mkdir(parents=True)
        finished.write_bytes(b"a finished validation video")
        keep = sorted(checkpoint.iterdir()) + [finished]
        return Built(genex_argv(env, output, f"--resume_from_checkpoint={resume}"), {"checkpoint": str(checkpoint)}, keep)

    return build


def genex_fresh_start(tmp: Path, env: Env) -> Built:
    return Built(genex_argv(env, tmp / "run", "--resume_from_checkpoint=latest", "--max_train_steps=1"), {"output": str(tmp / "run")})


def pipeline_saved(built: Built, outcome: Outcome) -> None:
    assert (Path(built.names["output"]) / "model_index.json").is_file()
    assert (Path(built.names["output"]) / "checkpoint-1").is_dir()


def genex_base(make: Callable[[Path], Path], *flags: str) -> Callable[[Path, Env], Built]:
    """train_world_explorer.py (or its dataset) on a --base_folder that `make` writes."""

    def build(tmp: Path, env: Env) -> Built:
        base = make(tmp)
        return Built(genex_argv(env, tmp / "run", *flags, base=base), {"base": str(base)})

    return build


def base_with_gap(tmp: Path) -> Path:
    """A complete folder, and one with frames 1-3 and 7-9: a window of 4 there would join frames that are not consecutive."""
    base = tmp / "frames"
    write_frame_folder(base / "realistic" / "video_00001", CLIP_LENGTH, seed=0)
    write_frame_folder(base / "realistic" / "video_00002", 6, seed=1, numbers=[1, 2, 3, 7, 8, 9])
    return base


def base_with_other_files(tmp: Path) -> Path:
    base = tmp / "frames"
    folder = write_frame_folder(base / "realistic" / "video_00001", CLIP_LENGTH, seed=0)
    (folder / "notes.txt").write_text("camera path: straight")
    (folder / "Thumbs.db").write_bytes(b"\0" * 64)
    (folder / ".frame_0003.png.swp").write_bytes(b"\0" * 64)
    (folder / "poses.json").write_text("{}")
    return base


def base_with_broken_frame(tmp: Path) -> Path:
    base = tmp / "frames"
    folder = write_frame_folder(base / "realistic" / "video_00001", CLIP_LENGTH, seed=0)
    (folder / "frame_0003.png").write_bytes(b"")
    return base


def base_without_images(tmp: Path) -> Path:
    base = tmp / "frames"
    (base / "realistic" / "video_00001").mkdir(parents=True)
    (base / "realistic" / "video_00001" / "notes.txt").write_text("no frames here")
    return base


def base_in_mode(mode: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        writer, _ = COLOUR_MODES[mode]
        folder = tmp / "frames" / "realistic" / "video_00001"
        folder.mkdir(parents=True)
        suffix = ".jpg" if mode == "cmyk" else ".png"
        for number in range(1, CLIP_LENGTH + 1):
            writer(folder / f"frame_{number:04d}{suffix}", (WIDTH, HEIGHT))
        return tmp / "frames"

    return make


def frames_in_colour(mode: str) -> Callable[[Built, Outcome], None]:
    def check(built: Built, outcome: Outcome) -> None:
        clip = outcome.value[0]["pixel_values"]
        assert clip.shape == (CLIP_LENGTH - 2, 3, HEIGHT, WIDTH)
        assert_colour(as_255(clip), COLOUR_MODES[mode][1], channel_axis=1)

    return check


def only_images_read(built: Built, outcome: Outcome) -> None:
    assert [len(frames) for _, frames in outcome.value.videos] == [CLIP_LENGTH]


def no_window_across_gap(built: Built, outcome: Outcome) -> None:
    """A window of frames is consecutive frames of the video, or the folder is not used."""
    dataset = outcome.value if not isinstance(outcome.value, tuple) else outcome.value[0]
    for epoch in range(5):
        dataset.set_epoch(epoch)
        for index, (_, frames) in enumerate(dataset.videos):
            start = dataset.window_start(index)
            numbers = [int(path.stem.split("_")[-1]) for path in frames[start : start + dataset.num_frames]]
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers


# ----------------------------------------------------------------------------- GenEx sampling


def sample_argv(env: Env, panorama: Path, output: Path, *extra: str, model: Optional[Path] = None) -> list[str]:
    return ["--model_dir", str(model or env.svd), "--panorama", str(panorama), "--output", str(output), "--width", str(WIDTH),
            "--height", str(HEIGHT), "--num_frames", "2", "--num_inference_steps", "1", "--decode_chunk_size", "2", "--device", "cpu", *extra]


def good_panorama(tmp: Path) -> Path:
    path = tmp / "pano.png"
    Image.fromarray(noise_frames(1, 2 * HEIGHT, HEIGHT, seed=4)[0]).save(path)
    return path


def sample_model(make: Callable[[Path, Env], Path]) -> Callable[[Path, Env], Built]:
    def build(tmp: Path, env: Env) -> Built:
        model = make(tmp, env)
        return Built(sample_argv(env, good_panorama(tmp), tmp / "walk.mp4", model=model), {"model": str(model)})

    return build


def sample_flags(*flags: str) -> Callable[[Path, Env], Built]:
    def build(tmp: Path, env: Env) -> Built:
        return Built(sample_argv(env, good_panorama(tmp), tmp / "walk.mp4", *flags))

    return build


def panorama_file(make: Callable[[Path], Path]) -> Callable[[Path, Env], Built]:
    def build(tmp: Path, env: Env) -> Built:
        panorama = make(tmp)
        return Built(sample_argv(env, panorama, tmp / "walk.mp4"), {"panorama": str(panorama), "output": str(tmp / "walk.mp4")})

    return build


def panorama_in_mode(mode: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / ("pano.jpg" if mode == "cmyk" else "pano.png")
        COLOUR_MODES[mode][0](path, (2 * HEIGHT, HEIGHT))
        return path

    return make


def panorama_text(tmp: Path) -> Path:
    (tmp / "pano.png").write_text("not an image")
    return tmp / "pano.png"


def panorama_missing(tmp: Path) -> Path:
    return tmp / "pano.png"


def video_written(built: Built, outcome: Outcome) -> None:
    with av.open(built.names["output"]) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 2 and frames[0].shape == (HEIGHT // 2 * 2, WIDTH, 3) or frames[0].shape[1] == WIDTH


# ----------------------------------------------------------------------------- PECN training and sampling


def pecn_argv(env: Env, output: Path, *extra: str, model: Optional[Path] = None, data_root: Optional[Path] = None) -> list[str]:
    return [f"--pretrained_model_name_or_path={model or env.ip2p}", f"--data_root={data_root or env.ssv2}", f"--resolution={SIZE}",
            f"--output_dir={output}", "--train_batch_size=2", "--max_train_steps=1", "--checkpointing_steps=1", "--lr_warmup_steps=0",
            "--seed=1", "--report_to=none", "--mixed_precision=no", "--num_validation_images=0", *extra]


def pecn_flags(*flags: str) -> Callable[[Path, Env], Built]:
    def build(tmp: Path, env: Env) -> Built:
        return Built(pecn_argv(env, tmp / "run", *flags), {"annotation": str(env.ssv2 / "annotations" / "train_filtered.json")})

    return build


def pecn_model(make: Callable[[Path, Env], Path]) -> Callable[[Path, Env], Built]:
    def build(tmp: Path, env: Env) -> Built:
        model = make(tmp, env)
        return Built(pecn_argv(env, tmp / "run", model=model), {"model": str(model)})

    return build


def ip2p_with_5_channel_unet(tmp: Path, env: Env) -> Path:
    from diffusers import UNet2DConditionModel

    model = tmp / "model"
    shutil.copytree(env.ip2p, model, ignore=shutil.ignore_patterns("unet"))
    config = dict(UNet2DConditionModel.load_config(env.ip2p / "unet"), in_channels=5)
    UNet2DConditionModel.from_config(config).save_pretrained(model / "unet")
    return model


def t2i_folder(tmp: Path, env: Env) -> Path:
    return env.t2i


def unet_has_8_channels(built: Built, outcome: Outcome) -> None:
    unet = outcome.value[-1]
    assert unet.config.in_channels == 8 and unet.conv_in.weight.shape[1] == 8


def pecn_resume(weights: Callable[[Env], dict], resume: str = "checkpoint-2") -> Callable[[Path, Env], Built]:
    def build(tmp: Path, env: Env) -> Built:
        output = tmp / "run"
        checkpoint = fake_checkpoint(output / "checkpoint-2", weights(env))
        return Built(pecn_argv(env, output, f"--resume_from_checkpoint={resume}"), {"checkpoint": str(checkpoint)}, sorted(checkpoint.iterdir()))

    return build


def pecn_fresh_start(tmp: Path, env: Env) -> Built:
    return Built(pecn_argv(env, tmp / "run", "--resume_from_checkpoint=latest"), {"output": str(tmp / "run")})


def pecn_odd_resolution(tmp: Path, env: Env) -> Built:
    """--resolution 30 from 32x32 frames: no multiple of 8, which diffusers' UNet2DConditionModel handles."""
    return Built(pecn_argv(env, tmp / "run", "--resolution=30", f"--frames_dir={env.ssv2 / f'frames_{SIZE}x{SIZE}'}"), {"output": str(tmp / "run")})


def pecn_data_copy(tmp: Path, env: Env, change_entries: Callable[[list], Any] = None) -> Path:
    """A data root whose train_filtered.json is the prepared one, changed by `change_entries`."""
    root = tmp / "sthv2"
    (root / "annotations").mkdir(parents=True)
    (root / f"frames_{SIZE}x{SIZE}").symlink_to(env.ssv2 / f"frames_{SIZE}x{SIZE}")
    for name in ("train_filtered.json", "val_filtered.json"):
        entries = json.loads((env.ssv2 / "annotations" / name).read_text())
        (root / "annotations" / name).write_text(json.dumps(change_entries(entries) if change_entries else entries))
    return root


def pecn_annotations(change_entries: Callable[[list], Any] = None, text: Optional[str] = None, frames: bool = True) -> Callable[[Path, Env], Built]:
    """train_instruct_pix2pix.py with a train_filtered.json changed by `change_entries` (or replaced by `text`)."""

    def build(tmp: Path, env: Env) -> Built:
        root = pecn_data_copy(tmp, env, change_entries)
        annotation = root / "annotations" / "train_filtered.json"
        if text is not None:
            annotation.write_text(text)
        if not frames:
            (root / f"frames_{SIZE}x{SIZE}").unlink()
        return Built(pecn_argv(env, tmp / "run", data_root=root), {"annotation": str(annotation), "frames": str(root / f"frames_{SIZE}x{SIZE}")})

    return build


def without_num_frames(entries: list) -> list:
    return [{k: v for k, v in entry.items() if k != "num_frames"} for entry in entries]


def pecn_frames_in_mode(mode: str) -> Callable[[Path, Env], Built]:
    """One pair whose input and target frames are `mode` images (a CMYK one is JPEG data, as frames are read by content)."""

    def build(tmp: Path, env: Env) -> Built:
        root = tmp / "sthv2"
        entry = next(e for e in json.loads((env.ssv2 / "annotations" / "train_filtered.json").read_text()) if e["num_frames"] == NUM_FRAMES)
        frames = root / f"frames_{SIZE}x{SIZE}" / entry["id"]
        shutil.copytree(env.ssv2 / f"frames_{SIZE}x{SIZE}" / entry["id"], frames)
        for index in (20, 21):
            COLOUR_MODES[mode][0](frames / f"{index:05d}.png", (SIZE, SIZE))
        (root / "annotations").mkdir()
        (root / "annotations" / "train_filtered.json").write_text(json.dumps([entry]))
        return Built(pecn_argv(env, tmp / "run", data_root=root), {"id": entry["id"]})

    return build


def pecn_frame_unreadable(tmp: Path, env: Env) -> Built:
    """Every prepared pair, with the input frame of one video an empty file."""
    root = pecn_data_copy(tmp, env)
    frames = root / f"frames_{SIZE}x{SIZE}"
    frames.unlink()
    shutil.copytree(env.ssv2 / f"frames_{SIZE}x{SIZE}", frames)
    entry = next(e for e in json.loads((root / "annotations" / "train_filtered.json").read_text()) if e["num_frames"] == NUM_FRAMES)
    (frames / entry["id"] / "00020.png").write_bytes(b"")
    return Built(pecn_argv(env, tmp / "run", data_root=root), {"bad": str(frames / entry["id"] / "00020.png")})


def pair_in_colour(mode: str) -> Callable[[Built, Outcome], None]:
    def check(built: Built, outcome: Outcome) -> None:
        example = outcome.value[0][0]
        for key in ("original_pixel_values", "edited_pixel_values"):
            assert example[key].shape == (3, SIZE, SIZE)
            assert_colour(as_255(example[key]), COLOUR_MODES[mode][1], channel_axis=0)

    return check


def skipped_short_videos(built: Built, outcome: Outcome) -> None:
    assert outcome.value[1] == {"video shorter than 22 frames": 2}


def sampler_argv(env: Env, output: Path, *extra: str, model: Optional[Path] = None, frames: Optional[Path] = None, annotation: Optional[Path] = None) -> list[str]:
    return ["--model_dir", str(model or env.ip2p), "--frames_dir", str(frames or env.ssv2 / f"frames_{SIZE}x{SIZE}"),
            "--val_annotations", str(annotation or env.ssv2 / "annotations" / "val_filtered.json"), "--output_dir", str(output),
            "--num_samples", "1", "--num_inference_steps", "1", "--device", "cpu", "--input_frame_idx", "20", "--target_frame_idx", "21",
            "--no-add_progress", "--seed", "0", *extra]


def sampler_model(make: Callable[[Path, Env], Path]) -> Callable[[Path, Env], Built]:
    def build(tmp: Path, env: Env) -> Built:
        model = make(tmp, env)
        return Built(sampler_argv(env, tmp / "results", model=model), {"model": str(model)})

    return build


def sampler_flags(*flags: str) -> Callable[[Path, Env], Built]:
    def build(tmp: Path, env: Env) -> Built:
        return Built(sampler_argv(env, tmp / "results", *flags), {"annotation": str(env.ssv2 / "annotations" / "val_filtered.json")})

    return build


def sampler_annotation_text(text: str) -> Callable[[Path, Env], Built]:
    def build(tmp: Path, env: Env) -> Built:
        annotation = tmp / "val_filtered.json"
        annotation.write_text(text)
        return Built(sampler_argv(env, tmp / "results", annotation=annotation), {"annotation": str(annotation)})

    return build


def sampler_frames_in_mode(mode: str) -> Callable[[Path, Env], Built]:
    def build(tmp: Path, env: Env) -> Built:
        built = pecn_frames_in_mode(mode)(tmp, env)
        root = tmp / "sthv2"
        annotation = root / "annotations" / "train_filtered.json"
        return Built(sampler_argv(env, tmp / "results", frames=root / f"frames_{SIZE}x{SIZE}", annotation=annotation),
                     {"id": built.names["id"], "results": str(tmp / "results")})

    return build


def grid_input_in_colour(mode: str) -> Callable[[Built, Outcome], None]:
    """The grid's first third is the input frame as the model saw it, and the copy baseline scored it."""

    def check(built: Built, outcome: Outcome) -> None:
        grid = np.asarray(Image.open(Path(built.names["results"]) / "grids" / f"{built.names['id']}.png").convert("RGB"))
        assert_colour(grid[:, :SIZE].astype(np.float64), COLOUR_MODES[mode][1], channel_axis=-1)
        results = json.loads((Path(built.names["results"]) / "results.json").read_text())
        assert results["samples"][0]["copy_psnr"] is None  # input and target are the same colour: identical

    return check
