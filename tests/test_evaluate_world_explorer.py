"""evaluate_world_explorer.py end to end on tiny SVD pipelines and held-out frame folders written here
(not by the project's generators), and its loop over a turn-around path.

The copy and vae rows are recomputed here with Pillow, scikit-image and diffusers' VAE calls on the
frame files, not with common.metrics or genex.evaluate.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import evaluate_world_explorer
from conftest import one_line_error
from genex import evaluate
from genex.spherical import rotate_yaw
from genex.tiny import save_tiny_svd_pipeline
from test_explore_path import RecordingPipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT, NUM_FRAMES = 64, 32, 3
# Folder -> (frame numbers, size); scored videos use the first run of NUM_FRAMES consecutive numbers.
FOLDERS = {
    "indoor/walk_a": ([1, 2, 3], (WIDTH, HEIGHT)),
    "indoor/walk_b": ([1, 2, 4, 5, 6], (WIDTH, HEIGHT)),  # a gap: frames 4, 5, 6 are the video
    "outdoor/walk_c": ([1, 2, 3, 4], (80, 40)),  # another size: resized as training resizes
    "outdoor/short": ([1, 2], (WIDTH, HEIGHT)),
    "outdoor/broken": ([1, 2, 3], (WIDTH, HEIGHT)),  # frame 2 is not an image
}
SCORED = {"indoor/walk_a": [1, 2, 3], "indoor/walk_b": [4, 5, 6], "outdoor/walk_c": [1, 2, 3]}
ROWS = ["model", "base", "copy", "vae"]
WRAPPER_ENV = ("MODEL_DIR", "BASE_MODEL_DIR", "BASE_FOLDER", "OUTPUT_DIR", "NUM_VIDEOS", "NUM_FRAMES", "WIDTH", "HEIGHT", "NUM_INFERENCE_STEPS",
               "FPS", "MOTION_BUCKET_ID", "SEED", "DECODE_CHUNK_SIZE", "LPIPS_WEIGHTS", "ALLOW_DOWNLOAD", "I3D_PATH", "OVERWRITE_OUTPUT_DIR", "DEVICE")


@pytest.fixture(scope="module", autouse=True)
def single_thread(one_thread):
    """Every fixture and test of this module on one torch thread (conftest.py's one_thread), the tiny models included."""


def frame_path(base: Path, folder: str, number: int) -> Path:
    return base / folder / f"frame_{number:04d}.png"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    """Smooth random panoramas drifting sideways, one PNG per frame, in scene folders."""
    base = tmp_path_factory.mktemp("held_out")
    rng = np.random.default_rng(0)
    for folder, (numbers, (width, height)) in FOLDERS.items():
        (base / folder).mkdir(parents=True)
        coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        scene = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
        for number in numbers:
            Image.fromarray(np.roll(scene, 3 * number, axis=1)).save(frame_path(base, folder, number))
    frame_path(base, "outdoor/broken", 2).write_bytes(b"this is not a PNG")
    return base


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("svd")
    return SimpleNamespace(model=save_tiny_svd_pipeline(root / "model", seed=0), base=save_tiny_svd_pipeline(root / "base", seed=1))


def flags(models, held_out, output_dir, *extra, base=True) -> list[str]:
    args = ["--model_dir", str(models.model), "--base_folder", str(held_out), "--output_dir", str(output_dir),
            "--num_frames", str(NUM_FRAMES), "--width", str(WIDTH), "--height", str(HEIGHT), "--num_inference_steps", "1",
            "--decode_chunk_size", "8", "--seed", "5", "--device", "cpu", *extra]
    return args + (["--base_model_dir", str(models.base)] if base else [])


@pytest.fixture(scope="module")
def wrapper_run(models, held_out, tmp_path_factory):
    """Every held-out video, model and base, through the bash wrapper and its environment variables."""
    output_dir = tmp_path_factory.mktemp("wrapper") / "results"
    env = {name: value for name, value in os.environ.items() if name not in WRAPPER_ENV}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", MODEL_DIR=str(models.model), BASE_MODEL_DIR=str(models.base),
               BASE_FOLDER=str(held_out), OUTPUT_DIR=str(output_dir), NUM_FRAMES=str(NUM_FRAMES), WIDTH=str(WIDTH), HEIGHT=str(HEIGHT),
               NUM_INFERENCE_STEPS="1", SEED="5", DEVICE="cpu", OMP_NUM_THREADS="1")
    completed = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "evaluate_world_explorer.sh")], cwd=output_dir.parent, env=env,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return SimpleNamespace(output_dir=output_dir, stdout=completed.stdout, results=json.loads((output_dir / "results.json").read_text()))


def read_frames(held_out: Path, folder: str) -> np.ndarray:
    """The video's frames with Pillow: RGB, bicubic to the evaluation size when the file's size differs."""
    frames = []
    for number in SCORED[folder]:
        image = Image.open(frame_path(held_out, folder, number)).convert("RGB")
        frames.append(np.asarray(image if image.size == (WIDTH, HEIGHT) else image.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)))
    return np.stack(frames)


def skimage_mean(video: np.ndarray, real: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM of frames 2..F, each frame against the same real frame, averaged."""
    psnrs = [peak_signal_noise_ratio(r, v, data_range=255) for v, r in zip(video[1:], real[1:])]
    ssims = [structural_similarity(r, v, channel_axis=-1, data_range=255) for v, r in zip(video[1:], real[1:])]
    return float(np.mean(psnrs)), float(np.mean(ssims))


def test_writes_every_output(wrapper_run):
    out = wrapper_run.output_dir
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "results.json", "results.md", "videos"]
    results = wrapper_run.results
    assert {"settings", "overall", "per_scene", "per_video", "loop", "skipped", "curves"} <= set(results)
    assert results["script"] == "evaluate_world_explorer.py" and results["rows"] == ROWS
    for row in ROWS:
        assert {"psnr", "ssim", "count"} <= set(results["overall"][row]) and results["overall"][row]["count"] == len(SCORED)
    assert set(results["per_scene"]) == {"indoor", "outdoor"}
    assert results["per_scene"]["indoor"]["copy"]["count"] == 2 and results["per_scene"]["outdoor"]["copy"]["count"] == 1
    assert [video["id"] for video in results["per_video"]] == list(SCORED)
    with Image.open(out / "curves.png") as curves:
        assert curves.format == "PNG" and curves.size[0] > 400
    markdown = (out / "results.md").read_text()
    for line in ("| row | n | PSNR | SSIM | motion |", "| scene | row | n | PSNR | SSIM | motion |", "| row | n | PSNR | SSIM | latent MSE |",
                 "LPIPS not computed", "FVD not computed"):
        assert line in markdown
    assert markdown.strip() in wrapper_run.stdout


def test_side_by_side_videos(wrapper_run, held_out):
    videos = sorted((wrapper_run.output_dir / "videos").iterdir())
    assert [p.name for p in videos] == ["indoor__walk_a.mp4", "indoor__walk_b.mp4", "outdoor__walk_c.mp4"]
    for path, folder in zip(videos, SCORED):
        with av.open(str(path)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        # [ground truth | model | base | copy]
        assert frames.shape == (NUM_FRAMES, HEIGHT, 4 * WIDTH, 3)
        real = read_frames(held_out, folder).astype(float)
        assert np.abs(frames[:, :, :WIDTH] - real).mean() < 8
        assert np.abs(frames[:, :, 3 * WIDTH :] - real[:1]).mean() < 8


def test_copy_row_equals_scikit_image_on_the_frame_files(wrapper_run, held_out):
    results = wrapper_run.results
    expected = {folder: skimage_mean(np.repeat(read_frames(held_out, folder)[:1], NUM_FRAMES, axis=0), read_frames(held_out, folder)) for folder in SCORED}
    for video in results["per_video"]:
        assert (video["copy_psnr"], video["copy_ssim"]) == pytest.approx(expected[video["id"]], rel=1e-9)
    assert results["overall"]["copy"]["psnr"] == pytest.approx(np.mean([e[0] for e in expected.values()]), rel=1e-9)
    assert results["overall"]["copy"]["ssim"] == pytest.approx(np.mean([e[1] for e in expected.values()]), rel=1e-9)
    assert results["per_scene"]["indoor"]["copy"]["psnr"] == pytest.approx(np.mean([expected[f][0] for f in SCORED if f.startswith("indoor")]), rel=1e-9)
    # Per-frame curves: frame 1 of copy is the real frame 1 (infinite PSNR, null), the others the mean over videos.
    curve = results["curves"]["copy"]["psnr"]
    assert curve[0] is None and results["curves"]["copy"]["ssim"][0] == pytest.approx(1.0)
    last = [peak_signal_noise_ratio(read_frames(held_out, f)[-1], read_frames(held_out, f)[0], data_range=255) for f in SCORED]
    assert curve[-1] == pytest.approx(np.mean(last), rel=1e-9)
    # Copy does not move: its motion from its own frame 1 is 0 for every frame.
    assert results["overall"]["copy"]["motion"] == 0 and set(results["curves"]["copy"]["motion"]) == {0.0}


def test_motion_is_the_mean_absolute_change_from_frame_1_in_pixel_levels():
    video = np.zeros((3, 2, 2, 3), np.uint8)
    video[1, 0, 0] = 200  # 3 of 12 values change by 200: mean 50
    video[2] = 10
    assert evaluate.motion_from_first_frame(video) == [0.0, 50.0, 10.0]
    # uint8 arithmetic would wrap 0 - 10 to 246: the difference is taken in floats.
    assert evaluate.motion_from_first_frame(video[::-1]) == [0.0, pytest.approx(190 * 3 / 12 + 10 * 9 / 12), 10.0]


def test_vae_row_equals_an_encode_decode_through_the_models_vae(wrapper_run, held_out, models):
    from diffusers import AutoencoderKLTemporalDecoder

    vae = AutoencoderKLTemporalDecoder.from_pretrained(models.model, subfolder="vae").eval()
    for video in wrapper_run.results["per_video"]:
        real = read_frames(held_out, video["id"])
        with torch.no_grad():
            pixels = torch.from_numpy(real.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1
            # --decode_chunk_size 8 >= F: the pipeline decodes the video in one call.
            decoded = vae.decode(vae.encode(pixels).latent_dist.mode(), num_frames=NUM_FRAMES).sample
        reconstruction = ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        # The run was another process (other thread counts, other float sums): a pixel may round the other way.
        expected_psnr, expected_ssim = skimage_mean(reconstruction, real)
        assert video["vae_psnr"] == pytest.approx(expected_psnr, abs=1e-3) and video["vae_ssim"] == pytest.approx(expected_ssim, abs=1e-4)
        # Its motion: frames 2..F of the reconstruction against its own frame 1.
        expected_motion = np.mean([np.abs(frame.astype(float) - reconstruction[0]).mean() for frame in reconstruction[1:]])
        assert video["vae_motion"] == pytest.approx(expected_motion, abs=0.05)


def test_short_and_broken_folders_are_skipped_and_named(wrapper_run):
    skipped = {entry["video"]: entry["reason"] for entry in wrapper_run.results["skipped"]}
    assert set(skipped) == {"outdoor/short", "outdoor/broken"}
    assert "no 3 consecutively numbered frames" in skipped["outdoor/short"]
    assert "frame_0002.png" in skipped["outdoor/broken"] and "cannot read image" in skipped["outdoor/broken"]
    assert "Skipped folders: 2" in (wrapper_run.output_dir / "results.md").read_text()


def test_model_and_base_rows_and_the_loop(wrapper_run):
    results = wrapper_run.results
    # Different weights, different videos; the loop is scored for the generated rows only.
    assert results["overall"]["model"]["psnr"] != results["overall"]["base"]["psnr"]
    assert set(results["loop"]) == {"model", "base"}
    for row in ("model", "base"):
        assert results["loop"][row]["count"] == len(SCORED)
        assert {"psnr", "ssim", "latent_mse"} <= set(results["loop"][row]) and results["loop"][row]["latent_mse"] > 0
        assert all(len(video["frames"][row]["psnr"]) == NUM_FRAMES for video in results["per_video"])


def test_same_seed_gives_the_same_numbers_without_the_base(wrapper_run, models, held_out, tmp_path):
    evaluate_world_explorer.main(flags(models, held_out, tmp_path / "again", base=False))
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["rows"] == ["model", "copy", "vae"]
    model_keys = [key for key in wrapper_run.results["per_video"][0] if key.startswith(("model_", "loop_model_"))]
    for first, second in zip(wrapper_run.results["per_video"], again["per_video"]):
        assert {key: first[key] for key in model_keys} == {key: second[key] for key in model_keys}
        assert first["frames"]["model"] == second["frames"]["model"]
    assert again["overall"]["model"] == wrapper_run.results["overall"]["model"]
    assert again["loop"]["model"] == wrapper_run.results["loop"]["model"]


class FakeI3D(torch.nn.Module):
    """Stands in for StyleGAN-V's TorchScript I3D: one feature, the clip's mean pixel value."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        assert rescale and resize and return_features and x.dtype == torch.uint8
        return x.double().mean(dim=(1, 2, 3, 4)).unsqueeze(1)


def run_expecting_error(argv, capsys) -> str:
    return one_line_error(evaluate_world_explorer.main, argv, capsys)


def test_fvd_from_the_i3d_file_and_a_rerun_refused_then_replaced(models, held_out, tmp_path, monkeypatch, capsys):
    i3d = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(FakeI3D()).save(str(i3d))
    # StyleGAN-V scores 16-frame clips; these tiny videos have 3, so the clip length follows them here.
    monkeypatch.setattr(evaluate, "FVD_NUM_FRAMES", NUM_FRAMES)
    output = tmp_path / "results"
    evaluate_world_explorer.main(flags(models, held_out, output, "--i3d_path", str(i3d), base=False))
    results = json.loads((output / "results.json").read_text())
    assert results["fvd"]["computed"] and results["fvd"]["reason"] == ""

    # One feature: the Fréchet distance of 1-D Gaussians, (m1 - m2)^2 + (s1 - s2)^2 with population std.
    real = np.array([read_frames(held_out, f).mean() for f in SCORED])
    copy = np.array([read_frames(held_out, f)[0].mean() for f in SCORED])
    assert results["overall"]["copy"]["fvd"] == pytest.approx((copy.mean() - real.mean()) ** 2 + (copy.std() - real.std()) ** 2, rel=1e-6)
    assert results["overall"]["model"]["fvd"] > 0 and "| row | n | PSNR | SSIM | motion | FVD |" in (output / "results.md").read_text()

    before = {path.relative_to(output): path.read_bytes() for path in output.rglob("*") if path.is_file()}
    message = run_expecting_error(flags(models, held_out, output, base=False), capsys)
    assert str(output) in message and "earlier run of evaluate_world_explorer.py" in message and "--overwrite_output_dir" in message
    assert {path.relative_to(output): path.read_bytes() for path in output.rglob("*") if path.is_file()} == before

    # With the flag: only the new run's files; one video is too few for FVD's covariance.
    evaluate_world_explorer.main(flags(models, held_out, output, "--i3d_path", str(i3d), "--num_videos", "1", "--overwrite_output_dir", base=False))
    results = json.loads((output / "results.json").read_text())
    assert [video["id"] for video in results["per_video"]] == ["indoor/walk_a"]
    assert [p.name for p in (output / "videos").iterdir()] == ["indoor__walk_a.mp4"]
    assert not results["fvd"]["computed"] and "at least 2 videos" in results["fvd"]["reason"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i3d_torchscript.pt", "results"]


def test_bad_setups_are_one_line_errors_before_any_model_loads(models, held_out, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    missing_model = ["--model_dir", str(tmp_path / "no_model")]
    message = run_expecting_error([*flags(models, held_out, foreign, base=False), *missing_model], capsys)
    assert "not a run of evaluate_world_explorer.py (notes.txt)" in message and (foreign / "notes.txt").read_text() == "keep"
    message = run_expecting_error([*flags(models, tmp_path / "nowhere", tmp_path / "out", base=False), *missing_model], capsys)
    assert str(tmp_path / "nowhere") in message and "--base_folder" in message
    message = run_expecting_error(flags(models, held_out, tmp_path / "out", "--num_frames", "7", base=False), capsys)
    assert "no frame folder has --num_frames=7" in message
    with pytest.raises(SystemExit):
        evaluate_world_explorer.parse_args(flags(models, held_out, tmp_path / "out", "--i3d_path", str(tmp_path / "missing.pt")))
    assert "missing.pt: file not found" in capsys.readouterr().err


def test_loop_path_is_forward_turn_forward_then_turned_back():
    first = np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    pipeline = RecordingPipeline()
    video, end = evaluate.explore_with_loop(pipeline, first, 4, dict(width=WIDTH, height=HEIGHT, fps=7, motion_bucket_id=127,
                                                                       num_inference_steps=1, decode_chunk_size=8))
    assert evaluate.loop_segments(4) == [(0.0, 4), (180.0, 4)]
    assert video.shape == (4, HEIGHT, WIDTH, 3) and len(pipeline.conditions) == 2
    np.testing.assert_array_equal(pipeline.conditions[0], first)
    np.testing.assert_array_equal(pipeline.conditions[1], rotate_yaw(video[-1], 180.0, width_axis=1))
    # The path's last frame turned back by 180 degrees.
    last = (np.asarray(pipeline.conditions[1], dtype=np.float64) / 255 * (1 - 0.1 * 3) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(end, np.roll(last, WIDTH // 2, axis=1))


def test_settings_default_to_what_the_model_was_trained_at(tmp_path):
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "trained_settings.json").write_text(json.dumps({"width": 128, "height": 64, "num_frames": 6, "fps": 5, "motion_bucket_id": 90}))
    untuned = tmp_path / "untuned"
    untuned.mkdir()
    common = ["--base_folder", str(tmp_path), "--output_dir", str(tmp_path / "out")]

    def settings(model_dir, *given):
        args = evaluate_world_explorer.parse_args(["--model_dir", str(model_dir), *common, *given])
        return args.width, args.height, args.num_frames, args.fps, args.motion_bucket_id

    assert settings(trained) == (128, 64, 6, 5, 90)
    assert settings(trained, "--width", "256", "--num_frames", "4") == (256, 64, 4, 5, 90)
    assert settings(untuned) == (1024, 576, 25, 7, 127)
