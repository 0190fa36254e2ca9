"""The synthetic data generators' command lines (run as `python -m`, so through run_cli): a bad output path or count is one line
naming it, exit code 2, nothing written."""

import subprocess
import sys

import pytest

from conftest import REPO_ROOT, one_line_error
from pecn import synthetic as pecn_synthetic


def run_module(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["genex.synthetic", "pecn.synthetic"])
def test_an_output_dir_under_a_file_is_one_line_naming_it(tmp_path, module):
    (tmp_path / "a_file").write_text("x")
    result = run_module(module, "--output_dir", str(tmp_path / "a_file" / "data"))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "Not a directory" in lines[0] and str(tmp_path / "a_file" / "data") in lines[0]


def test_pecn_synthetic_refuses_zero_frames_before_writing(tmp_path, capsys):
    message = one_line_error(pecn_synthetic.main, ["--output_dir", str(tmp_path / "data"), "--num_frames", "0"], capsys)
    assert message == "error: need num_frames >= 1 and no negative count, got 0 frames, 4 train and 2 validation per class, 4 test and 2 short videos"
    assert not (tmp_path / "data").exists()
