"""The bad-input matrix as a whole: the issue's cases are all in it, and the in-process runner shows what a shell shows.

The cases sit in one file per entry point (tests/test_bad_inputs_<entry>.py); the rules: tests/bad_inputs_support.py.
"""

import os
import subprocess
import sys

import pytest

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
    ]
    assert not [name for name in required if name not in ids]
    assert len(ids) == len(CASES)
    assert not [(file.__name__, case.id) for file in FILES for case in file.CASES if case.entry.split()[0] != file.ENTRY]


@pytest.mark.parametrize("case_id", ["prepare-dataset-path-missing", "ssv2-train-is-a-dict", "sampler-genex-panorama-not-an-image"])
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
