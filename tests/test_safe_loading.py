"""Safe loading: checkpoints are read as safetensors or with torch.load(weights_only=True); no remote code."""

import re
from pathlib import Path

import pytest
import torch

from common.checkpoints import CheckpointError, load_checkpoint, register_trainable_weights_hooks, save_checkpoint
from conftest import REPO_ROOT

UNSAFE = {
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only=True)"),
    "trust_remote_code": re.compile(r"trust_remote_code"),
    "pickle.load": re.compile(r"pickle\.loads?\("),
    "numpy allow_pickle": re.compile(r"allow_pickle\s*=\s*True"),
}


def project_sources():
    return [p for p in REPO_ROOT.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(REPO_ROOT).parts) and p.name != Path(__file__).name]


@pytest.mark.parametrize("what", sorted(UNSAFE))
def test_no_unsafe_loading_in_the_code(what):
    hits = [f"{p.relative_to(REPO_ROOT)}:{n}" for p in project_sources() for n, line in enumerate(p.read_text().splitlines(), 1) if UNSAFE[what].search(line)]
    assert not hits, f"{what} at {hits}"


class Evil:
    """A pickle that would write a file when unpickled without weights_only."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "code ran"))


@pytest.fixture
def checkpoint(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    register_trainable_weights_hooks(accelerator)
    generator = torch.Generator().manual_seed(0)
    folder = save_checkpoint(accelerator, tmp_path, 3, None, generator=generator)
    return accelerator, folder, generator


def test_resume_reads_every_pickle_with_weights_only(checkpoint, monkeypatch):
    accelerator, folder, generator = checkpoint
    calls = []
    original = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    assert load_checkpoint(accelerator, folder, generator=generator) == 3
    assert calls and all(weights_only is True for weights_only in calls), calls


def test_a_checkpoint_holding_code_is_refused_without_running_it(checkpoint, tmp_path):
    accelerator, folder, generator = checkpoint
    target = tmp_path / "pwned"
    torch.save(Evil(target), folder / "optimizer.bin")
    with pytest.raises(CheckpointError, match=r"optimizer\.bin: not plain weights"):
        load_checkpoint(accelerator, folder, generator=generator)
    assert not target.exists()
