"""The bad-input matrix as a whole: the issue's cases are all in it, and the in-process runner shows what a shell shows.

The cases sit in one file per entry point (tests/test_bad_inputs_<entry>.py); the rules: tests/bad_inputs_support.py.
"""

import os
import re
import subprocess
import sys

import pytest
import torch

import test_bad_inputs_genex_sample
import test_bad_inputs_genex_train
import test_bad_inputs_pecn_sample
import test_bad_inputs_pecn_train
import test_bad_inputs_prepare
import test_bad_inputs_ssv2_extract
import test_bad_inputs_ssv2_filter
from bad_inputs_support import COMMANDS, run_entry
from conftest import REPO_ROOT

FILES = [test_bad_inputs_prepare, test_bad_inputs_ssv2_filter, test_bad_inputs_ssv2_extract, test_bad_inputs_genex_train,
         test_bad_inputs_genex_sample, test_bad_inputs_pecn_train, test_bad_inputs_pecn_sample]
CASES = [case for file in FILES for case in file.CASES]


def test_every_issue_case_is_in_the_matrix():
    """The issue's list, each kept in the table under a name that says which input it is, in the file of its entry point."""
    ids = {case.id for case in CASES}
    required = [
        "prepare-mp4-truncated", "ssv2-webm-truncated", "prepare-mp4-zero-frames", "ssv2-webm-zero-frames", "prepare-mp4-is-an-image",
        "ssv2-webm-is-an-image", "prepare-parquet-without-video-column", "genex-frames-gap-in-numbering", "genex-frames-with-other-files",
        *[f"genex-frames-{mode}" for mode in ("cmyk", "16bit-gray", "rgba", "grayscale")], "genex-num_frames-beyond-every-clip",
        "genex-width-not-multiple", "ssv2-train-malformed-json", "ssv2-train-is-a-dict", "ssv2-template-not-in-labels",
        "pecn-target-beyond-every-video", "genex-model-empty-folder", "pecn-model-empty-folder", "genex-unet-4-channels", "pecn-unet-5-channels",
        "genex-checkpoint-of-pecn-run", "pecn-checkpoint-of-genex-run", "genex-resume-latest-none", "pecn-resume-latest-none",
        "genex-xformers-absent", "genex-bitsandbytes-absent", "pecn-xformers-absent", "pecn-bitsandbytes-absent",
        # Runs repeated into the same folder, mistakes caught before the first step, the one-table layout (issue 14).
        "genex-rerun-into-same-folder", "pecn-rerun-into-same-folder", "genex-output-holds-earlier-run", "pecn-output-holds-earlier-run",
        "genex-overwrite-output-dir", "pecn-overwrite-output-dir", "genex-rotation-keeps-this-runs-checkpoints",
        "prepare-rerun-other-frames_per_video", "prepare-rerun-other-image_size", "prepare-rerun-redo-other-settings", "prepare-rerun-same-settings",
        "ssv2-frames-folder-unwritable", "ssv2-extract-videos-folder-holds-none", "ssv2-filter-videos-folder-holds-none",
        "genex-validation-image-broken", "pecn-validation-frame-broken", "genex-checkpointing_steps-0", "genex-validation_steps-0",
        "pecn-checkpointing_steps-0", "pecn-validation_epochs-0", "genex-fp16-on-cpu", "pecn-fp16-on-cpu", "genex-wandb-not-logged-in",
        "pecn-wandb-not-logged-in", "genex-wandb-offline-not-logged-in", "genex-output-unwritable", "pecn-output-unwritable",
        "sampler-genex-output-unwritable", "genex-lr-warmup-with-constant",
        *[f"{pipeline}-checkpoint-{damage}" for pipeline in ("genex", "pecn")
          for damage in ("cut-safetensors", "cut-optimizer", "empty-scheduler", "garbage-training-state")],
        "genex-processes-not-connected", "pecn-processes-not-connected", "sampler-genex-defaults-to-trained-settings",
        "prepare-labelled-table", "prepare-labelled-table-rerun", "prepare-labelled-table-rerun-other-frames_per_video",
    ]
    assert not [name for name in required if name not in ids]
    assert len(ids) == len(CASES)
    assert not [(file.__name__, case.id) for file in FILES for case in file.CASES if case.entry.split()[0] != file.ENTRY]


@pytest.mark.parametrize("case_id", ["prepare-dataset-path-missing", "ssv2-train-is-a-dict", "sampler-genex-panorama-not-an-image",
                                     "genex-output-holds-earlier-run", "prepare-rerun-other-frames_per_video"])
def test_a_shell_sees_what_the_matrix_sees(case_id, matrix_env, tmp_path, capsys, caplog):
    """The in-process runner shows what a user's shell shows: the same exit code and the same error line."""
    case = next(case for case in CASES if case.id == case_id)
    built = case.build(tmp_path, matrix_env)
    outcome = run_entry(case.entry, built.argv, capsys, caplog)
    shell = subprocess.run([sys.executable, *COMMANDS[case.entry], *built.argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert shell.returncode == outcome.code
    assert [line for line in shell.stderr.splitlines() if "error:" in line] == [line for line in outcome.err.splitlines() if "error:" in line]
    assert "Traceback" not in shell.stderr


def script_output(launcher_stderr: str) -> str:
    """What the launched script wrote, without accelerate's own report of the failed process that follows it: from 1.16 that
    report repeats the end of the script's stderr (as the RuntimeError its traceback is chained to)."""
    lines = launcher_stderr.splitlines()
    report = next((index for index, line in enumerate(lines) if line.startswith(("Traceback (most recent call last):", "RuntimeError: "))), len(lines))
    return "\n".join(lines[:report])


@pytest.mark.parametrize("launch", [["--config_file", "accelerate_config.yaml"], ["--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no"]],
                         ids=["readme-config", "one-process"])
def test_under_accelerate_launch_the_error_is_one_line_and_accelerate_exits_1(launch, matrix_env, tmp_path):
    """The README's `accelerate launch --config_file accelerate_config.yaml` (multi-GPU, 2 processes) on a machine without GPUs is
    refused in one line and trains nothing; a refused flag under a one-process launch is the same one line. The script exits 2;
    accelerate launch reports the failed process itself and exits 1, as the README says."""
    if launch[0] == "--config_file" and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs the config asks for")
    from test_bad_inputs_genex_train import genex_argv

    output = tmp_path / "run"
    argv = genex_argv(matrix_env, output, *(["--checkpointing_steps=0"] if launch[0] != "--config_file" else []))
    shell = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *launch, "train_world_explorer.py", *argv], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    errors = [line for line in script_output(shell.stderr).splitlines() if line.startswith("error:")]
    expected = "not connected" if launch[0] == "--config_file" else "--checkpointing_steps must be at least 1"
    assert shell.returncode == 1, shell.stderr[-3000:]
    assert len(errors) == 1 and expected in errors[0], shell.stderr[-3000:]
    assert not list(output.glob("checkpoint-*")) and not (output / "model_index.json").exists()


def test_the_readme_reliability_table_counts_the_matrix():
    """The README's table of the matrix says how many cases there are of each kind: it must match the cases."""
    row = next(line for line in (REPO_ROOT / "README.md").read_text().splitlines() if re.match(r"\s*\| \d+ \| \d+ of \d+ \|", line))
    cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
    kinds = ["error", "skip", "stopped", "works", "fresh start"]
    counts = {kind: sum(case.expect == kind for case in CASES) for kind in kinds}
    assert int(cells[0]) == len(CASES) == sum(counts.values())
    assert cells[1:6] == [f"{counts[kind]} of {counts[kind]}" for kind in kinds]
