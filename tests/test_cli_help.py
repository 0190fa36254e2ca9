"""Every command a user types answers --help (argparse help strings are %-formatted: a stray % breaks them)."""

import subprocess
import sys

import pytest

from conftest import REPO_ROOT

COMMANDS = [
    ["prepare_dataset.py"], ["train_world_explorer.py"], ["sample_world_explorer.py"], ["evaluate_world_explorer.py"],
    ["train_instruct_pix2pix.py"], ["sample_from_pix2pix.py"],
    ["-m", "genex.synthetic"], ["-m", "genex.tiny"], ["-m", "genex.cache_latents"],
    ["-m", "bench.data_stages"], ["-m", "bench.train_step"],
    ["-m", "pecn.dataset"], ["-m", "pecn.video_loader"], ["-m", "pecn.synthetic"], ["-m", "pecn.tiny"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[-1])
def test_help(command):
    result = subprocess.run([sys.executable, *command, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout and "--" in result.stdout
