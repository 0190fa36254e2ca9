"""Every command a user types answers --help (argparse help strings are %-formatted: a stray % breaks them).

Each command runs as `python <script> --help` / `python -m <module> --help` would run it, in this process (runpy, as
__main__, with its own sys.argv): a fresh interpreter per command would spend ~9 s importing torch and diffusers again.
One command also runs as a real subprocess, the way users type it.
"""

import runpy
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

COMMANDS = [
    ["prepare_dataset.py"], ["train_world_explorer.py"], ["sample_world_explorer.py"], ["evaluate_world_explorer.py"],
    ["train_instruct_pix2pix.py"], ["sample_from_pix2pix.py"],
    ["-m", "genex.synthetic"], ["-m", "genex.tiny"], ["-m", "genex.cache_latents"],
    ["-m", "bench.data_stages"], ["-m", "bench.train_step"],
    ["-m", "pecn.dataset"], ["-m", "pecn.video_loader"], ["-m", "pecn.synthetic"], ["-m", "pecn.tiny"], ["-m", "pecn.denoising"],
]


# runpy warns that a module it runs was imported before (by another command's run): the module is run afresh all the same.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[-1])
def test_help(command, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", [command[-1], "--help"])
    with pytest.raises(SystemExit) as exit_info:
        if command[0] == "-m":
            runpy.run_module(command[1], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(REPO_ROOT / command[0]), run_name="__main__")
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "usage:" in out and "--" in out


def test_help_as_a_user_types_it():
    result = subprocess.run([sys.executable, "train_world_explorer.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: train_world_explorer.py" in result.stdout and "--scl_num_frames" in result.stdout
