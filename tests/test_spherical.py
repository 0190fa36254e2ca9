"""Yaw rotation of equirectangular panoramas, the decoded x0 estimate and the Spherical Contrastive Loss."""

import math

import numpy as np
import pytest
import torch

from genex.edm import edm_loss
from genex.spherical import (
    combine_edm_scl,
    decode_x0,
    rotate_yaw,
    sample_scl_frames,
    sample_yaw_angles,
    scl_beta_released,
    spherical_contrastive_loss,
    yaw_shift_pixels,
)
from genex.step import Objective, Prediction, loss_of
from genex.tiny import build_tiny_svd_pipeline


def smooth_panorama(width, height=4, longitude_offset=0.0):
    """[3,H,W] panorama from a 2*pi-periodic function of longitude; |df/dlon| <= 2.5."""
    longitude = 2 * math.pi * torch.arange(width, dtype=torch.float64) / width + longitude_offset
    f = torch.sin(longitude) + 0.5 * torch.cos(3 * longitude + 0.3)
    return torch.stack([c * f for c in (1.0, -0.5, 0.25)])[:, None, :].expand(3, height, width).clone()


def neighbour_differences(x):
    """|x[..., j+1] - x[..., j]| for every column j, the last one paired with column 0 (the seam)."""
    return (torch.cat([x[..., 1:], x[..., :1]], dim=-1) - x).abs()


def test_yaw_shift_pixels_hand_values():
    assert yaw_shift_pixels(90, 1024) == 256
    assert yaw_shift_pixels(-90, 1024) == 768
    assert yaw_shift_pixels(360, 100) == 0
    assert yaw_shift_pixels(10, 64) == 2  # 1.78 columns
    assert yaw_shift_pixels(179.9, 1024) == 512  # 511.7 columns
    with pytest.raises(ValueError, match="width"):
        yaw_shift_pixels(10, 0)


def test_full_turn_is_identity():
    x = torch.randn(2, 3, 3, 5, 37)
    for theta in (360.0, -360.0, 720.0, 0.0):
        assert torch.equal(rotate_yaw(x, theta), x)
    image = np.random.default_rng(0).integers(0, 256, (5, 37, 3), dtype=np.uint8)
    assert np.array_equal(rotate_yaw(image, 360.0, width_axis=1), image)


def test_rotations_compose():
    x = torch.randn(3, 4, 72)  # 5 degrees per column
    assert torch.equal(rotate_yaw(rotate_yaw(x, 35.0), 340.0), rotate_yaw(x, 375.0))
    assert torch.equal(rotate_yaw(rotate_yaw(x, 35.0), 340.0), torch.from_numpy(np.roll(x.numpy(), 3, axis=-1)))
    # Arbitrary angles: shifts add modulo the width.
    x = torch.randn(3, 4, 64)
    for a, b in ((13.3, 101.7), (179.9, 0.4), (-33.3, 250.1)):
        shift = (yaw_shift_pixels(a, 64) + yaw_shift_pixels(b, 64)) % 64
        assert torch.equal(rotate_yaw(rotate_yaw(x, a), b), torch.from_numpy(np.roll(x.numpy(), shift, axis=-1)))


def test_numpy_hwc_image_moves_columns_right_by_the_shift():
    image = np.random.default_rng(1).integers(0, 256, (6, 40, 3), dtype=np.uint8)
    rotated = rotate_yaw(image, 45.0, width_axis=1)
    shift = 5  # 45 / 360 * 40
    for j in range(40):
        assert np.array_equal(rotated[:, (j + shift) % 40], image[:, j])


def test_seam_stays_continuous_and_rotation_is_a_longitude_shift():
    width = 90
    panorama = smooth_panorama(width)
    bound = 2.5 * 2 * math.pi / width  # max |f'| times the longitude step
    assert neighbour_differences(panorama).max() <= bound
    for theta in (37.0, 123.4, 250.0, -75.5):
        rotated = rotate_yaw(panorama, theta)
        assert neighbour_differences(rotated).max() <= bound
        # The rotated panorama is the same function sampled at longitudes moved by the shift.
        shift = yaw_shift_pixels(theta, width)
        expected = smooth_panorama(width, longitude_offset=-2 * math.pi * shift / width)
        torch.testing.assert_close(rotated, expected)
    # A non-circular shift (the columns that leave are replaced by the edge) breaks the seam: the check can fail.
    clamped = torch.cat([panorama[..., :1].expand(3, 4, 30), panorama[..., :-30]], dim=-1)
    assert neighbour_differences(clamped).max() > bound


@pytest.mark.parametrize(
    "op",
    [
        torch.tanh,
        lambda x: x.flip(-2),
        lambda x: x - x.mean(dim=-2, keepdim=True),
        lambda x: torch.einsum("dc,...chw->...dhw", torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]), x),
    ],
    ids=["elementwise", "vertical_flip", "column_centering", "channel_mixing"],
)
def test_rotation_commutes_with_per_column_ops(op):
    x = torch.randn(2, 3, 6, 50)
    torch.testing.assert_close(rotate_yaw(op(x), 77.0), op(rotate_yaw(x, 77.0)))


def test_sample_yaw_angles():
    angles = sample_yaw_angles(3, generator=torch.Generator().manual_seed(0))
    assert len(angles) == 3 and angles == sample_yaw_angles(3, generator=torch.Generator().manual_seed(0))
    many = np.array(sample_yaw_angles(100_000, generator=torch.Generator().manual_seed(1)))
    assert many.min() >= 0.0 and many.max() < 180.0
    assert many.mean() == pytest.approx(90.0, abs=0.5)


def column_ramp_encoder(pixels):
    """A toy 'encoder' that weights columns unequally, so the loss depends on the rotation."""
    width = pixels.shape[-1]
    return pixels * torch.arange(1, width + 1, dtype=pixels.dtype)


def test_scl_hand_value_zero_and_gradients():
    generator = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 3, 3, 4, 8, generator=generator, dtype=torch.float64).requires_grad_()
    x_pred = torch.randn(2, 3, 3, 4, 8, generator=generator, dtype=torch.float64).requires_grad_()
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    thetas = [45.0, 90.0]  # 1 and 2 columns of 8

    loss = spherical_contrastive_loss(x_pred, x0, sigma, thetas, column_ramp_encoder)

    difference = (x_pred - x0).detach().numpy()
    ramp = np.arange(1, 9)
    weight = ((1 + sigma**2) / sigma**2).numpy()[:, None, None, None, None]
    expected = np.mean([np.mean(weight * (ramp * np.roll(difference, s, axis=-1)) ** 2) for s in (1, 2)])
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # edm_loss reduces in float32

    loss.backward()
    assert x0.grad is None
    assert x_pred.grad is not None and x_pred.grad.abs().sum() > 0

    same = spherical_contrastive_loss(x0.detach(), x0.detach(), sigma, thetas, column_ramp_encoder)
    assert same.item() == 0.0
    with pytest.raises(ValueError, match="yaw angle"):
        spherical_contrastive_loss(x_pred, x0, sigma, [], column_ramp_encoder)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_svd_pipeline(seed=0)


def test_decode_x0_matches_pipeline_decode_latents_with_gradients(pipe):
    latents = torch.randn(2, 5, 4, 8, 8, generator=torch.Generator().manual_seed(3)).requires_grad_()
    pixels = decode_x0(pipe.vae, latents, decode_chunk_size=2)
    assert pixels.shape == (2, 5, 3, 16, 16)
    with torch.no_grad():
        for i in range(2):
            # The pipeline returns [B,C,F,H,W]; its chunks follow one video at a time for batch 1.
            expected = pipe.decode_latents(latents[i : i + 1], num_frames=5, decode_chunk_size=2)
            torch.testing.assert_close(pixels[i : i + 1], expected.permute(0, 2, 1, 3, 4), rtol=1e-5, atol=1e-5)
    pixels[0, 4].sum().backward()
    assert latents.grad[0, 4].abs().sum() > 0
    assert latents.grad[1].abs().sum() == 0


def test_released_beta_schedule_hand_values():
    assert scl_beta_released(0, 1000) == pytest.approx(0.05)
    assert scl_beta_released(250, 1000) == pytest.approx(0.525)
    assert scl_beta_released(500, 1000) == pytest.approx(1.0)
    assert scl_beta_released(900, 1000) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="max_train_steps"):
        scl_beta_released(0, 0)


def test_combination_and_the_ten_times_rule():
    loss, beta = combine_edm_scl(torch.tensor(1.0), torch.tensor(10.0), 0.3)
    assert beta == 0.3 and loss.item() == pytest.approx(0.7 * 1.0 + 0.3 * 10.0)
    loss, beta = combine_edm_scl(torch.tensor(1.0), torch.tensor(10.5), 0.3)
    assert beta == 0.0 and loss.item() == pytest.approx(1.0)


def test_a_skipped_scl_term_is_not_backpropagated():
    # The backward of a skipped term would run SCL's decode and encodes only to multiply by zero.
    edm_input, scl_input = torch.tensor(1.0, requires_grad=True), torch.tensor(2.0, requires_grad=True)
    for l_scl, beta in ((scl_input * 10.5, 0.3), (scl_input * 1.0, 0.0)):
        loss, beta_used = combine_edm_scl(edm_input * 1.0, l_scl, beta)
        loss.backward()
        assert beta_used == 0.0 and scl_input.grad is None and edm_input.grad.item() == pytest.approx(1.0)
        edm_input.grad = None
    loss, _ = combine_edm_scl(edm_input * 1.0, scl_input * 1.0, 0.3)
    loss.backward()
    assert scl_input.grad.item() == pytest.approx(0.3) and edm_input.grad.item() == pytest.approx(0.7)


def test_scl_vae_chunks_are_checkpointed_and_give_the_plain_gradients(pipe):
    from genex.spherical import scl_encode

    vae, scaling = pipe.vae, pipe.vae.config.scaling_factor
    latents = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    calls = {"decoder": 0, "encoder": 0}
    hooks = [getattr(vae, name).register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
             for name in calls]
    grads = {}
    for checkpointing in (True, False):
        calls.update(decoder=0, encoder=0)
        x = latents.clone().requires_grad_()
        pixels = decode_x0(vae, x, decode_chunk_size=2, gradient_checkpointing=checkpointing)
        (scl_encode(vae, rotate_yaw(pixels, 45.0), chunk_size=4, gradient_checkpointing=checkpointing) ** 2).mean().backward()
        grads[checkpointing] = x.grad
        # 2 videos x 2 decode chunks and 6 frames / 4 = 2 encode chunks, each run again in the backward pass when checkpointed.
        assert calls == ({"decoder": 2 * 4, "encoder": 2 * 2} if checkpointing else {"decoder": 4, "encoder": 2})
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-5, atol=1e-8)

    reference = latents.clone().requires_grad_()
    pixels = torch.stack([torch.cat([vae.decode(c, num_frames=c.shape[0]).sample for c in video.split(2)]) for video in reference / scaling])
    encoded = vae.encode(rotate_yaw(pixels, 45.0).flatten(0, 1)).latent_dist.mode() * scaling
    (encoded**2).mean().backward()
    torch.testing.assert_close(grads[True], reference.grad, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(scl_encode(vae, rotate_yaw(pixels, 45.0), chunk_size=5).flatten(0, 1), encoded, rtol=1e-5, atol=1e-6)


def test_sample_scl_frames_draws_k_distinct_frames_uniformly_and_nothing_for_the_whole_clip():
    generator = torch.Generator().manual_seed(5)
    for k in (None, 6, 9):
        state = generator.get_state()
        assert sample_scl_frames(6, k, generator) is None
        assert torch.equal(generator.get_state(), state)  # the all-frames loss draws what it drew before the option
    frames = sample_scl_frames(6, 3, torch.Generator().manual_seed(5))
    assert torch.equal(frames, sample_scl_frames(6, 3, torch.Generator().manual_seed(5)))
    counts = torch.zeros(6)
    for _ in range(6000):
        frames = sample_scl_frames(6, 2, generator)
        assert frames.shape == (2,) and frames[0] < frames[1] and 0 <= frames.min() and frames.max() < 6
        counts[frames] += 1
    # Each frame is drawn with probability K/F = 1/3: 2000 of 6000 steps, binomial std 37.
    assert (counts - 2000).abs().max() < 150
    with pytest.raises(ValueError, match="scl_num_frames"):
        sample_scl_frames(6, 0, generator)


def scl_prediction(num_frames=4, seed=6):
    """A Prediction of the tiny SVD's shapes: D [2,F,4,8,8] needing a gradient, z0, sigma, target frames [2,F,3,16,16]."""
    generator = torch.Generator().manual_seed(seed)
    D = torch.randn(2, num_frames, 4, 8, 8, generator=generator).requires_grad_()
    z0 = D.detach() + 0.3 * torch.randn(2, num_frames, 4, 8, 8, generator=generator)
    frames = torch.rand(2, num_frames, 3, 16, 16, generator=generator) * 2 - 1
    return Prediction(D, z0, torch.tensor([0.8, 2.0]), frames)


def scl_loss_of(pipe, prediction, seed, **options):
    """loss_of with SCL at a constant beta 0.5; (loss, logs, D's gradient, the generator's state afterwards)."""
    generator = torch.Generator().manual_seed(seed)
    objective = Objective(num_frames=prediction.D.shape[1], scl_loss=True, num_scl_samples=2, scl_beta=0.5, **options)
    loss, logs = loss_of(prediction, pipe.vae, objective, generator, step=0, max_train_steps=10)
    (grad,) = torch.autograd.grad(loss, prediction.D)
    return loss, logs, grad, generator.get_state()


def test_scl_num_frames_equal_to_the_clip_is_the_default_loss_bit_for_bit(pipe):
    prediction = scl_prediction()
    default, every = scl_loss_of(pipe, prediction, seed=7), scl_loss_of(pipe, prediction, seed=7, scl_num_frames=4)
    assert default[1]["scl_beta"] == 0.5  # SCL is in the loss and its gradient
    assert torch.equal(default[0], every[0]) and torch.equal(default[1]["loss_scl"], every[1]["loss_scl"])
    assert torch.equal(default[2], every[2]) and torch.equal(default[3], every[3])


def test_scl_on_k_frames_is_the_loss_of_those_frames_alone(pipe):
    """With K < F, L_scl is the loss of the clip made of the K drawn frames; the gradient reaches only their latents."""
    prediction = scl_prediction(num_frames=5)
    loss, logs, grad, _ = scl_loss_of(pipe, prediction, seed=8, scl_num_frames=2)
    assert logs["scl_beta"] == 0.5
    # The same generator draws the frames, then the angles: the reference draws the frames, then runs the
    # all-frames loss on a prediction that holds only those frames.
    generator = torch.Generator().manual_seed(8)
    frames = sample_scl_frames(5, 2, generator)
    alone = Prediction(prediction.D[:, frames], prediction.z0[:, frames], prediction.sigma, prediction.frames[:, frames])
    _, reference = loss_of(alone, pipe.vae, Objective(num_frames=2, scl_loss=True, num_scl_samples=2, scl_beta=0.5), generator, 0, 10)
    assert torch.equal(logs["loss_scl"], reference["loss_scl"])
    (edm_grad,) = torch.autograd.grad(0.5 * edm_loss(prediction.D, prediction.z0, prediction.sigma), prediction.D)
    others = [f for f in range(5) if f not in frames.tolist()]
    assert torch.equal(grad[:, others], edm_grad[:, others])
    assert not torch.allclose(grad[:, frames], edm_grad[:, frames])


def test_k_frames_are_decoded_as_a_clip_of_their_own(pipe):
    """What "decode K frames" means for SVD's temporal decoder, against the loss written out with plain VAE calls."""
    prediction = scl_prediction(num_frames=4)
    scaling = pipe.vae.config.scaling_factor
    generator = torch.Generator().manual_seed(9)
    frames, thetas = sample_scl_frames(4, 2, generator).tolist(), sample_yaw_angles(2, generator)
    weight = ((1 + prediction.sigma**2) / prediction.sigma**2).view(2, 1, 1, 1, 1)

    @torch.no_grad()
    def reference_scl(decode_calls):
        # decode_calls: the groups of the drawn frames that one decoder call sees together.
        decoded = torch.stack([torch.cat([pipe.vae.decode(video[group] / scaling, num_frames=len(group)).sample for group in decode_calls])
                               for video in prediction.D.detach()])

        def encode(x, theta):
            return pipe.vae.encode(rotate_yaw(x, theta).flatten(0, 1)).latent_dist.mode().unflatten(0, x.shape[:2]) * scaling

        return torch.stack([(weight * (encode(decoded, theta) - encode(prediction.frames[:, frames], theta)) ** 2).mean() for theta in thetas]).mean()

    # The K latents go through the decoder as one clip (in chunks of decode_chunk_size, as the whole clip does).
    for decode_chunk_size, calls in ((8, [frames]), (1, [[frame] for frame in frames])):
        _, logs, _, _ = scl_loss_of(pipe, prediction, seed=9, scl_num_frames=2, decode_chunk_size=decode_chunk_size)
        torch.testing.assert_close(logs["loss_scl"], reference_scl(calls), rtol=1e-5, atol=1e-7)
    # The decoder mixes the frames of a call: the two frames decoded among all four are other pixels (other than with
    # --decode_chunk_size 1, where each frame is decoded alone either way).
    with torch.no_grad():
        among_all = decode_x0(pipe.vae, prediction.D.detach(), decode_chunk_size=8)[:, frames]
        alone = decode_x0(pipe.vae, prediction.D.detach()[:, frames], decode_chunk_size=8)
    assert (among_all - alone).abs().max() > 1e-2
