"""Data preparation survives a kill and a full disk: the rerun ends with exactly the output of an uninterrupted run."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import genex.prepare as prepare
import prepare_dataset
from common import files
from common.files import DiskFullError, write_file, write_json_atomic
from conftest import REPO_ROOT
from genex.synthetic import write_genex_db
from pecn import dataset, video_loader
from pecn.synthetic import write_synthetic_ssv2

GENEX_ARGS = ["--scene_types", "realistic", "--frames_per_video", "8", "--image_size", "256", "128", "--quiet"]
PECN_SIZES = ["--sizes", "128x128", "96x96"]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills process groups and reads /proc")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`: relative path -> bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def identities(folders: list[Path]) -> dict[str, tuple[int, int]]:
    """Inode and modification time of every file in `folders`: a rewritten file changes them."""
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for folder in folders for p in folder.iterdir()}


def partials(root: Path) -> list[Path]:
    return list(root.rglob("*.partial"))


def live_group_members(group: int) -> list[int]:
    """Processes of a process group that are not yet dead (zombies count as dead)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def kill_mid_video(command: list[str], output_root: Path, finished_folders) -> dict[str, tuple[int, int]]:
    """Run `command`, SIGKILL its main process while a video is half-written; return the files finished by then.

    The run is frozen (SIGSTOP to its group) before the state is checked, so the kill lands in exactly the
    state seen: at least one finished video and a `.partial` folder holding frames. Only the main process is
    killed, as `kill -9 <pid>` does; its worker processes must die with it, or they would write on.
    """
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def mid_video() -> bool:
        try:
            return bool(finished_folders()) and any(any(p.iterdir()) for p in partials(output_root))
        except FileNotFoundError:
            return False  # a folder renamed between two looks: look again

    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if mid_video():
            os.killpg(process.pid, signal.SIGSTOP)
            if mid_video():
                finished = identities(finished_folders())
                process.kill()
                process.wait()
                gone_by = time.monotonic() + 10
                while live_group_members(process.pid) and time.monotonic() < gone_by:
                    time.sleep(0.01)
                assert not live_group_members(process.pid), "worker processes outlived the killed run"
                return finished
            os.killpg(process.pid, signal.SIGCONT)
        time.sleep(0.002)
    process.kill()
    pytest.fail(f"the run ended before it could be killed mid-video: {process.communicate()[1].decode()[-2000:]}")


def run_ok(command: list[str]) -> str:
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


# ----------------------------------------------------------------------------- Genex-DB: prepare_dataset.py


@pytest.fixture(scope="module")
def genex_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("genex_db")
    write_genex_db(root, "folder", ["realistic"], videos_per_scene=10, num_frames=16, width=128, height=64)
    return root


def genex_command(dataset_path: Path, output: Path, workers: int = 2) -> list[str]:
    return [sys.executable, "prepare_dataset.py", "--dataset_path", str(dataset_path), "--output_dir", str(output), "--num_workers", str(workers), *GENEX_ARGS]


@pytest.fixture(scope="module")
def genex_reference(genex_db, tmp_path_factory):
    output = tmp_path_factory.mktemp("genex_a")
    run_ok(genex_command(genex_db, output))
    assert len(list((output / "realistic").iterdir())) == 10
    return tree(output)


def test_prepare_dataset_killed_mid_video_then_rerun_equals_an_uninterrupted_run(genex_db, genex_reference, tmp_path):
    output = tmp_path / "b"

    def finished_folders() -> list[Path]:
        scene = output / "realistic"
        return [p for p in scene.iterdir() if p.name.startswith("video_")] if scene.is_dir() else []

    finished = kill_mid_video(genex_command(genex_db, output), output, finished_folders)
    assert partials(output) and tree(output) != genex_reference

    stdout = run_ok(genex_command(genex_db, output))
    assert tree(output) == genex_reference and not partials(output)
    # Videos finished before the kill are kept, not redone.
    done_before = len({Path(p).parent for p in finished})
    assert f"{done_before} skipped as already done" in stdout
    assert identities(sorted({Path(p).parent for p in finished})) == finished


def full_disk_after(writes: int, real_write):
    """A writer that writes `writes` files and then fails as a full disk does."""
    count = [0]

    def write(path, data):
        count[0] += 1
        if count[0] > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data)

    return write


def test_prepare_dataset_full_disk_is_one_error_and_the_rerun_completes(genex_db, genex_reference, tmp_path, monkeypatch, capsys):
    output = tmp_path / "b"
    argv = ["--dataset_path", str(genex_db), "--output_dir", str(output), "--num_workers", "1", *GENEX_ARGS]
    # Two whole videos fit, the third fills the disk.
    monkeypatch.setattr(prepare, "write_file", full_disk_after(2 * 8 + 3, write_file))
    assert prepare_dataset.main(argv) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("error: ") and "no space left on device" in line and str(output / "realistic") in line
    assert "Traceback" not in captured.err and "failed" not in captured.out
    # Only whole videos look finished, and they are exactly the uninterrupted run's.
    written = tree(output)
    assert not partials(output) and {p.split("/")[1] for p in written} == {"video_00001", "video_00002"}
    assert all(genex_reference[p] == data for p, data in written.items())

    monkeypatch.undo()
    assert prepare_dataset.main(argv) == 0
    assert "2 skipped as already done" in capsys.readouterr().out
    assert tree(output) == genex_reference


# ----------------------------------------------------------------------------- SSv2: python -m pecn.video_loader


@pytest.fixture(scope="module")
def ssv2_root(tmp_path_factory):
    """A filtered synthetic SSv2 (12 videos), ready for frame extraction."""
    root = tmp_path_factory.mktemp("ssv2")
    write_synthetic_ssv2(root, train_per_class=1, val_per_class=1, test_videos=0, num_frames=24, width=64, height=48, short_videos=0)
    dataset.main(["--data_root", str(root), "--train_per_task", "3", "--val_per_task", "2"])
    return root


def pecn_command(data_root: Path, workers: int = 2) -> list[str]:
    return [sys.executable, "-m", "pecn.video_loader", "--data_root", str(data_root), *PECN_SIZES, "--num_workers", str(workers)]


@pytest.fixture(scope="module")
def pecn_reference(ssv2_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("pecn_a") / "sthv2"
    shutil.copytree(ssv2_root, root)
    run_ok(pecn_command(root))
    reference = tree(root)
    num_videos = sum(len(json.loads(reference[f"annotations/{name}"])) for name in ("train_filtered.json", "val_filtered.json"))
    assert num_videos == 12 and sum(p.startswith("frames_128x128/") for p in reference) == num_videos * 24
    return reference


def pecn_finished(root: Path):
    def finished_folders() -> list[Path]:
        return [p for size in ("128x128", "96x96") if (root / f"frames_{size}").is_dir() for p in (root / f"frames_{size}").iterdir() if not p.name.startswith(".")]

    return finished_folders


def test_video_loader_killed_mid_video_then_rerun_equals_an_uninterrupted_run(ssv2_root, pecn_reference, tmp_path):
    root = tmp_path / "sthv2"
    shutil.copytree(ssv2_root, root)
    finished = kill_mid_video(pecn_command(root), root, pecn_finished(root))
    assert partials(root) and tree(root) != pecn_reference
    # What a kill inside write_json_atomic leaves: the old file whole, and its temporary copy.
    (root / "annotations" / ".train_filtered.json.k1ll3d.tmp").write_text('[{"id": "1", "lab')

    stdout = run_ok(pecn_command(root))
    assert tree(root) == pecn_reference and not partials(root)
    folders = sorted({Path(p).parent for p in finished})
    assert identities(folders) == finished
    # A video counts as skipped only when both of its sizes were finished before the kill.
    both = {f.name for f in folders if f.parent.name == "frames_128x128"} & {f.name for f in folders if f.parent.name == "frames_96x96"}
    assert f"skipped {len(both)} (already done)" in stdout


def test_video_loader_full_disk_is_one_error_leaving_annotations_untouched(ssv2_root, pecn_reference, tmp_path, monkeypatch):
    root = tmp_path / "sthv2"
    shutil.copytree(ssv2_root, root)
    annotations_before = tree(root / "annotations")
    argv = ["--data_root", str(root), *PECN_SIZES, "--num_workers", "1"]
    # Three videos fit (24 frames at two sizes each), the fourth fills the disk.
    monkeypatch.setattr(video_loader, "write_file", full_disk_after(3 * 48 + 5, write_file))
    with pytest.raises(SystemExit) as exit_info:
        video_loader.main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message and "no space left on device" in message and str(root / "frames_") in message
    # No video was marked bad for the disk's sake, and only whole videos look finished.
    assert tree(root / "annotations") == annotations_before
    assert not partials(root)
    written = {p: data for p, data in tree(root).items() if p.startswith("frames_")}
    assert len({p.rsplit("/", 1)[0] for p in written}) == 2 * 3 and all(pecn_reference[p] == data for p, data in written.items())

    monkeypatch.undo()
    video_loader.main(argv)
    assert tree(root) == pecn_reference


def test_video_loader_full_disk_while_writing_annotations_keeps_them_whole(ssv2_root, pecn_reference, tmp_path, monkeypatch):
    root = tmp_path / "sthv2"
    shutil.copytree(ssv2_root, root)
    annotations_before = tree(root / "annotations")

    def full_disk_fsync(handle):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # A filesystem may report the lack of space only when the data is flushed.
    monkeypatch.setattr(files.os, "fsync", full_disk_fsync)
    with pytest.raises(SystemExit, match=r"^error: .*train_filtered\.json: no space left on device"):
        video_loader.main(["--data_root", str(root), *PECN_SIZES, "--num_workers", "1"])
    assert tree(root / "annotations") == annotations_before
    monkeypatch.undo()
    video_loader.main(["--data_root", str(root), *PECN_SIZES, "--num_workers", "1"])
    assert tree(root) == pecn_reference


# ----------------------------------------------------------------------------- the atomic writer


def test_write_atomic_flushes_the_data_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda handle: events.append(("fsync", os.path.isdir(f"/proc/self/fd/{handle}"))) or real_fsync(handle))
    monkeypatch.setattr(files.os, "replace", lambda src, dst: events.append(("replace", Path(dst).name)) or real_replace(src, dst))
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    # The file's data reaches the disk before the rename makes it visible; then the folder's entry does.
    assert events == [("fsync", False), ("replace", "a.json"), ("fsync", True)]
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1} and os.listdir(tmp_path) == ["a.json"]


def test_full_disk_errors_name_the_file():
    # /dev/full answers every write with ENOSPC, as a full disk does.
    with pytest.raises(DiskFullError, match="^/dev/full: no space left on device"):
        write_file("/dev/full", b"frame")
    assert str(files.naming_path(OSError("disk full"), "/out/a.json")) == "/out/a.json: disk full"
