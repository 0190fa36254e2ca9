import copy

import pytest
import torch
from diffusers import UNet2DConditionModel

from pecn.tiny import build_tiny_unet
from pecn.unet import expand_conv_in


@pytest.fixture(scope="module")
def base_unet():
    torch.manual_seed(0)
    return build_tiny_unet(in_channels=4).eval()


def unet_inputs(batch=2, channels=4):
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, channels, 16, 16, generator=generator)
    text = torch.randn(batch, 7, 32, generator=generator)
    return sample, torch.tensor([10, 500]), text


def test_expansion_copies_old_weights_and_zeroes_new(base_unet):
    expanded = expand_conv_in(copy.deepcopy(base_unet))
    weight = expanded.conv_in.weight
    assert weight.shape == (32, 8, 3, 3)
    assert torch.equal(weight[:, :4], base_unet.conv_in.weight)
    assert torch.count_nonzero(weight[:, 4:]) == 0
    assert torch.equal(expanded.conv_in.bias, base_unet.conv_in.bias)
    assert expanded.config.in_channels == 8
    base_state, expanded_state = base_unet.state_dict(), expanded.state_dict()
    assert all(torch.equal(base_state[key], expanded_state[key]) for key in base_state if not key.startswith("conv_in."))


def test_expanded_unet_behaves_as_the_text_to_image_unet(base_unet):
    expanded = expand_conv_in(copy.deepcopy(base_unet))
    sample, timestep, text = unet_inputs()
    image_latents = 5 * torch.randn_like(sample)
    with torch.no_grad():
        expected = base_unet(sample, timestep, text).sample
        actual = expanded(torch.cat([sample, image_latents], dim=1), timestep, text).sample
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_new_channels_are_trainable(base_unet):
    expanded = expand_conv_in(copy.deepcopy(base_unet))
    sample, timestep, text = unet_inputs()
    expanded(torch.cat([sample, torch.randn_like(sample)], dim=1), timestep, text).sample.square().mean().backward()
    assert torch.count_nonzero(expanded.conv_in.weight.grad[:, 4:]) > 0


def test_eight_channel_unet_is_untouched():
    torch.manual_seed(0)
    unet = build_tiny_unet(in_channels=8)
    conv_in = unet.conv_in
    weight = conv_in.weight.detach().clone()
    assert expand_conv_in(unet) is unet
    assert unet.conv_in is conv_in and torch.equal(unet.conv_in.weight, weight)
    assert unet.config.in_channels == 8


def test_other_channel_counts_are_errors():
    with pytest.raises(ValueError, match="3 input channels; expected 4 .* or 8"):
        expand_conv_in(build_tiny_unet(in_channels=3))


def test_target_must_add_channels(base_unet):
    with pytest.raises(ValueError, match="got 2"):
        expand_conv_in(copy.deepcopy(base_unet), in_channels=2)


def test_expanded_config_round_trips(base_unet, tmp_path):
    expanded = expand_conv_in(copy.deepcopy(base_unet))
    expanded.save_pretrained(tmp_path)
    loaded = UNet2DConditionModel.from_pretrained(tmp_path)
    assert loaded.config.in_channels == 8
    assert torch.equal(loaded.conv_in.weight, expanded.conv_in.weight)
