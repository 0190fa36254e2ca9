"""Training-time conditioning against StableVideoDiffusionPipeline's own encoding code on a tiny pipeline."""

import numpy as np
import pytest
import torch
from PIL import Image

from common.conditioning import conditioning_dropout_masks
from genex.conditioning import (
    add_time_ids,
    clip_image_embedding,
    encode_cond_latents,
    encode_video_latents,
    fps_id_for,
)
from genex.tiny import build_tiny_svd_pipeline


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_svd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_image(seed, width=128, height=64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def to_frame(image: Image.Image) -> torch.Tensor:
    """PIL -> [3,H,W] in [-1,1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1.0


@pytest.mark.parametrize("width, height", [(128, 64), (512, 288)])
@torch.no_grad()
def test_clip_image_embedding_matches_pipeline_encode_image(pipe, width, height):
    # 128x64 is upsampled to 224x224; 512x288 is downsampled, where the antialiasing blur matters.
    images = [random_image(0, width, height), random_image(1, width, height)]
    frames = torch.stack([to_frame(im) for im in images])
    embedding = clip_image_embedding(pipe.image_encoder, pipe.feature_extractor, frames)
    assert embedding.shape == (2, 1, 32)
    for i, image in enumerate(images):
        expected = pipe._encode_image(image, "cpu", 1, False)
        torch.testing.assert_close(embedding[i : i + 1], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(embedding[0], embedding[1])


def test_clip_image_embedding_rejects_videos(pipe):
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        clip_image_embedding(pipe.image_encoder, pipe.feature_extractor, torch.zeros(1, 2, 3, 64, 64))


def test_add_time_ids_matches_pipeline_for_batch_one(pipe):
    fps, motion_bucket_id, noise_aug_strength = 7, 127, 0.02
    expected = pipe._get_add_time_ids(fps - 1, motion_bucket_id, noise_aug_strength, torch.float32, 1, 1, False)
    got = add_time_ids(fps_id_for(fps), motion_bucket_id, torch.tensor([noise_aug_strength]))
    torch.testing.assert_close(got, expected)


def test_add_time_ids_one_row_per_sample():
    cond_sigma = torch.tensor([0.01, 0.05, 0.2])
    expected = torch.tensor([[5.0, 100.0, 0.01], [5.0, 100.0, 0.05], [5.0, 100.0, 0.2]])
    torch.testing.assert_close(add_time_ids(5, 100, cond_sigma), expected)
    with pytest.raises(ValueError, match="cond_sigma"):
        add_time_ids(5, 100, torch.tensor(0.02))


def test_fps_id_is_what_the_pipeline_feeds_for_the_same_fps(pipe, monkeypatch):
    class Fed(Exception):
        pass

    def record_and_stop(fps, *args, **kwargs):
        raise Fed(fps)

    monkeypatch.setattr(pipe, "_get_add_time_ids", record_and_stop)
    with pytest.raises(Fed) as fed:
        pipe(random_image(2, 64, 64), height=64, width=64, num_frames=2, num_inference_steps=1, fps=9)
    assert fed.value.args == (fps_id_for(9),)
    with pytest.raises(ValueError, match="fps"):
        fps_id_for(0)


def test_dropout_frequencies():
    p = 0.1
    keep_clip, keep_latent = conditioning_dropout_masks(400_000, p, generator=torch.Generator().manual_seed(0))
    assert keep_clip.dtype == torch.bool and keep_clip.shape == (400_000,)
    frequency = lambda mask: mask.float().mean().item()  # noqa: E731
    assert frequency(~keep_clip) == pytest.approx(2 * p, abs=0.003)
    assert frequency(~keep_latent) == pytest.approx(2 * p, abs=0.003)
    assert frequency(~keep_clip & keep_latent) == pytest.approx(p, abs=0.003)
    assert frequency(~keep_clip & ~keep_latent) == pytest.approx(p, abs=0.003)
    assert frequency(keep_clip & ~keep_latent) == pytest.approx(p, abs=0.003)
    assert frequency(keep_clip & keep_latent) == pytest.approx(1 - 3 * p, abs=0.003)


def test_dropout_band_boundaries_with_a_fixed_generator():
    p = 0.25
    u = torch.rand(64, generator=torch.Generator().manual_seed(7))
    keep_clip, keep_latent = conditioning_dropout_masks(64, p, generator=torch.Generator().manual_seed(7))
    for ui, clip, latent in zip(u.tolist(), keep_clip.tolist(), keep_latent.tolist()):
        if ui < 0.25:
            assert (clip, latent) == (False, True)
        elif ui < 0.5:
            assert (clip, latent) == (False, False)
        elif ui < 0.75:
            assert (clip, latent) == (True, False)
        else:
            assert (clip, latent) == (True, True)
    with pytest.raises(ValueError, match="probability"):
        conditioning_dropout_masks(4, 1.5)


def test_dropout_nothing_dropped_at_p_zero():
    keep_clip, keep_latent = conditioning_dropout_masks(1000, 0.0)
    assert keep_clip.all() and keep_latent.all()


@torch.no_grad()
def test_encode_cond_latents_matches_pipeline_encode_vae_image(pipe):
    first_frame = torch.stack([to_frame(random_image(3)), to_frame(random_image(4))])
    cond_sigma = torch.tensor([0.02, 0.3])
    latents = encode_cond_latents(pipe.vae, first_frame, cond_sigma, num_frames=3, generator=torch.Generator().manual_seed(5))
    assert latents.shape == (2, 3, 4, 32, 64)

    # The pipeline: image + noise_aug_strength * randn, then _encode_vae_image (mode, unscaled), repeated over frames.
    noise = torch.randn(first_frame.shape, generator=torch.Generator().manual_seed(5))
    for i in range(2):
        noisy = first_frame[i : i + 1] + cond_sigma[i].item() * noise[i : i + 1]
        expected = pipe._encode_vae_image(noisy, "cpu", 1, False)
        for f in range(3):
            torch.testing.assert_close(latents[i : i + 1, f], expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_encode_video_latents_is_scaled_posterior_sample_and_chunking_invariant(pipe):
    generator = torch.Generator().manual_seed(8)
    frames = torch.rand(2, 3, 3, 32, 32, generator=generator) * 2 - 1
    latents = encode_video_latents(pipe.vae, frames, generator=torch.Generator().manual_seed(9), chunk_size=100)
    assert latents.shape == (2, 3, 4, 16, 16)

    posterior = pipe.vae.encode(frames.flatten(0, 1)).latent_dist
    expected = posterior.sample(torch.Generator().manual_seed(9)) * pipe.vae.config.scaling_factor
    torch.testing.assert_close(latents.flatten(0, 1), expected)
    assert not torch.allclose(expected, posterior.mode() * pipe.vae.config.scaling_factor)

    chunked = encode_video_latents(pipe.vae, frames, generator=torch.Generator().manual_seed(9), chunk_size=2)
    torch.testing.assert_close(chunked, latents)
    with pytest.raises(ValueError, match="frames"):
        encode_video_latents(pipe.vae, frames[0])
