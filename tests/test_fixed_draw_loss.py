"""genex.step.fixed_draw_loss: the same noisy clips at every evaluation, so its value moves only with the weights."""

import pytest
import torch

from genex.edm import edm_loss
from genex.models import Encoders
from genex.step import Objective, fixed_draw_loss, predict
from genex.synthetic import render_forward_video
from genex.tiny import build_tiny_svd_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_FRAMES = 3

@pytest.fixture(scope="module")
def setup():
    pipeline = build_tiny_svd_pipeline()
    encoders = Encoders(pipeline.vae, pipeline.image_encoder, pipeline.feature_extractor)
    batches = [{"pixel_values": torch.from_numpy(render_forward_video(NUM_FRAMES, 64, 32, seed=seed)).permute(0, 3, 1, 2)[None]} for seed in (0, 1)]
    return pipeline.unet, encoders, batches

def loss(setup, objective=Objective(num_frames=NUM_FRAMES), seed=0):
    unet, encoders, batches = setup
    return fixed_draw_loss(batches, unet, encoders, objective, seed, torch.float32, "cpu")

def test_the_same_weights_give_the_same_value_whatever_was_drawn_before(setup):
    first = loss(setup)
    torch.manual_seed(1234)
    torch.randn(100)
    assert loss(setup) == first
    # Another seed draws other sigmas and noise: the value is of the draws, not a constant.
    assert loss(setup, seed=1) != first

def test_it_is_the_mean_edm_loss_of_the_batches_drawn_in_turn_from_one_seeded_generator(setup):
    unet, encoders, batches = setup
    objective = Objective(num_frames=NUM_FRAMES, conditioning_dropout_prob=0.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        losses = [edm_loss(p.D, p.z0, p.sigma).item() for p in (predict(b, unet, encoders, objective, generator, torch.float32) for b in batches)]
    assert loss(setup) == pytest.approx(sum(losses) / len(losses), rel=1e-6)

def test_conditioning_dropout_is_off(setup):
    # With dropout at 1/3 every conditioning would be dropped in training; the fixed draws keep all of it.
    assert loss(setup, Objective(num_frames=NUM_FRAMES, conditioning_dropout_prob=1 / 3)) == loss(setup)

def test_it_moves_with_the_weights(setup):
    unet = setup[0]
    before = loss(setup)
    block = next(p for name, p in unet.named_parameters() if "temporal_transformer_block" in name and name.endswith("weight") and p.ndim == 2)
    saved = block.detach().clone()
    try:
        with torch.no_grad():
            block.add_(0.5 * torch.randn(block.shape, generator=torch.Generator().manual_seed(0)))
        assert loss(setup) != before
    finally:
        with torch.no_grad():
            block.copy_(saved)
    assert loss(setup) == before
