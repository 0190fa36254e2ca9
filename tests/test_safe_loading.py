"""Safe loading: checkpoints are read as safetensors or with torch.load(weights_only=True); no remote code. A damaged
checkpoint is one CheckpointError naming the file and the previous checkpoint; rotation keeps to the run's own checkpoints."""

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from common.checkpoints import (CheckpointError, check_checkpoint, list_checkpoints, load_checkpoint, register_trainable_weights_hooks,
                                save_checkpoint)
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


def test_rotation_removes_only_the_runs_own_checkpoints(checkpoint, tmp_path):
    """A higher-numbered checkpoint of another run is neither counted nor removed; the run keeps its own newest ones."""
    accelerator, folder, generator = checkpoint
    shutil.copytree(folder, tmp_path / "checkpoint-9")
    (tmp_path / "checkpoint-9" / "training_state.json").write_text(json.dumps({"global_step": 9, "run_id": "another run"}))
    for step in (4, 5, 6):
        save_checkpoint(accelerator, tmp_path, step, 2, generator=generator, run_id="this run")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-5", "checkpoint-6", "checkpoint-9"]
    assert json.loads((tmp_path / "checkpoint-6" / "training_state.json").read_text()) == {"global_step": 6, "run_id": "this run"}
    # checkpoint-3 was written without a run id (None): it is a run of its own too.
    save_checkpoint(accelerator, tmp_path, 7, 1, generator=generator, run_id=None)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-6", "checkpoint-7", "checkpoint-9"]


def corrupt_inside(path: Path) -> None:
    """Bytes damaged inside a zip member: the archive's index still reads, its data does not."""
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.compress_size)
    data = bytearray(path.read_bytes())
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)
    data[start : start + 64] = bytes(64)
    path.write_bytes(bytes(data))


DAMAGE = {
    "cut-weights": ("0_trainable_weights.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-7]), r"cut short or damaged"),
    "cut-optimizer": ("optimizer.bin", lambda p: p.write_bytes(p.read_bytes()[:100]), r"cut short or damaged"),
    "empty-scheduler": ("scheduler.bin", lambda p: p.write_bytes(b""), r"is empty"),
    "garbage-state": ("training_state.json", lambda p: p.write_text("not json"), r"not readable JSON"),
    "state-without-step": ("training_state.json", lambda p: p.write_text('{"step": 3}'), r'holds no "global_step"'),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_refused_before_loading_naming_the_file_and_the_previous_one(checkpoint, tmp_path, damage):
    accelerator, folder, generator = checkpoint
    shutil.copytree(folder, tmp_path / "checkpoint-1")
    name, spoil, says = DAMAGE[damage]
    spoil(folder / name)
    with pytest.raises(CheckpointError, match=re.escape(str(folder / name)) + ": " + says + r".*--resume_from_checkpoint .*checkpoint-1$"):
        check_checkpoint(folder)
    check_checkpoint(tmp_path / "checkpoint-1")


def test_damage_only_a_full_read_finds_is_named_at_load(checkpoint, tmp_path):
    """Damage inside optimizer.bin passes the cheap check; loading it fails, and the error names that file, not a traceback."""
    accelerator, folder, generator = checkpoint
    corrupt_inside(folder / "optimizer.bin")
    check_checkpoint(folder)
    with pytest.raises(CheckpointError, match=re.escape(str(folder / "optimizer.bin")) + r": cannot be read .*no earlier checkpoint"):
        load_checkpoint(accelerator, folder, generator=generator)
