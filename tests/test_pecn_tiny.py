import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMScheduler,
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
)
from PIL import Image
from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode as reference_bytes_to_unicode

from pecn import tiny
from pecn.prompts import build_prompt
from pecn.tasks import TASK_TEMPLATES

# Words named by the task brief, written out independently of pecn.tiny's own word list.
EXPECTED_WHOLE_WORDS = (
    "generate a future frame of this action and the has been completed "
    "moving something up down towards camera away from across surface without it falling "
    "pushing pulling left to right dropping onto in front behind into next covering with "
    "cup box pen book bottle phone ball paper cloth towel block table"
).split()

LONG_PROGRESS_PROMPT = build_prompt(
    "moving a red plastic bottle across a surface without it falling down", add_progress=True, input_frame_idx=20, num_frames=21
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    tiny.write_tiny_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def instruct_pix2pix_folder(tmp_path_factory):
    return tiny.save_tiny_pipeline("instruct_pix2pix", tmp_path_factory.mktemp("ip2p"), seed=0)


def test_bytes_to_unicode_is_clips_map():
    assert tiny.bytes_to_unicode() == reference_bytes_to_unicode()


def test_tokenizer_files_are_clip_bpe(tmp_path):
    tiny.write_tiny_clip_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    merges = (tmp_path / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version")
    for merge in merges[1:]:
        left, right = merge.split(" ")
        assert left in vocab and right in vocab and left + right in vocab
    assert {"<|startoftext|>", "<|endoftext|>", "a", "a</w>", "%</w>", "7</w>"} <= set(vocab)


def test_every_prompt_word_is_one_token(tokenizer):
    template_words = {word for templates in TASK_TEMPLATES.values() for template in templates
                      for word in template.lower().split()}
    for word in sorted(template_words | set(EXPECTED_WHOLE_WORDS)):
        assert tokenizer.tokenize(word) == [word + "</w>"], word


def test_progress_prompt_fits_in_77_tokens_without_truncation(tokenizer):
    # The pipeline pads and truncates to 77; the progress text must survive that.
    ids = tokenizer(LONG_PROGRESS_PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    content = [token for token in ids if token != tokenizer.pad_token_id]
    assert len(content) < 40
    assert ids[0] == tokenizer.bos_token_id and ids[len(content)] == tokenizer.eos_token_id
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == LONG_PROGRESS_PROMPT.lower().replace(" ", "")
    assert tokenizer.convert_tokens_to_ids("completed</w>") in ids


def test_unknown_words_fall_back_to_bytes(tokenizer):
    text = "xylophone-42 über"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids).replace(" ", "") == text.replace(" ", "")


def test_instruct_pix2pix_folder_loads_and_runs(instruct_pix2pix_folder):
    assert (instruct_pix2pix_folder / "tokenizer" / "vocab.json").is_file()
    assert (instruct_pix2pix_folder / "tokenizer" / "merges.txt").is_file()
    pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(instruct_pix2pix_folder)
    assert pipeline.unet.config.in_channels == 8 and pipeline.unet.config.out_channels == 4
    assert pipeline.vae_scale_factor == 2
    assert isinstance(pipeline.scheduler, EulerAncestralDiscreteScheduler)
    assert pipeline.scheduler.config.beta_schedule == "scaled_linear"
    assert pipeline.scheduler.config.prediction_type == "epsilon"
    assert pipeline.tokenizer.tokenize("towel") == ["towel</w>"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 32, 3), dtype=np.uint8))
    output = pipeline(LONG_PROGRESS_PROMPT, image=image, num_inference_steps=2, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
    assert output.shape == (1, 48, 32, 3) and np.isfinite(output).all()


def test_text_to_image_folder_loads_and_runs(tmp_path):
    tiny.save_tiny_pipeline("text_to_image", tmp_path, seed=0)
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path)
    assert pipeline.unet.config.in_channels == 4
    assert isinstance(pipeline.scheduler, PNDMScheduler)
    output = pipeline("a cup", height=32, width=32, num_inference_steps=2, output_type="np").images
    assert output.shape == (1, 32, 32, 3)


def test_weights_depend_only_on_seed():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = tiny.build_tiny_instruct_pix2pix_pipeline(seed=0)
    assert torch.equal(torch.rand(3), expected_next), "building must not consume the caller's RNG"
    second = tiny.build_tiny_instruct_pix2pix_pipeline(seed=0)
    other = tiny.build_tiny_instruct_pix2pix_pipeline(seed=1)
    for name in ("unet", "vae", "text_encoder"):
        first_state, second_state = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert all(torch.equal(first_state[key], second_state[key]) for key in first_state), name
    assert not torch.equal(first.unet.conv_in.weight, other.unet.conv_in.weight)


def test_prediction_type_reaches_training_and_sampling_schedulers(tmp_path):
    tiny.save_tiny_pipeline("instruct_pix2pix", tmp_path, prediction_type="v_prediction")
    # Training builds its DDPM scheduler from the same folder (pecn.models); the pipeline samples with its Euler ancestral one.
    assert DDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler").config.prediction_type == "v_prediction"
    assert StableDiffusionInstructPix2PixPipeline.from_pretrained(tmp_path).scheduler.config.prediction_type == "v_prediction"


def test_unknown_prediction_type_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown prediction type 'sample'"):
        tiny.save_tiny_pipeline("instruct_pix2pix", tmp_path, prediction_type="sample")
    assert not any(tmp_path.iterdir())


def test_unknown_kind_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny pipeline kind 'sdxl'"):
        tiny.save_tiny_pipeline("sdxl", tmp_path)


def test_cli_writes_the_requested_kind(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["pecn.tiny", "--output_dir", str(tmp_path), "--kind", "text_to_image", "--seed", "3"])
    tiny.main()
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
