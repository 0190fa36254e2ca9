"""genex.latent_cache: cached posteriors draw what the live VAE draws; entries are rebuilt or refused when stale."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT
from common.pixels import to_model_range
from genex.conditioning import clip_image_embedding, encode_video_latents, frame_latent_statistics, sample_latents
from genex.data import FrameFolderDataset, load_frame
from genex.latent_cache import LatentCacheDataset, build_latent_cache, cache_entry_path, cache_fingerprint, default_cache_dir
from genex.synthetic import render_forward_video
from genex.tiny import build_tiny_svd_pipeline, save_tiny_svd_pipeline

WIDTH, HEIGHT = 32, 16


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_svd_pipeline(seed=0)


def write_videos(base: Path, lengths=(6, 5)) -> Path:
    for v, length in enumerate(lengths):
        folder = base / "realistic" / f"video_{v:05d}"
        folder.mkdir(parents=True)
        for i, frame in enumerate(render_forward_video(length, WIDTH, HEIGHT, seed=v), start=1):
            Image.fromarray(frame).save(folder / f"frame_{i:04d}.jpg")
    return base


def build(pipe, base, cache_dir, width=WIDTH, height=HEIGHT):
    return build_latent_cache(base, cache_dir, pipe.vae, pipe.image_encoder, pipe.feature_extractor, width, height, "cpu")


@pytest.fixture(scope="module")
def cached(pipe, tmp_path_factory):
    base = write_videos(tmp_path_factory.mktemp("latent_cache") / "frames")
    assert build(pipe, base, default_cache_dir(base)) == (2, 0)
    return base, default_cache_dir(base)


def clip_of(folder: Path, start: int, count: int) -> torch.Tensor:
    """Frames start .. start+count-1 (0-based) of a folder as [count,3,H,W] in [-1,1]."""
    frames = sorted(folder.glob("frame_*.jpg"))[start : start + count]
    return to_model_range(torch.from_numpy(np.stack([load_frame(p, WIDTH, HEIGHT) for p in frames])).permute(0, 3, 1, 2))


@torch.no_grad()
def test_sample_latents_is_the_vae_posterior_draw_for_the_same_generator(pipe):
    pixels = torch.rand(5, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scaling = pipe.vae.config.scaling_factor
    mean, std = frame_latent_statistics(pipe.vae, pixels, chunk_size=5)
    assert mean.dtype == std.dtype == torch.float32 and mean.shape == (5, 4, HEIGHT // 2, WIDTH // 2)
    # Frames are encoded independently: chunks change only the float rounding of the convolutions.
    for statistic, chunked in zip((mean, std), frame_latent_statistics(pipe.vae, pixels, chunk_size=2)):
        torch.testing.assert_close(chunked, statistic, rtol=1e-5, atol=1e-6)

    expected = pipe.vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(11)) * scaling
    torch.testing.assert_close(sample_latents(mean, std, scaling, torch.Generator().manual_seed(11)), expected, rtol=0, atol=0)
    # Stored in fp16, the statistics still give the same draw up to fp16 rounding.
    cached = sample_latents(mean.half(), std.half(), scaling, torch.Generator().manual_seed(11))
    torch.testing.assert_close(cached, expected, rtol=2e-3, atol=2e-3)
    assert not torch.allclose(cached, sample_latents(mean.half(), std.half(), scaling, torch.Generator().manual_seed(12)))

    # Over many draws: mean and spread of the posterior, scaled.
    draws = torch.stack([sample_latents(mean.half(), std.half(), scaling, torch.Generator().manual_seed(s)) for s in range(2000)])
    torch.testing.assert_close(draws.mean(0), mean * scaling, rtol=0, atol=4 * (std * scaling).max().item() / 2000**0.5)
    torch.testing.assert_close(draws.std(0), std * scaling, rtol=0.1, atol=1e-6)


@torch.no_grad()
def test_live_training_encoder_and_the_cache_draw_the_same_z0(pipe, cached):
    base, cache_dir = cached
    dataset = LatentCacheDataset(base, cache_dir, num_frames=4, width=WIDTH, height=HEIGHT, seed=3)
    frames = FrameFolderDataset(base, num_frames=4, width=WIDTH, height=HEIGHT, seed=3)
    for index in range(len(dataset)):
        item = dataset[index]
        pixels = to_model_range(frames[index]["pixel_values"])
        live = encode_video_latents(pipe.vae, pixels[None], torch.Generator().manual_seed(index), chunk_size=3)
        from_cache = sample_latents(item["latent_mean"][None], item["latent_std"][None], pipe.vae.config.scaling_factor,
                                    torch.Generator().manual_seed(index))
        torch.testing.assert_close(from_cache, live, rtol=2e-3, atol=2e-3)
        expected_clip = clip_image_embedding(pipe.image_encoder, pipe.feature_extractor, pixels[:1])[0, 0]
        torch.testing.assert_close(item["clip_embedding"], expected_clip, rtol=1e-5, atol=1e-6)
        assert torch.equal(item["first_frame"], frames[index]["pixel_values"][0])


@torch.no_grad()
def test_items_follow_the_frame_dataset_windows(pipe, cached):
    base, cache_dir = cached
    dataset = LatentCacheDataset(base, cache_dir, num_frames=3, width=WIDTH, height=HEIGHT, seed=5, with_pixels=True)
    frames = FrameFolderDataset(base, num_frames=3, width=WIDTH, height=HEIGHT, seed=5)
    starts = set()
    for epoch in range(3):
        dataset.set_epoch(epoch)
        frames.set_epoch(epoch)
        for index in range(len(dataset)):
            item, start = dataset[index], dataset.window_start(index)
            assert start == frames.window_start(index)
            starts.add(start)
            assert item["latent_mean"].shape == item["latent_std"].shape == (3, 4, HEIGHT // 2, WIDTH // 2)
            assert item["latent_mean"].dtype == torch.float16 and item["clip_embedding"].shape == (32,)
            assert torch.equal(item["pixel_values"], frames[index]["pixel_values"])
            assert torch.equal(item["first_frame"], item["pixel_values"][0])
            # The window's rows of the entry are the statistics of the window's frames.
            mean, std = frame_latent_statistics(pipe.vae, clip_of(Path(item["folder"]), start, 3))
            torch.testing.assert_close(item["latent_mean"].float(), mean, rtol=2e-3, atol=2e-3)
            torch.testing.assert_close(item["latent_std"].float(), std, rtol=2e-3, atol=1e-6)
    assert len(starts) > 1


def test_without_pixels_only_the_first_frame_is_read(cached, tmp_path):
    base, cache_dir = cached
    dataset = LatentCacheDataset(base, cache_dir, num_frames=3, width=WIDTH, height=HEIGHT, seed=1)
    # Corrupt every frame but the windows' first frames after the cache check: reading one would raise.
    keep = {dataset.videos[i][1][dataset.window_start(i)] for i in range(len(dataset))}
    saved = {}
    for _, frames in dataset.videos:
        for path in frames:
            if path not in keep:
                saved[path] = (path.read_bytes(), path.stat())
                path.write_bytes(b"corrupt")
    try:
        items = [dataset[i] for i in range(len(dataset))]
        assert all("pixel_values" not in item and item["first_frame"].shape == (3, HEIGHT, WIDTH) for item in items)
        with pytest.raises(ValueError, match="cannot read image"):
            FrameFolderDataset(base, num_frames=3, width=WIDTH, height=HEIGHT, seed=1)[0]
    finally:
        for path, (data, stat) in saved.items():
            path.write_bytes(data)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_changed_frames_models_or_resolution_invalidate_entries(pipe, tmp_path):
    base = write_videos(tmp_path / "frames")
    cache_dir = tmp_path / "cache"
    assert build(pipe, base, cache_dir) == (2, 0)
    assert build(pipe, base, cache_dir) == (0, 2)
    fingerprint = cache_fingerprint(pipe.vae, pipe.image_encoder, pipe.feature_extractor, WIDTH, HEIGHT)
    LatentCacheDataset(base, cache_dir, 4, WIDTH, HEIGHT, fingerprint=fingerprint)

    # A frame rewritten: its folder is stale, refused with the command that fixes it, and re-encoded by a rerun.
    changed = base / "realistic" / "video_00001" / "frame_0002.jpg"
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(changed)
    with pytest.raises(ValueError, match=r"video_00001: the latent cache .* is stale: the frames changed.*python -m genex.cache_latents"):
        LatentCacheDataset(base, cache_dir, 4, WIDTH, HEIGHT)
    assert build(pipe, base, cache_dir) == (1, 1)
    LatentCacheDataset(base, cache_dir, 4, WIDTH, HEIGHT, fingerprint=fingerprint)

    # Other VAE weights or another resolution: another fingerprint, every entry refused.
    other = build_tiny_svd_pipeline(seed=1)
    assert cache_fingerprint(other.vae, pipe.image_encoder, pipe.feature_extractor, WIDTH, HEIGHT) != fingerprint
    assert cache_fingerprint(pipe.vae, other.image_encoder, pipe.feature_extractor, WIDTH, HEIGHT) != fingerprint
    wider = cache_fingerprint(pipe.vae, pipe.image_encoder, pipe.feature_extractor, 2 * WIDTH, HEIGHT)
    with pytest.raises(ValueError, match=f"was built for {fingerprint}, this run needs {wider}"):
        LatentCacheDataset(base, cache_dir, 4, 2 * WIDTH, HEIGHT, fingerprint=wider)

    cache_entry_path(cache_dir, base, base / "realistic" / "video_00000").unlink()
    with pytest.raises(ValueError, match="video_00000: the latent cache .* has no entry"):
        LatentCacheDataset(base, cache_dir, 4, WIDTH, HEIGHT)
    assert not list(cache_dir.rglob("*.tmp"))


def test_cli_writes_the_default_hidden_cache_and_reuses_it(tmp_path):
    base = write_videos(tmp_path / "frames", lengths=(3,))
    model = save_tiny_svd_pipeline(tmp_path / "tiny_svd")
    command = [sys.executable, "-m", "genex.cache_latents", f"--pretrained_model_name_or_path={model}", f"--base_folder={base}",
               f"--width={WIDTH}", f"--height={HEIGHT}", "--chunk_size=2"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    first = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "1 videos encoded, 0 already cached" in first.stdout
    assert (base / ".latent_cache" / "realistic" / "video_00000" / "latents.safetensors").is_file()
    again = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "0 videos encoded, 1 already cached" in again.stdout
