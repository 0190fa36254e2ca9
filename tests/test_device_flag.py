"""--device: each command that takes it refuses CUDA on a machine without it in one usage line, before any model loads."""

import argparse

import pytest
import torch

import evaluate_world_explorer
import sample_from_pix2pix
import sample_world_explorer
from common.cli import resolve_device
from pecn import denoising

COMMANDS = {
    "sample_from_pix2pix.py": (sample_from_pix2pix, []),
    "evaluate_world_explorer.py": (evaluate_world_explorer, ["--model_dir", "no_model", "--base_folder", "no_frames"]),
    "sample_world_explorer.py": (sample_world_explorer, ["--model_dir", "no_model", "--panorama", "no.png", "--output", "no.mp4"]),
    "pecn.denoising": (denoising, ["--model_dir", "no_model", "--frames_dir", "no_frames", "--val_annotations", "no.json"]),
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("command", COMMANDS)
def test_cuda_is_refused_where_there_is_none(command, capsys):
    module, argv = COMMANDS[command]
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args([*argv, "--device", "cuda:0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("error: --device cuda:0: CUDA is not available on this machine (use --device cpu)")


@pytest.mark.parametrize("available, given, expected", [(False, None, "cpu"), (True, None, "cuda"), (True, "cpu", "cpu"), (True, "cuda:1", "cuda:1")])
def test_resolve_device(available, given, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert resolve_device(argparse.ArgumentParser(), given) == expected
