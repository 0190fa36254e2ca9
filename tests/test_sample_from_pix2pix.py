"""sample_from_pix2pix.py end to end on a synthetic SSv2 and a tiny InstructPix2Pix pipeline.

The metrics in results.json are checked against scikit-image recomputed on the files the run
wrote (frames, predictions) and on an encode/decode through the saved VAE done here, not against
common.metrics.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import sample_from_pix2pix
from conftest import REPO_ROOT, one_line_error
from pecn import dataset, video_loader
from pecn.synthetic import SHORT_NUM_FRAMES, write_synthetic_ssv2
from pecn.tiny import save_tiny_pipeline

SIZE = 32
NUM_FRAMES = 24
INPUT_FRAME_IDX, TARGET_FRAME_IDX = 20, 21
PROGRESS = int(INPUT_FRAME_IDX / NUM_FRAMES * 10) * 10  # 80, written out from the README's formula
ENV_NAMES = ("MODEL_DIR", "FRAMES_DIR", "VAL_ANNOTATIONS", "OUTPUT_DIR", "INPUT_FRAME_IDX", "TARGET_FRAME_IDX", "NUM_SAMPLES",
             "SEED", "NUM_INFERENCE_STEPS", "IMAGE_GUIDANCE_SCALE", "GUIDANCE_SCALE", "PROGRESS", "OVERWRITE_OUTPUT_DIR")
RECORD_KEYS = {"id", "task", "label", "prompt", "progress", "model_psnr", "model_ssim", "copy_psnr", "copy_ssim", "vae_psnr", "vae_ssim"}
SUMMARY_KEYS = {"count", "model_psnr", "copy_psnr", "vae_psnr", "model_ssim", "copy_ssim", "vae_ssim"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One validation video per class (some task videos too short for frame 21), filtered and extracted."""
    root = tmp_path_factory.mktemp("sthv2")
    synthetic = write_synthetic_ssv2(root, train_per_class=0, val_per_class=1, test_videos=0, num_frames=NUM_FRAMES, width=SIZE, height=SIZE, short_videos=5)
    dataset.main(["--data_root", str(root), "--train_per_task", "0", "--val_per_task", "100"])
    annotations = root / "annotations" / "val_filtered.json"
    video_loader.main(["--data_root", str(root), "--annotation_files", str(annotations), "--sizes", f"{SIZE}x{SIZE}", "--num_workers", "1"])
    entries = json.loads(annotations.read_text())
    short_ids = {entry["id"] for entry in entries if synthetic.num_frames[entry["id"]] == SHORT_NUM_FRAMES}
    assert len(short_ids) == 5 and len(entries) == 15
    return SimpleNamespace(annotations=annotations, frames_dir=root / f"frames_{SIZE}x{SIZE}", entries=entries, short_ids=short_ids)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_pipeline("instruct_pix2pix", tmp_path_factory.mktemp("tiny_ip2p"))


def sampler_flags(data, model_dir, output_dir, num_samples="3", seed="42", progress=False) -> list[str]:
    """Every flag given, so the test process's own environment variables cannot change the run."""
    return [
        "--model_dir", str(model_dir), "--frames_dir", str(data.frames_dir), "--val_annotations", str(data.annotations),
        "--output_dir", str(output_dir), "--input_frame_idx", str(INPUT_FRAME_IDX), "--target_frame_idx", str(TARGET_FRAME_IDX),
        "--num_samples", num_samples, "--seed", seed, "--num_inference_steps", "2", "--image_guidance_scale", "1.5",
        "--guidance_scale", "7.5", "--add_progress" if progress else "--no-add_progress", "--device", "cpu",
    ]


@pytest.fixture(scope="module")
def script_run(data, model_dir, tmp_path_factory):
    """All pairs with progress prompts, through the bash wrapper and environment variables, as users run it."""
    output_dir = tmp_path_factory.mktemp("script_run")
    env = {name: value for name, value in os.environ.items() if name not in ENV_NAMES}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", MODEL_DIR=str(model_dir), FRAMES_DIR=str(data.frames_dir),
        VAL_ANNOTATIONS=str(data.annotations), OUTPUT_DIR=str(output_dir), NUM_SAMPLES="all", NUM_INFERENCE_STEPS="2", PROGRESS="True",
    )
    completed = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "sample_from_pix2pix.sh"), "--device", "cpu"],
                               cwd=output_dir, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return SimpleNamespace(output_dir=output_dir, stdout=completed.stdout, results=json.loads((output_dir / "results.json").read_text()))


@pytest.fixture(scope="module")
def first_three(data, model_dir, tmp_path_factory):
    """The first three pairs of the bash run again, in process, with the same seed."""
    output_dir = tmp_path_factory.mktemp("first_three")
    sample_from_pix2pix.main(sampler_flags(data, model_dir, output_dir, num_samples="3", progress=True))
    return output_dir


def load_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def skimage_metrics(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    # Identical images give an infinite PSNR, with a division-by-zero warning.
    with np.errstate(divide="ignore"):
        psnr = peak_signal_noise_ratio(target, prediction, data_range=255)
    return psnr, structural_similarity(target, prediction, channel_axis=-1, data_range=255)


def assert_psnr(stored, expected):
    """results.json stores an infinite PSNR (identical images) as null."""
    assert stored is None if math.isinf(expected) else stored == pytest.approx(expected, rel=1e-9)


def test_predictions_and_grids(script_run, data):
    samples = script_run.results["samples"]
    assert {sample["id"] for sample in samples} == {entry["id"] for entry in data.entries} - data.short_ids
    for sample in samples:
        prediction = load_rgb(script_run.output_dir / "predictions" / f"{sample['id']}.png")
        grid = load_rgb(script_run.output_dir / "grids" / f"{sample['id']}.png")
        assert prediction.shape == (SIZE, SIZE, 3) and prediction.dtype == np.uint8
        assert grid.shape == (SIZE, 3 * SIZE, 3) and grid.dtype == np.uint8
        # [input | ground truth | prediction]
        np.testing.assert_array_equal(grid[:, :SIZE], load_rgb(video_loader.frame_path(data.frames_dir, sample["id"], INPUT_FRAME_IDX)))
        np.testing.assert_array_equal(grid[:, SIZE : 2 * SIZE], load_rgb(video_loader.frame_path(data.frames_dir, sample["id"], TARGET_FRAME_IDX)))
        np.testing.assert_array_equal(grid[:, 2 * SIZE :], prediction)


def test_results_json_structure(script_run):
    results = script_run.results
    assert {"settings", "lpips", "skipped", "overall", "per_task", "per_progress", "samples"} <= set(results)
    settings = results["settings"]
    assert settings["num_samples"] == "all" and settings["add_progress"] is True and settings["seed"] == 42
    assert settings["num_inference_steps"] == 2 and settings["image_guidance_scale"] == 1.5 and settings["guidance_scale"] == 7.5
    assert isinstance(results["lpips"]["computed"], bool)
    assert results["lpips"]["computed"] or results["lpips"]["reason"].startswith("LPIPS not computed")
    for sample in results["samples"]:
        assert RECORD_KEYS <= set(sample)
        assert ("model_lpips" in sample) == results["lpips"]["computed"]
    assert SUMMARY_KEYS <= set(results["overall"])
    assert results["overall"]["count"] == len(results["samples"])
    assert set(results["per_task"]) == {sample["task"] for sample in results["samples"]}
    for row in results["per_task"].values():
        assert SUMMARY_KEYS <= set(row)


def test_copy_baseline_equals_skimage_on_frame_files(script_run, data):
    for sample in script_run.results["samples"]:
        source = load_rgb(video_loader.frame_path(data.frames_dir, sample["id"], INPUT_FRAME_IDX))
        target = load_rgb(video_loader.frame_path(data.frames_dir, sample["id"], TARGET_FRAME_IDX))
        expected_psnr, expected_ssim = skimage_metrics(source, target)
        assert_psnr(sample["copy_psnr"], expected_psnr)
        assert sample["copy_ssim"] == pytest.approx(expected_ssim, rel=1e-9)


def test_model_metrics_equal_skimage_on_saved_predictions(script_run, data):
    for sample in script_run.results["samples"]:
        prediction = load_rgb(script_run.output_dir / "predictions" / f"{sample['id']}.png")
        target = load_rgb(video_loader.frame_path(data.frames_dir, sample["id"], TARGET_FRAME_IDX))
        expected_psnr, expected_ssim = skimage_metrics(prediction, target)
        assert_psnr(sample["model_psnr"], expected_psnr)
        assert sample["model_ssim"] == pytest.approx(expected_ssim, rel=1e-9)


def vae_roundtrip(vae, image: np.ndarray) -> np.ndarray:
    """The image encoded (posterior mode) and decoded by the VAE, written out here from diffusers' calls."""
    with torch.no_grad():
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
        decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample[0]
    return ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def test_vae_row_equals_an_encode_decode_through_the_saved_vae(script_run, data, model_dir):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae").eval()
    for sample in script_run.results["samples"]:
        target = load_rgb(video_loader.frame_path(data.frames_dir, sample["id"], TARGET_FRAME_IDX))
        expected_psnr, expected_ssim = skimage_metrics(vae_roundtrip(vae, target), target)
        assert_psnr(sample["vae_psnr"], expected_psnr)
        assert sample["vae_ssim"] == pytest.approx(expected_ssim, rel=1e-6)


def test_task_and_overall_means(script_run):
    results = script_run.results
    groups = {"overall": results["samples"]}
    groups.update({task: [s for s in results["samples"] if s["task"] == task] for task in results["per_task"]})
    for name, members in groups.items():
        row = results["overall"] if name == "overall" else results["per_task"][name]
        assert row["count"] == len(members)
        for key in ("model_psnr", "copy_psnr", "vae_psnr", "model_ssim", "copy_ssim", "vae_ssim"):
            finite = [s[key] for s in members if s[key] is not None]
            assert row[f"{key}_num_inf"] == len(members) - len(finite)
            assert row[key] == (pytest.approx(np.mean(finite)) if finite else None)


def test_progress_prompts_and_buckets(script_run):
    results = script_run.results
    for sample in results["samples"]:
        assert sample["progress"] == PROGRESS
        assert sample["prompt"] == f"Generate a future frame of this action: {sample['label']}. And {PROGRESS}% of the action has been completed."
    assert set(results["per_progress"]) == {f"{PROGRESS}%"}
    assert results["per_progress"][f"{PROGRESS}%"]["count"] == len(results["samples"])


def test_short_videos_are_counted_as_skipped(script_run, data):
    assert sum(script_run.results["skipped"].values()) == len(data.short_ids)


def test_markdown_table_and_console(script_run):
    markdown = (script_run.output_dir / "results.md").read_text()
    header = "| task | n | model PSNR | copy PSNR | vae PSNR | model SSIM | copy SSIM | vae SSIM |"
    assert header in markdown and "| **overall** |" in markdown and "| progress | n |" in markdown
    for task, row in script_run.results["per_task"].items():
        assert f"| {task} | {row['count']} |" in markdown
    assert markdown.strip() in script_run.stdout
    assert script_run.stdout.strip().splitlines()[-1].startswith(f"Outputs in {script_run.output_dir}")


def test_same_seed_gives_identical_predictions(script_run, first_three):
    # Also shows that a sample does not depend on how many are drawn (3 here, all in the bash run).
    names = sorted(path.name for path in (first_three / "predictions").iterdir())
    assert len(names) == 3
    for name in names:
        np.testing.assert_array_equal(load_rgb(first_three / "predictions" / name), load_rgb(script_run.output_dir / "predictions" / name))
    again = json.loads((first_three / "results.json").read_text())
    assert again["samples"] == script_run.results["samples"][:3]


def test_other_seed_gives_other_predictions(first_three, data, model_dir, tmp_path):
    sample_from_pix2pix.main(sampler_flags(data, model_dir, tmp_path, num_samples="1", seed="7", progress=True))
    [name] = [path.name for path in (tmp_path / "predictions").iterdir()]
    assert not np.array_equal(load_rgb(tmp_path / "predictions" / name), load_rgb(first_three / "predictions" / name))


def test_defaults_are_the_readme_values(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    args = sample_from_pix2pix.parse_args([])
    assert (args.model_dir, args.frames_dir, args.val_annotations, args.output_dir) == (
        "outputs/instruct_pix2pix_128", "data/sthv2/frames_128x128", "data/sthv2/annotations/val_filtered.json", "test_result/baseline")
    assert (args.input_frame_idx, args.target_frame_idx, args.num_samples, args.seed) == (20, 21, 3, 42)
    assert (args.num_inference_steps, args.image_guidance_scale, args.guidance_scale, args.add_progress) == (20, 1.5, 7.5, False)
    assert args.overwrite_output_dir is False and args.lpips_weights is None and args.allow_download is False


def test_environment_variables_set_the_defaults(monkeypatch):
    values = dict(MODEL_DIR="m", FRAMES_DIR="f", VAL_ANNOTATIONS="v.json", OUTPUT_DIR="o", INPUT_FRAME_IDX="5", TARGET_FRAME_IDX="9",
                  NUM_SAMPLES="all", SEED="7", NUM_INFERENCE_STEPS="3", IMAGE_GUIDANCE_SCALE="1.2", GUIDANCE_SCALE="4", PROGRESS="1",
                  OVERWRITE_OUTPUT_DIR="yes")
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    args = sample_from_pix2pix.parse_args([])
    assert (args.model_dir, args.frames_dir, args.val_annotations, args.output_dir) == ("m", "f", "v.json", "o")
    assert (args.input_frame_idx, args.target_frame_idx, args.num_samples, args.seed) == (5, 9, None, 7)
    assert (args.num_inference_steps, args.image_guidance_scale, args.guidance_scale, args.add_progress) == (3, 1.2, 4.0, True)
    assert args.overwrite_output_dir is True
    # A flag overrides its variable.
    assert sample_from_pix2pix.parse_args(["--no-add_progress", "--num_samples", "2"]).add_progress is False
    monkeypatch.setenv("NUM_SAMPLES", "0")
    monkeypatch.setenv("PROGRESS", "False")
    args = sample_from_pix2pix.parse_args([])
    assert args.num_samples is None and args.add_progress is False


@pytest.mark.parametrize("name, value", [("PROGRESS", "maybe"), ("SEED", "x"), ("NUM_SAMPLES", "-1"), ("OVERWRITE_OUTPUT_DIR", "perhaps")])
def test_bad_environment_value_is_a_clear_error(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        sample_from_pix2pix.parse_args([])
    assert value in capsys.readouterr().err


def run_expecting_error(argv, capsys) -> str:
    return one_line_error(sample_from_pix2pix.main, argv, capsys)


def test_folder_that_is_not_a_pipeline(data, tmp_path, capsys):
    (tmp_path / "not_a_model").mkdir()
    message = run_expecting_error(sampler_flags(data, tmp_path / "not_a_model", tmp_path / "out"), capsys)
    assert str(tmp_path / "not_a_model") in message and "not an InstructPix2Pix pipeline" in message
    message = run_expecting_error(sampler_flags(data, tmp_path / "missing", tmp_path / "out"), capsys)
    assert str(tmp_path / "missing") in message and "not found" in message


def test_text_to_image_pipeline_is_refused(data, tmp_path, capsys):
    model = save_tiny_pipeline("text_to_image", tmp_path / "text_to_image")
    message = run_expecting_error(sampler_flags(data, model, tmp_path / "out"), capsys)
    assert str(model) in message and "input channels" in message


def test_progress_without_num_frames_is_a_clear_error(data, model_dir, tmp_path, capsys):
    annotations = tmp_path / "no_num_frames.json"
    annotations.write_text(json.dumps([{key: value for key, value in entry.items() if key != "num_frames"} for entry in data.entries]))
    flags = sampler_flags(data, model_dir, tmp_path / "out", progress=True)
    flags[flags.index("--val_annotations") + 1] = str(annotations)
    message = run_expecting_error(flags, capsys)
    assert str(annotations) in message and "num_frames" in message


def test_rerun_into_the_same_folder_is_refused_then_replaced_whole(data, model_dir, tmp_path, capsys):
    output = tmp_path / "results"
    sample_from_pix2pix.main(sampler_flags(data, model_dir, output, num_samples="2"))
    before = {path.relative_to(output): path.read_bytes() for path in output.rglob("*") if path.is_file()}
    message = run_expecting_error(sampler_flags(data, model_dir, output, num_samples="1"), capsys)
    assert str(output) in message and "earlier run of sample_from_pix2pix.py" in message and "--overwrite_output_dir" in message
    assert {path.relative_to(output): path.read_bytes() for path in output.rglob("*") if path.is_file()} == before
    sample_from_pix2pix.main([*sampler_flags(data, model_dir, output, num_samples="1"), "--overwrite_output_dir"])
    results = json.loads((output / "results.json").read_text())
    assert [sample["id"] for sample in results["samples"]] == [p.stem for p in (output / "predictions").iterdir()]
    assert len(results["samples"]) == 1 and len(list((output / "grids").iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_folder_of_other_files_is_refused_before_the_model_loads(data, tmp_path, capsys):
    output = tmp_path / "mine"
    output.mkdir()
    (output / "notes.txt").write_text("keep")
    message = run_expecting_error(sampler_flags(data, tmp_path / "no_model_here", output, num_samples="1"), capsys)
    assert str(output) in message and "not a run of sample_from_pix2pix.py (notes.txt)" in message
    assert (output / "notes.txt").read_text() == "keep"
