"""Smoke runs of bench/train_step.py on the tiny pipelines: it runs and reports every part (not a time)."""

import importlib.util
import json

import pytest
import torch

from bench import train_step
from bench.full_size import build_instruct_pix2pix_full, build_svd_full, count_params_m


# One torch thread: faster and steadier on a shared 2-core machine (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def run_bench(capsys, *argv) -> tuple[list[str], dict]:
    """(printed lines, the JSON record) of one bench run."""
    record = train_step.main(["--steps", "1", "--warmup", "0", *argv])
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[-1]) == json.loads(json.dumps(record))
    return lines, record


def check_row(row: dict, parts: list[str]) -> None:
    for part in parts + ["step", "total"]:
        assert row[f"{part}_ms"] > 0, (row["config"], part)
    assert row["step_ms"] >= row["unet_fwd_bwd_ms"]
    assert row["peak_rss_gib"] > 0
    assert 0 < row["unet_tflop"] < row["step_tflop"]
    assert row["unet_mfu_pct"] == "n/a" and row["step_mfu_pct"] == "n/a"
    assert 0 < row["trainable_m"] <= row["unet_m"]


def test_genex_compare_scl_and_cache(capsys):
    lines, record = run_bench(capsys, "--pipeline", "genex", "--tiny", "--compare", "scl", "cache")
    base, scl, cache = record["rows"]
    assert [row["config"] for row in record["rows"]] == ["base", "+scl", "+cache"]
    check_row(base, ["data", "vae_encode", "clip_encode", "unet_fwd_bwd", "scl", "optimizer"])
    check_row(scl, ["data", "vae_encode", "clip_encode", "unet_fwd_bwd", "scl", "optimizer"])
    check_row(cache, ["data", "vae_encode", "unet_fwd_bwd", "scl", "optimizer"])
    # The cached step encodes no frame with CLIP; SCL's decode and three re-encodes add FLOPs, not UNet FLOPs.
    assert "clip_encode_ms" not in cache and cache["cached_latents"]
    assert (base["scl_samples"], scl["scl_samples"]) == (0, 3)
    assert scl["step_tflop"] > base["step_tflop"] and scl["unet_tflop"] == base["unet_tflop"]
    assert base["x_first"] == 1.0 and scl["x_first"] == pytest.approx(scl["step_ms"] / base["step_ms"])
    table = [line for line in lines if line.startswith("| config |")]
    assert len(table) == 1 and "| scl_ms |" in table[0] and "| clip_encode_ms |" in table[0]
    assert sum(line.startswith("| +") for line in lines) == 2


def test_pecn_checkpointing_counts_model_flops(capsys):
    _, record = run_bench(capsys, "--pipeline", "pecn", "--tiny", "--compare", "checkpointing")
    base, checkpointed = record["rows"]
    for row in record["rows"]:
        check_row(row, ["data", "vae_encode", "text_encode", "unet_fwd_bwd", "optimizer"])
        assert row["size"] == "32x32 b2" and row["unet_m"] == row["trainable_m"]
    assert checkpointed["checkpointing"] and not base["checkpointing"]
    # Model FLOPs: the recomputation of checkpointing is not counted.
    assert checkpointed["unet_tflop"] == base["unet_tflop"] and not checkpointed["flops_include_recompute"]


def test_genex_cached_latents_with_scl(capsys):
    _, record = run_bench(capsys, "--pipeline", "genex", "--tiny", "--cached_latents", "--scl_loss", "--num_scl_samples", "1", "--batch_size", "2")
    (row,) = record["rows"]
    check_row(row, ["data", "vae_encode", "unet_fwd_bwd", "scl", "optimizer"])
    assert row["cached_latents"] and row["scl_samples"] == 1 and row["size"] == "64x32x4 b2"


@pytest.mark.parametrize("argv, message", [
    (["--pipeline", "pecn", "--tiny", "--scl_loss"], "--scl_loss: GenEx only"),
    (["--pipeline", "genex", "--tiny", "--random_flip"], "--random_flip: PECN only"),
    (["--pipeline", "pecn", "--tiny", "--cached_latents"], "--cached_latents: GenEx only"),
    (["--pipeline", "pecn", "--tiny", "--width", "32", "--height", "64"], "PECN trains square images"),
    (["--pipeline", "genex", "--tiny", "--full"], "not allowed with argument"),
    (["--pipeline", "genex", "--tiny", "--device", "meta", "--compile"], "runs no optimizer or compiler"),
    (["--pipeline", "genex", "--tiny", "--scl_loss", "--scl_num_frames", "5"], "--scl_num_frames 5 must be between 1 and --num_frames 4"),
    (["--pipeline", "pecn", "--tiny", "--scl_num_frames", "2"], "--scl_num_frames: GenEx only"),
])
def test_refused_flags(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        train_step.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_8bit_adam_without_bitsandbytes_is_one_line(capsys):
    with pytest.raises(SystemExit):
        train_step.parse_args(["--pipeline", "genex", "--tiny", "--use_8bit_adam"])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes")


def test_full_size_parameter_counts():
    # Built on the meta device: the real architectures' shapes without their memory.
    svd = build_svd_full(torch.bfloat16, "meta")
    assert round(count_params_m(svd["unet"]), 1) == 1524.6
    assert round(count_params_m(svd["unet"], "temporal_transformer_block"), 1) == 397.6
    assert svd["vae"].config.scaling_factor == 0.18215 and round(count_params_m(svd["image_encoder"])) == 632
    ip2p = build_instruct_pix2pix_full(torch.bfloat16, "meta")
    assert ip2p["unet"].config.in_channels == 8 and round(count_params_m(ip2p["unet"]), 1) == 859.5
    assert round(count_params_m(ip2p["text_encoder"]), 1) == 123.1
    assert max(ip2p["tokenizer"].get_vocab().values()) < ip2p["text_encoder"].config.vocab_size


@pytest.mark.parametrize("pipeline, option", [("genex", ["--p_mean", "2.0"]), ("pecn", ["--conditioning_dropout_prob", "0.4"])])
def test_the_bench_runs_the_scripts_objective_with_its_options(capsys, pipeline, option):
    """The step measured is the training script's (genex.step / pecn.step) with the script's flags: the same options give the
    same loss and FLOPs, another objective option another loss."""
    runs = [run_bench(capsys, "--pipeline", pipeline, "--tiny", "--steps", "2", *extra)[1]["rows"][0] for extra in ([], [], option)]
    assert runs[0]["loss"] == runs[1]["loss"] and runs[0]["step_tflop"] == runs[1]["step_tflop"]
    assert runs[2]["loss"] != runs[0]["loss"]


def test_scl_on_k_frames_counts_k_over_f_of_the_scl_flops_and_k_equal_to_the_clip_is_the_default_loss(capsys):
    def row(*extra):
        return run_bench(capsys, "--pipeline", "genex", "--tiny", "--scl_loss", *extra)[1]["rows"][0]

    # Counted on the meta device, 8 frames: SCL's decode and encodes scale with the frames they see, nothing else changes.
    counts = {k: row("--num_frames", "8", "--device", "meta", *(["--scl_num_frames", str(k)] if k else [])) for k in (None, 8, 4, 2, 1)}
    every = counts[None]
    assert every["scl_frames"] == counts[8]["scl_frames"] == 8 and counts[8]["scl_tflop"] == every["scl_tflop"] > 0
    for k in (4, 2, 1):
        assert counts[k]["scl_frames"] == k and counts[k]["scl_tflop"] == pytest.approx(every["scl_tflop"] * k / 8, rel=1e-9)
        assert counts[k]["unet_fwd_bwd_tflop"] == every["unet_fwd_bwd_tflop"] and counts[k]["vae_encode_tflop"] == every["vae_encode_tflop"]
    # Real CPU steps of the tiny 4-frame clip: K = 4 is the default loss, K = 2 another.
    default, all_four, two = row("--steps", "2"), row("--steps", "2", "--scl_num_frames", "4"), row("--steps", "2", "--scl_num_frames", "2")
    assert default["loss"] == all_four["loss"] and two["loss"] != default["loss"]
    assert two["step_tflop"] < default["step_tflop"] == all_four["step_tflop"]


def test_mfu_is_flops_over_time_and_peak():
    assert train_step.mfu(400e12, 1.0, 800.0) == pytest.approx(50.0)
    assert train_step.mfu(400e12, 2.0, 800.0) == pytest.approx(25.0)
    assert train_step.mfu(400e12, 1.0, None) == "n/a"


@pytest.mark.parametrize("argv", [["--pipeline", "genex", "--tiny", "--compare", "scl", "cache"], ["--pipeline", "pecn", "--tiny"]])
def test_meta_counts_are_the_counts_of_a_real_step(capsys, argv):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # One attention kernel for both devices: the meta device runs SDPA's math path.
    with sdpa_kernel(SDPBackend.MATH):
        real = run_bench(capsys, *argv)[1]["rows"]
        meta = run_bench(capsys, *argv, "--device", "meta")[1]["rows"]
    assert [row["config"] for row in meta] == [row["config"] for row in real]
    for real_row, meta_row in zip(real, meta):
        assert meta_row["unet_fwd_bwd_tflop"] == real_row["unet_tflop"] > 0
        assert meta_row["step_tflop"] == real_row["step_tflop"]
        assert meta_row["x_first"] == pytest.approx(meta_row["step_tflop"] / meta[0]["step_tflop"])
        assert "step_ms" not in meta_row and "peak_rss_gib" not in meta_row


def test_meta_counts_the_full_size_step_at_1024x576x25(capsys):
    lines, record = run_bench(capsys, "--pipeline", "genex", "--full", "--device", "meta", "--compare", "scl", "cache")
    base, scl, cache = record["rows"]
    assert "SVD-xt UNet: 1524.6 M parameters (DESIGN.md 1524.6), temporal_transformer_block 397.6 M (DESIGN.md 397.6)" in lines
    assert base["size"] == "1024x576x25 b1" and scl["scl_samples"] == 3
    # The same UNet work in every row; SCL adds its decode and encodes, the cache removes the frames' encodes and CLIP.
    assert base["unet_fwd_bwd_tflop"] == scl["unet_fwd_bwd_tflop"] == cache["unet_fwd_bwd_tflop"] > 100
    assert scl["scl_tflop"] > base["unet_fwd_bwd_tflop"] and base["scl_tflop"] == 0
    assert cache["clip_encode_tflop"] == 0 < base["clip_encode_tflop"] and cache["vae_encode_tflop"] < base["vae_encode_tflop"] / 10


def test_cpu_attention_is_counted_as_the_math_path_forward():
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    train_step.count_cpu_attention_flops()
    q, k, v = (torch.randn(2, 4, length, 8) for length in (16, 24, 24))
    counts = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        with sdpa_kernel(backend), FlopCounterMode(display=False) as counter:
            F.scaled_dot_product_attention(q, k, v)
        counts[backend] = counter.get_total_flops()
    # Two products of 2*4 heads, 16x24 scores, 8 channels, two FLOPs per multiply-add.
    assert counts[SDPBackend.FLASH_ATTENTION] == counts[SDPBackend.MATH] == 2 * (2 * 2 * 4 * 16 * 24 * 8)
