"""Fitting the tiny base models (common/vae_fitting.py, genex.tiny): the VAEs' reconstruction improves and their latents
get unit variance, the tiny SVD UNet's denoising of still frames improves, and the tiny-pipeline CLIs save a folder that
loads with from_pretrained and holds what was fitted."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder, StableDiffusionInstructPix2PixPipeline, StableVideoDiffusionPipeline
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from common.pixels import to_model_range
from common.cli import run_cli
from common.vae_fitting import FitSettings, fit_vae, latent_scaling_factor, read_clips, reconstruction_psnr
from genex import tiny as genex_tiny
from genex.models import Encoders
from genex.step import Objective, loss_of, predict
from pecn import tiny as pecn_tiny

WIDTH, HEIGHT = 32, 16


def write_videos(root, num_videos=2, num_frames=4, width=WIDTH, height=HEIGHT, name="frame_{:04d}.png"):
    """Frame folders of a coloured block sliding over a two-tone background; returns the folders."""
    folders = []
    for video in range(num_videos):
        folder = root / f"video_{video:05d}"
        folder.mkdir(parents=True)
        for t in range(num_frames):
            frame = np.zeros((height, width, 3), np.uint8)
            frame[: height // 2] = (200, 190, 170)
            frame[height // 2 :] = (120, 80, 50)
            x = 2 + 3 * t + 5 * video
            frame[4:12, x : x + 8] = (30, 160 + 40 * video, 220)
            Image.fromarray(frame).save(folder / name.format(t))
        folders.append(folder)
    return folders


def frames_of(folders):
    return [sorted(folder.glob("*.png")) for folder in folders]


def test_reconstruction_psnr_matches_skimage(tmp_path):
    clips = read_clips(frames_of(write_videos(tmp_path)), 1)
    vae = pecn_tiny.build_tiny_vae()
    with torch.no_grad():
        decoded = vae.decode(vae.encode(to_model_range(clips.flatten(0, 1))).latent_dist.mode()).sample
    decoded = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    expected = peak_signal_noise_ratio(clips.flatten(0, 1).numpy(), decoded.numpy(), data_range=255)
    assert reconstruction_psnr(vae, clips) == pytest.approx(expected, abs=1e-6)


def test_read_clips_cuts_consecutive_runs_and_refuses_mixed_sizes(tmp_path):
    folders = write_videos(tmp_path / "a", num_videos=2, num_frames=5)
    clips = read_clips(frames_of(folders), 2)
    # Two runs of two frames per five-frame video; the fifth frame is left over.
    assert clips.shape == (4, 2, 3, HEIGHT, WIDTH) and clips.dtype == torch.uint8
    first = np.array(Image.open(folders[0] / "frame_0002.png"))
    assert torch.equal(clips[1, 0], torch.from_numpy(first).permute(2, 0, 1))
    other = write_videos(tmp_path / "b", num_videos=1, width=2 * WIDTH)
    with pytest.raises(ValueError, match="differ in size.*32x16.*64x16"):
        read_clips(frames_of(folders + other), 1, "frames")


def test_fit_vae_lowers_reconstruction_error_and_scales_latents_to_unit_variance(tmp_path):
    clips = read_clips(frames_of(write_videos(tmp_path)), 1)
    vae = pecn_tiny.build_tiny_vae()
    before = reconstruction_psnr(vae, clips)
    losses = fit_vae(vae, clips, FitSettings(steps=30, learning_rate=3e-3, batch_size=4))
    after = reconstruction_psnr(vae, clips)
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert after > before + 5, (before, after)
    # Scaled latents have unit variance, checked on fresh posterior samples.
    with torch.no_grad():
        latents = vae.encode(to_model_range(clips.flatten(0, 1))).latent_dist.sample(torch.Generator().manual_seed(7))
    assert float((latents * vae.config.scaling_factor).std()) == pytest.approx(1.0, rel=0.1)
    assert latent_scaling_factor(vae, clips) == pytest.approx(vae.config.scaling_factor, rel=1e-6)


def test_genex_tiny_fits_its_temporal_vae_and_the_folder_loads(tmp_path, capsys):
    write_videos(tmp_path / "Genex-DB" / "realistic", num_frames=8)
    random_vae = genex_tiny.build_tiny_svd_pipeline(seed=0).vae
    genex_tiny.main(["--output_dir", str(tmp_path / "svd"), "--fit_vae_frames", str(tmp_path / "Genex-DB"),
                     "--fit_vae_steps", "25", "--fit_vae_learning_rate", "3e-3", "--fit_vae_batch_size", "2"])
    assert "VAE fitted to 16 frames in 25 steps" in capsys.readouterr().out
    pipeline = StableVideoDiffusionPipeline.from_pretrained(tmp_path / "svd")
    assert isinstance(pipeline.vae, AutoencoderKLTemporalDecoder)
    assert pipeline.vae.config.scaling_factor != random_vae.config.scaling_factor
    clips = read_clips(frames_of(sorted((tmp_path / "Genex-DB" / "realistic").iterdir())), 4)
    assert reconstruction_psnr(pipeline.vae, clips) > reconstruction_psnr(random_vae, clips) + 3
    # Only the VAE was fitted: the UNet is the seed's.
    fresh_unet = genex_tiny.build_tiny_svd_pipeline(seed=0).unet.state_dict()
    assert all(torch.equal(value, fresh_unet[name]) for name, value in pipeline.unet.state_dict().items())


def test_pecn_tiny_fits_only_the_annotated_videos(tmp_path, capsys):
    frames_dir = tmp_path / "frames_32x16"
    folders = write_videos(frames_dir, num_videos=3, name="{:05d}.png")
    ids = [folder.name for folder in folders]
    annotations = tmp_path / "train_filtered.json"
    entry = {"label": "moving cup up", "template": "Moving [something] up", "placeholders": ["cup"]}
    # The second id has no frames folder (its extraction failed): nothing of it to fit to.
    annotations.write_text(json.dumps([{"id": ids[0], **entry}, {"id": "missing", **entry}, {"id": ids[2], **entry}]))
    assert [frames[0].parent.name for frames in pecn_tiny.video_frame_folders(frames_dir, annotations)] == [ids[0], ids[2]]
    assert len(pecn_tiny.video_frame_folders(frames_dir)) == 3
    pecn_tiny.main(["--output_dir", str(tmp_path / "ip2p"), "--vae_block_out_channels", "16", "32", "64",
                    "--fit_vae_frames", str(frames_dir), "--fit_vae_annotations", str(annotations), "--fit_vae_steps", "3"])
    assert "VAE fitted to 8 frames in 3 steps" in capsys.readouterr().out
    pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(tmp_path / "ip2p")
    assert tuple(pipeline.vae.config.block_out_channels) == (16, 32, 64) and pipeline.vae_scale_factor == 4


@pytest.mark.parametrize("folder, problem", [("empty", "no folder of frame images under it to fit the VAE to"),
                                             ("missing", "no such folder of frames to fit the VAE to")])
def test_fitting_without_frames_is_one_error_line(tmp_path, capsys, folder, problem):
    (tmp_path / "empty").mkdir()
    argv = ["--output_dir", str(tmp_path / "svd"), "--fit_vae_frames", str(tmp_path / folder)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: genex_tiny.main(argv))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / folder}: {problem}"
    assert not (tmp_path / "svd").exists()


def still_frame_loss(pipeline, frames, seed=1):
    """The EDM loss of the UNet on every one-frame clip of `frames`, with the same draws (sigmas, noise, dropout) for every call."""
    objective = Objective(num_frames=1)
    encoders = Encoders(pipeline.vae, pipeline.image_encoder, pipeline.feature_extractor)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        prediction = predict({"pixel_values": frames}, pipeline.unet, encoders, objective, generator, torch.float32)
        return float(loss_of(prediction, encoders.vae, objective, generator, 0, 1)[0])


def test_fit_unet_to_clips_of_still_frames_lowers_the_loss_and_leaves_the_vae(tmp_path):
    frames = read_clips(frames_of(write_videos(tmp_path, num_frames=4)), 1)
    pipeline = genex_tiny.build_tiny_svd_pipeline(seed=0)
    vae_before = {name: value.clone() for name, value in pipeline.vae.state_dict().items()}
    unet_before = {name: value.clone() for name, value in pipeline.unet.state_dict().items()}
    before = still_frame_loss(pipeline, frames)
    losses = genex_tiny.fit_unet_to_clips(pipeline, frames, FitSettings(steps=20, learning_rate=3e-3, batch_size=4))
    assert len(losses) == 20
    assert still_frame_loss(pipeline, frames) < 0.7 * before
    assert all(torch.equal(value, vae_before[name]) for name, value in pipeline.vae.state_dict().items())
    # Every part of the UNet was fitted, the spatial layers as well as the temporal ones.
    changed = {name for name, value in pipeline.unet.state_dict().items() if not torch.equal(value, unet_before[name])}
    assert "conv_in.weight" in changed and any("temporal" in name for name in changed)
    assert not pipeline.unet.training and not any(param.requires_grad for param in pipeline.unet.parameters())


def test_genex_tiny_fits_the_unet_after_the_vae_and_the_folder_loads(tmp_path, capsys):
    write_videos(tmp_path / "frames" / "realistic", num_frames=4)
    genex_tiny.main(["--output_dir", str(tmp_path / "svd"), "--fit_vae_frames", str(tmp_path / "frames"), "--fit_vae_steps", "2",
                     "--fit_unet_steps", "3", "--fit_unet_batch_size", "2", "--unfitted_unet_output_dir", str(tmp_path / "unfitted")])
    out = capsys.readouterr().out
    assert "VAE fitted to 8 frames in 2 steps" in out and "UNet fitted to the 8 frames as still images in 3 steps" in out
    pipeline = StableVideoDiffusionPipeline.from_pretrained(tmp_path / "svd")
    unfitted = StableVideoDiffusionPipeline.from_pretrained(tmp_path / "unfitted")
    fresh_unet = genex_tiny.build_tiny_svd_pipeline(seed=0).unet.state_dict()
    assert not torch.equal(pipeline.unet.state_dict()["conv_in.weight"], fresh_unet["conv_in.weight"])
    # The folder saved before the UNet fit: the seed's random UNet beside the same fitted VAE.
    assert all(torch.equal(value, fresh_unet[name]) for name, value in unfitted.unet.state_dict().items())
    fitted_vae = pipeline.vae.state_dict()
    assert all(torch.equal(value, fitted_vae[name]) for name, value in unfitted.vae.state_dict().items())
    assert unfitted.vae.config.scaling_factor == pipeline.vae.config.scaling_factor


def test_genex_tiny_fits_the_unet_to_runs_of_frames_conditioned_on_their_first(tmp_path, capsys):
    write_videos(tmp_path / "frames" / "realistic", num_frames=4)
    genex_tiny.main(["--output_dir", str(tmp_path / "svd"), "--fit_vae_frames", str(tmp_path / "frames"), "--fit_vae_steps", "2",
                     "--fit_unet_steps", "3", "--fit_unet_batch_size", "2", "--fit_unet_frames_per_clip", "2"])
    # Two videos of 4 frames: 4 runs of 2 frames, each an EDM training clip of its own.
    assert "UNet fitted to the 8 frames as 4 clips of 2 frames in 3 steps" in capsys.readouterr().out
    fitted = StableVideoDiffusionPipeline.from_pretrained(tmp_path / "svd").unet.state_dict()
    fresh_unet = genex_tiny.build_tiny_svd_pipeline(seed=0).unet.state_dict()
    assert not torch.equal(fitted["conv_in.weight"], fresh_unet["conv_in.weight"])


def test_a_unet_clip_longer_than_every_video_is_refused_before_the_vae_fit(tmp_path, capsys):
    write_videos(tmp_path / "frames" / "realistic", num_frames=4)
    argv = ["--output_dir", str(tmp_path / "svd"), "--fit_vae_frames", str(tmp_path / "frames"), "--fit_unet_steps", "3", "--fit_unet_frames_per_clip", "5"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: genex_tiny.main(argv))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: --fit_unet_frames_per_clip 5: no video under {tmp_path / 'frames'} has that many frames (the longest has 4)"
    assert "fitting the VAE" not in captured.err + captured.out
    assert not (tmp_path / "svd").exists()


@pytest.mark.parametrize("flags, message", [
    (["--fit_unet_steps", "5"], "--fit_unet_steps: needs --fit_vae_frames (the UNet is fitted to those frames, through the fitted VAE)"),
    (["--unfitted_unet_output_dir", "unfitted"], "--unfitted_unet_output_dir: needs --fit_unet_steps (without it the saved UNet is the unfitted one)"),
    (["--fit_unet_frames_per_clip", "8"], "--fit_unet_frames_per_clip: needs --fit_unet_steps (it sets the clips of the UNet fit)"),
    (["--fit_unet_frames_per_clip", "0"], "--fit_unet_frames_per_clip: must be at least 1 (1: still images), got 0"),
])
def test_fitting_the_unet_without_what_it_needs_is_one_error_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: genex_tiny.main(["--output_dir", str(tmp_path / "svd"), *flags]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "svd").exists()
