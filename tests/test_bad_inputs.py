"""The bad-input matrix: every entry point against inputs it must refuse clearly, skip countably, or read right.

Each case names the entry point a user runs, builds the bad input in its own folder, and says what the
user must see:

- "error": a non-zero exit code and ONE line on stderr with "error:" that matches every pattern
  (the file or flag, and the problem); never a traceback;
- "skip": the run succeeds and its summary (stdout, stderr or log) counts and names what was skipped;
- "stopped": the summary names the file and the problem, and the run exits non-zero because a whole
  part of the input (a scene's table) could not be read;
- "works": the run succeeds and reads the input right (`check`);
- "fresh start": `--resume_from_checkpoint latest` with no checkpoint trains from step 0 and says so.

Finished outputs a builder lists in `keep` (earlier frames, checkpoints, filtered annotations) must be
byte for byte the same after the run: a bad input never costs work already done.
"""

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

import bad_inputs_cases as b

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    id: str
    entry: str
    build: Callable
    expect: str
    says: tuple[str, ...] = ()
    check: Optional[Callable] = None
    xfail: Optional[str] = None


DECODE_FAILURE = r"truncated|decoding failed|no frame"
NOT_SVD = r"not a Stable Video Diffusion pipeline folder"
NOT_IP2P = r"not a Stable Diffusion / InstructPix2Pix pipeline folder"
CASES = [
    # prepare_dataset.py: Genex-DB videos -> frame folders; a bad video is listed in the summary and the others go on.
    Case("prepare-mp4-truncated", "prepare_dataset.py", b.mp4_truncated, "skip",
         (r"realistic: 1 written .*1 skipped as already done, 1 failed", r"failed: realistic/video_00001 \({bad}\): .*(" + DECODE_FAILURE + ")")),
    Case("prepare-mp4-zero-frames", "prepare_dataset.py", b.mp4_zero_frames, "skip",
         (r"1 failed", r"failed: realistic/video_00001 \({bad}\): .*(" + DECODE_FAILURE + ")")),
    Case("prepare-mp4-is-an-image", "prepare_dataset.py", b.mp4_is_an_image, "skip",
         (r"1 failed", r"failed: realistic/video_00001 \({bad}\): .*an image")),
    Case("prepare-frames_per_video-beyond-video", "prepare_dataset.py", b.mp4_shorter_than_frames_per_video, "skip",
         (r"1 written \(1 short\)", r"short: realistic/video_00001 \({bad}\): 2 of 4 frames")),
    Case("prepare-parquet-row-truncated", "prepare_dataset.py", b.parquet_truncated_row, "skip",
         (r"1 written .*1 failed", r"failed: realistic/video_00002 \({bad}\): .*(" + DECODE_FAILURE + ")")),
    Case("prepare-parquet-without-video-column", "prepare_dataset.py", b.parquet_without_video_column, "stopped",
         (r"stopped reading this scene: {bad}: no 'video' column \(columns: mp4, caption\)", r"1 scene\(s\) stopped early")),
    Case("prepare-parquet-is-lfs-pointer", "prepare_dataset.py", b.parquet_is_lfs_pointer, "stopped",
         (r"stopped reading this scene: {bad}: not a readable parquet file .*git lfs pull",)),
    Case("prepare-csv-without-video-column", "prepare_dataset.py", b.csv_without_video_column, "stopped",
         (r"stopped reading this scene: {bad}: no 'video' column",)),
    Case("prepare-dataset-path-missing", "prepare_dataset.py", b.dataset_path_missing, "error", (r"{bad}", r"does not exist")),
    Case("prepare-no-scene-found", "prepare_dataset.py", b.no_scene_found, "error", (r"{bad}", r"none of the scene types realistic found", r"Cartoon")),

    # python -m pecn.dataset: SSv2 JSON; nothing is written unless every file is valid.
    Case("ssv2-labels-malformed-json", "pecn.dataset", b.filter_case(b.labels_malformed), "error", (r"{bad}", r"malformed JSON")),
    Case("ssv2-train-malformed-json", "pecn.dataset", b.filter_case(b.train_malformed), "error", (r"{bad}", r"malformed JSON")),
    Case("ssv2-validation-not-utf8", "pecn.dataset", b.filter_case(b.validation_not_utf8), "error", (r"{bad}", r"not UTF-8")),
    Case("ssv2-labels-is-a-list", "pecn.dataset", b.filter_case(b.labels_is_a_list), "error", (r"{bad}", r"expected an object")),
    Case("ssv2-train-is-a-dict", "pecn.dataset", b.filter_case(b.train_is_a_dict), "error", (r"{bad}", r"expected a list of entries, got dict")),
    Case("ssv2-entry-without-id", "pecn.dataset", b.filter_case(b.train_entry_without_id), "error", (r"{bad}", r"entry 3 lacks string field\(s\) id")),
    Case("ssv2-entry-without-template", "pecn.dataset", b.filter_case(b.validation_entry_without_template), "error",
         (r"{bad}", r"entry 0 lacks string field\(s\) template")),
    Case("ssv2-template-not-in-labels", "pecn.dataset", b.filter_case(b.template_not_in_labels), "error",
         (r"{bad}", r"template\(s\) not in the label map", r"cover_object: 'Covering something with something'")),
    Case("ssv2-labels-missing", "pecn.dataset", b.filter_case(b.labels_missing), "error", (r"{bad}", r"file not found")),

    # python -m pecn.video_loader: a bad webm is listed and its entry marked; the other videos are extracted.
    Case("ssv2-webm-truncated", "pecn.video_loader", b.loader_case(b.webm_truncated), "skip",
         (r"extracted 1, skipped 1 \(already done\), failed 1", r"failed {bad}: .*(" + DECODE_FAILURE + ")"), b.extract_error_marked),
    Case("ssv2-webm-zero-frames", "pecn.video_loader", b.loader_case(b.webm_zero_frames), "skip",
         (r"failed 1", r"failed {bad}: .*(" + DECODE_FAILURE + ")"), b.extract_error_marked),
    Case("ssv2-webm-is-an-image", "pecn.video_loader", b.loader_case(b.webm_is_an_image), "skip",
         (r"failed 1", r"failed {bad}: .*an image"), b.extract_error_marked),
    Case("ssv2-webm-missing", "pecn.video_loader", b.loader_case(b.webm_missing), "skip",
         (r"failed 1", r"failed {bad}: .*video file not found"), b.extract_error_marked),
    Case("ssv2-filtered-malformed-json", "pecn.video_loader", b.loader_annotations_broken('[{"id": "1"'), "error", (r"{bad}", r"malformed JSON")),
    Case("ssv2-filtered-entry-without-label", "pecn.video_loader", b.loader_annotations_broken('[{"id": "1", "template": "x"}]'), "error",
         (r"{bad}", r"entry 0 lacks string field\(s\) label")),

    # train_world_explorer.py: refused before the first step.
    Case("genex-num_frames-beyond-every-clip", "train_world_explorer.py", b.genex_flags("--num_frames=50"), "error",
         (r"{base}", r"no frame folder has num_frames=50", r"the longest.* has 6")),
    Case("genex-width-not-multiple", "train_world_explorer.py", b.genex_flags("--width=66"), "error", (r"--width 66", r"multiples of \d+")),
    Case("genex-height-not-multiple", "train_world_explorer.py", b.genex_flags("--height=30"), "error", (r"--height 30", r"multiples of \d+")),
    Case("genex-model-empty-folder", "train_world_explorer.py", b.genex_model(b.empty_folder), "error", (r"{model}", NOT_SVD)),
    Case("genex-model-missing", "train_world_explorer.py", b.genex_model(b.missing_folder), "error", (r"{model}", r"folder does not exist")),
    Case("genex-model-only-unet", "train_world_explorer.py", b.genex_model(b.svd_unet_only), "error", (r"{model}", NOT_SVD)),
    Case("genex-model-is-instruct-pix2pix", "train_world_explorer.py", b.genex_model(b.ip2p_folder), "error", (r"{model}", NOT_SVD)),
    Case("genex-model-is-checkpoint", "train_world_explorer.py", b.genex_model(b.checkpoint_folder), "error", (r"{model}", NOT_SVD)),
    Case("genex-unet-4-channels", "train_world_explorer.py", b.genex_model(b.svd_with_4_channel_unet), "error",
         (r"{model}", r"unet takes 4 input channels, SVD needs 2 x 4")),
    Case("genex-checkpoint-of-pecn-run", "train_world_explorer.py", b.genex_resume(b.ip2p_trainable, resume="latest"), "error",
         (r"{checkpoint}", r"trainable parameters do not match this run", r"another trainable set")),
    Case("genex-checkpoint-other-shapes", "train_world_explorer.py", b.genex_resume(lambda env: b.other_shape(b.svd_trainable(env))), "error",
         (r"{checkpoint}", r"has shape \(\d+.*\), the model expects")),
    Case("genex-resume-not-a-checkpoint", "train_world_explorer.py", b.genex_resume(b.svd_trainable, resume="checkpoint-7"), "error",
         (r"checkpoint-7", r"not a complete checkpoint folder")),
    Case("genex-resume-latest-none", "train_world_explorer.py", b.genex_fresh_start, "fresh start",
         (r"no checkpoint in {output} yet, starting a fresh run",), b.pipeline_saved),
    Case("genex-xformers-absent", "train_world_explorer.py", b.genex_flags("--enable_xformers_memory_efficient_attention"), "error",
         (r"--enable_xformers_memory_efficient_attention", r"xformers is not installed")),
    Case("genex-bitsandbytes-absent", "train_world_explorer.py", b.genex_flags("--use_8bit_adam"), "error",
         (r"--use_8bit_adam", r"needs bitsandbytes")),
    Case("genex-base-folder-missing", "train_world_explorer.py", b.genex_base(lambda tmp: tmp / "nowhere"), "error",
         (r"{base}", r"does not exist")),
    Case("genex-base-folder-without-images", "train_world_explorer.py", b.genex_base(b.base_without_images), "error",
         (r"{base}", r"no folder of frame images")),
    Case("genex-frame-unreadable", "train_world_explorer.py", b.genex_base(b.base_with_broken_frame, "--num_frames=6"), "error",
         (r"frame_0003\.png", r"cannot read image")),
    # What train_world_explorer.py reads from a frames folder.
    Case("genex-frames-gap-in-numbering", "train_world_explorer.py data", b.genex_base(b.base_with_gap), "skip",
         (r"gap",), b.no_window_across_gap),
    Case("genex-frames-with-other-files", "train_world_explorer.py data", b.genex_base(b.base_with_other_files), "works", (), b.only_images_read),
    *[Case(f"genex-frames-{mode}", "train_world_explorer.py data", b.genex_base(b.base_in_mode(mode)), "works", (), b.frames_in_colour(mode))
      for mode in b.COLOUR_MODES],

    # sample_world_explorer.py
    Case("sampler-genex-model-empty-folder", "sample_world_explorer.py", b.sample_model(b.empty_folder), "error", (r"{model}", NOT_SVD)),
    Case("sampler-genex-model-is-instruct-pix2pix", "sample_world_explorer.py", b.sample_model(b.ip2p_folder), "error", (r"{model}", NOT_SVD)),
    Case("sampler-genex-unet-4-channels", "sample_world_explorer.py", b.sample_model(b.svd_with_4_channel_unet), "error",
         (r"{model}", r"unet takes 4 input channels, SVD needs 2 x 4")),
    Case("sampler-genex-width-not-multiple", "sample_world_explorer.py", b.sample_flags("--width", "66"), "error", (r"--width 66", r"multiples of \d+")),
    Case("sampler-genex-panorama-missing", "sample_world_explorer.py", b.panorama_file(b.panorama_missing), "error", (r"{panorama}", r"cannot read image")),
    Case("sampler-genex-panorama-not-an-image", "sample_world_explorer.py", b.panorama_file(b.panorama_text), "error", (r"{panorama}", r"cannot read image")),
    *[Case(f"sampler-genex-panorama-{mode}", "sample_world_explorer.py", b.panorama_file(b.panorama_in_mode(mode)), "works", (r"Wrote 2 frames",), b.video_written)
      for mode in ("cmyk", "16bit-gray", "rgba", "grayscale")],

    # train_instruct_pix2pix.py: refused before the first step.
    Case("pecn-target-beyond-every-video", "train_instruct_pix2pix.py", b.pecn_flags("--target_frame_idx=500"), "error",
         (r"{annotation}", r"no pair of frames 20 -> 500", r"video shorter than 501 frames")),
    Case("pecn-target-beyond-some-videos", "train_instruct_pix2pix.py data", b.pecn_flags(), "skip",
         (r"{annotation}: \d+ pairs of frames 20 -> 21; skipped 2 video shorter than 22 frames",), b.skipped_short_videos),
    Case("pecn-model-empty-folder", "train_instruct_pix2pix.py", b.pecn_model(b.empty_folder), "error", (r"{model}", NOT_IP2P)),
    Case("pecn-model-missing", "train_instruct_pix2pix.py", b.pecn_model(b.missing_folder), "error", (r"{model}", r"folder does not exist")),
    Case("pecn-model-only-unet", "train_instruct_pix2pix.py", b.pecn_model(b.ip2p_unet_only), "error", (r"{model}", NOT_IP2P)),
    Case("pecn-model-is-svd", "train_instruct_pix2pix.py", b.pecn_model(b.svd_folder), "error", (r"{model}", NOT_IP2P)),
    Case("pecn-unet-5-channels", "train_instruct_pix2pix.py", b.pecn_model(b.ip2p_with_5_channel_unet), "error",
         (r"{model}", r"5 input channels", r"expected 4 .* or 8")),
    Case("pecn-unet-4-channels-grows", "train_instruct_pix2pix.py models", b.pecn_model(b.t2i_folder), "works", (), b.unet_has_8_channels),
    Case("pecn-checkpoint-of-genex-run", "train_instruct_pix2pix.py", b.pecn_resume(b.svd_trainable, resume="latest"), "error",
         (r"{checkpoint}", r"trainable parameters do not match this run")),
    Case("pecn-checkpoint-other-shapes", "train_instruct_pix2pix.py", b.pecn_resume(lambda env: b.other_shape(b.ip2p_trainable(env))), "error",
         (r"{checkpoint}", r"has shape \(\d+.*\), the model expects")),
    Case("pecn-resume-latest-none", "train_instruct_pix2pix.py", b.pecn_fresh_start, "fresh start",
         (r"no checkpoint in {output} yet, starting a fresh run",), b.pipeline_saved),
    Case("pecn-xformers-absent", "train_instruct_pix2pix.py", b.pecn_flags("--enable_xformers_memory_efficient_attention"), "error",
         (r"--enable_xformers_memory_efficient_attention", r"xformers is not installed")),
    Case("pecn-bitsandbytes-absent", "train_instruct_pix2pix.py", b.pecn_flags("--use_8bit_adam"), "error", (r"--use_8bit_adam", r"needs bitsandbytes")),
    Case("pecn-annotations-malformed-json", "train_instruct_pix2pix.py", b.pecn_annotations(text='[{"id": '), "error", (r"{annotation}", r"malformed JSON")),
    Case("pecn-annotations-wrong-schema", "train_instruct_pix2pix.py", b.pecn_annotations(text='{"id": "1"}'), "error",
         (r"{annotation}", r"expected a list of entries")),
    Case("pecn-annotations-without-num_frames", "train_instruct_pix2pix.py", b.pecn_annotations(b.without_num_frames), "error",
         (r"{annotation}", r"has no num_frames", r"pecn.video_loader")),
    Case("pecn-frames-folder-missing", "train_instruct_pix2pix.py", b.pecn_annotations(frames=False), "error", (r"{frames}", r"does not exist")),
    Case("pecn-frame-unreadable", "train_instruct_pix2pix.py data", b.pecn_frame_unreadable, "skip",
         (r"{bad}: cannot read image", r"skipped .*1 frame files unreadable")),
    Case("pecn-resolution-not-multiple-of-8", "train_instruct_pix2pix.py", b.pecn_odd_resolution, "works", (), b.pipeline_saved),
    *[Case(f"pecn-frames-{mode}", "train_instruct_pix2pix.py data", b.pecn_frames_in_mode(mode), "works", (), b.pair_in_colour(mode))
      for mode in b.COLOUR_MODES],

    # sample_from_pix2pix.py
    Case("sampler-pecn-model-empty-folder", "sample_from_pix2pix.py", b.sampler_model(b.empty_folder), "error",
         (r"{model}", r"not an InstructPix2Pix pipeline folder")),
    Case("sampler-pecn-model-is-checkpoint", "sample_from_pix2pix.py", b.sampler_model(b.checkpoint_folder), "error",
         (r"{model}", r"checkpoint-<step> folder is for resuming")),
    Case("sampler-pecn-model-is-svd", "sample_from_pix2pix.py", b.sampler_model(b.svd_folder), "error", (r"{model}", r"InstructPix2Pix")),
    Case("sampler-pecn-unet-4-channels", "sample_from_pix2pix.py", b.sampler_model(b.t2i_folder), "error", (r"{model}", r"UNet has 4 input channels")),
    Case("sampler-pecn-target-beyond-every-video", "sample_from_pix2pix.py", b.sampler_flags("--target_frame_idx", "500"), "error",
         (r"{annotation}", r"no pair of frames 20 -> 500")),
    Case("sampler-pecn-target-beyond-some-videos", "sample_from_pix2pix.py", b.sampler_flags(), "skip",
         (r"Videos of the annotation file with no pair: video shorter than 22 frames: 2",)),
    Case("sampler-pecn-annotations-malformed-json", "sample_from_pix2pix.py", b.sampler_annotation_text("[{"), "error", (r"{annotation}", r"malformed JSON")),
    *[Case(f"sampler-pecn-frames-{mode}", "sample_from_pix2pix.py", b.sampler_frames_in_mode(mode), "works", (), b.grid_input_in_colour(mode))
      for mode in ("16bit-gray", "rgba")],
]


def digest(paths) -> dict:
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return b.build_env(tmp_path_factory.mktemp("bad_inputs_env"))


def patterns(case: Case, built: b.Built) -> list[str]:
    return [pattern.format(**{k: re.escape(v) for k, v in built.names.items()}) for pattern in case.says]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []) for c in CASES])
def test_bad_input(case, env, tmp_path, capsys, caplog):
    built = case.build(tmp_path, env)
    before = digest(built.keep)
    outcome = b.run_entry(case.entry, built.argv, capsys, caplog)
    shown = outcome.out + outcome.err + outcome.log
    assert "Traceback" not in shown, shown[-3000:]
    if case.expect == "error":
        assert outcome.code != 0, shown[-3000:]
        lines = [line for line in outcome.err.splitlines() if "error:" in line]
        assert len(lines) == 1, outcome.err[-3000:]
        for pattern in patterns(case, built):
            assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    else:
        assert (outcome.code != 0) == (case.expect == "stopped"), shown[-3000:]
        for pattern in patterns(case, built):
            assert re.search(pattern, shown), f"{pattern!r} not in:\n{shown[-3000:]}"
    if case.check:
        case.check(built, outcome)
    assert digest(built.keep) == before, "a finished output changed"


def test_every_issue_case_is_in_the_matrix():
    """The issue's list, each kept in the table under a name that says which input it is."""
    ids = {case.id for case in CASES}
    required = [
        "prepare-mp4-truncated", "ssv2-webm-truncated", "prepare-mp4-zero-frames", "ssv2-webm-zero-frames", "prepare-mp4-is-an-image",
        "ssv2-webm-is-an-image", "prepare-parquet-without-video-column", "genex-frames-gap-in-numbering", "genex-frames-with-other-files",
        *[f"genex-frames-{mode}" for mode in ("cmyk", "16bit-gray", "rgba", "grayscale")], "genex-num_frames-beyond-every-clip",
        "genex-width-not-multiple", "ssv2-train-malformed-json", "ssv2-train-is-a-dict", "ssv2-template-not-in-labels",
        "pecn-target-beyond-every-video", "genex-model-empty-folder", "pecn-model-empty-folder", "genex-unet-4-channels", "pecn-unet-5-channels",
        "genex-checkpoint-of-pecn-run", "pecn-checkpoint-of-genex-run", "genex-resume-latest-none", "pecn-resume-latest-none",
        "genex-xformers-absent", "genex-bitsandbytes-absent", "pecn-xformers-absent", "pecn-bitsandbytes-absent",
    ]
    assert not [name for name in required if name not in ids]
    assert len(ids) == len(CASES)


@pytest.mark.parametrize("case_id", ["prepare-dataset-path-missing", "ssv2-train-is-a-dict", "sampler-genex-panorama-not-an-image"])
def test_a_shell_sees_what_the_matrix_sees(case_id, env, tmp_path, capsys, caplog):
    """The in-process runner shows what a user's shell shows: the same exit code and the same error line."""
    case = next(case for case in CASES if case.id == case_id)
    built = case.build(tmp_path, env)
    outcome = b.run_entry(case.entry, built.argv, capsys, caplog)
    shell = subprocess.run([sys.executable, *b.COMMANDS[case.entry], *built.argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert shell.returncode == outcome.code
    assert [line for line in shell.stderr.splitlines() if "error:" in line] == [line for line in outcome.err.splitlines() if "error:" in line]
    assert "Traceback" not in shell.stderr
