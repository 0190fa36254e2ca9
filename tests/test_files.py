"""common.files: the atomic folder writer and the worker pool that the extractors and checkpoints share."""

import errno
import json
import os
import signal
import tempfile

import pytest

from common.cli import SetupError
from common.files import DiskFullError, WorkerDied, WorkerPool, atomic_folder, check_output_dir, clean_staging_folders, staging_folder


def test_atomic_folder_appears_only_when_complete(tmp_path):
    final = tmp_path / "video_00001"
    with atomic_folder(final) as staging:
        (staging / "frame_0001.jpg").write_bytes(b"x")
        assert staging == staging_folder(final) and staging.name == ".video_00001.partial"
        assert not final.exists()
    assert (final / "frame_0001.jpg").read_bytes() == b"x" and not staging.exists()


def test_atomic_folder_removes_its_staging_on_error_and_keeps_the_old_folder(tmp_path):
    final = tmp_path / "checkpoint-2"
    final.mkdir()
    (final / "old").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(final, replace=True) as staging:
            (staging / "new").write_text("new")
            raise RuntimeError("killed")
    assert not staging_folder(final).exists() and (final / "old").read_text() == "old"


def test_atomic_folder_replace_swaps_and_refuses_without_it(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_folder(final) as staging:
            (staging / "new").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["old"]
    with atomic_folder(final, replace=True) as staging:
        (staging / "new").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_folder_full_disk_names_the_staging_folder(tmp_path):
    final = tmp_path / "video_00003"
    with pytest.raises(DiskFullError) as raised:
        with atomic_folder(final):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(staging_folder(final)) in str(raised.value) and not staging_folder(final).exists()


def test_a_killed_runs_staging_folder_is_replaced_and_cleaned(tmp_path):
    stale = staging_folder(tmp_path / "video_00001")
    stale.mkdir()
    (stale / "half.jpg").write_bytes(b"half")
    with atomic_folder(tmp_path / "video_00001") as staging:
        assert list(staging.iterdir()) == []
    staging_folder(tmp_path / "video_00002").mkdir()
    staging_folder(tmp_path / "other").mkdir()
    assert clean_staging_folders(tmp_path, "video_*") == 1
    assert staging_folder(tmp_path / "other").exists()


def square(x):
    return x * x


def die_on(x, victim):
    if x == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def jobs_then_error(count):
    for x in range(count):
        yield (x,)
    raise ValueError("table unreadable")


@pytest.mark.parametrize("num_workers", [1, 2])
def test_pool_runs_every_job(num_workers):
    with WorkerPool(num_workers) as pool:
        results = dict((job[0], result) for job, result in pool.run(square, ((x,) for x in range(7))))
    assert results == {x: x * x for x in range(7)}


def test_a_dead_worker_fails_only_its_jobs_and_the_pool_goes_on():
    with WorkerPool(2) as pool:
        first = dict((job[0], result) for job, result in pool.run(die_on, [(x, 3) for x in range(6)]))
        assert isinstance(first[3], WorkerDied)
        # The pool replaced itself: the next run completes.
        again = dict((job[0], result) for job, result in pool.run(square, [(x,) for x in range(4)]))
    assert again == {0: 0, 1: 1, 2: 4, 3: 9}
    assert all(first[x] == x for x in first if not isinstance(first[x], WorkerDied))


@pytest.mark.parametrize("num_workers", [1, 2])
def test_an_error_reading_the_jobs_comes_after_the_jobs_in_flight(num_workers):
    seen = []
    with pytest.raises(ValueError, match="table unreadable"):
        with WorkerPool(num_workers) as pool:
            for job, result in pool.run(square, jobs_then_error(3)):
                seen.append(result)
    assert sorted(seen) == [0, 1, 4]


def test_an_error_inside_a_job_passes_on():
    with pytest.raises(ZeroDivisionError):
        with WorkerPool(2) as pool:
            list(pool.run(divmod, [(1, 1), (1, 0)]))


def earlier_run(folder, script="evaluate.py"):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"script": script, "overall": {}}))
    (folder / "old.mp4").write_bytes(b"old")
    return folder


def test_output_dir_missing_or_empty_is_taken(tmp_path):
    assert check_output_dir(tmp_path / "new" / "results", "evaluate.py", overwrite=False) is False
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", "evaluate.py", overwrite=False) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_earlier_run_is_refused_without_overwrite_and_replaced_whole_with_it(tmp_path):
    folder = earlier_run(tmp_path / "out")
    with pytest.raises(SetupError, match="holds an earlier run of evaluate.py .*--overwrite_output_dir"):
        check_output_dir(folder, "evaluate.py", overwrite=False)
    replace = check_output_dir(folder, "evaluate.py", overwrite=True)
    assert replace is True and (folder / "old.mp4").exists()
    with atomic_folder(folder, replace=replace) as staging:
        (staging / "results.json").write_text("{}")
        assert (folder / "old.mp4").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["results.json"]


@pytest.mark.parametrize("contents", ["another script", "foreign files", "broken results"])
def test_a_folder_that_is_not_our_run_is_always_refused(tmp_path, contents):
    if contents == "another script":
        folder = earlier_run(tmp_path / "out", script="sample_from_pix2pix.py")
    else:
        folder = tmp_path / "out"
        folder.mkdir()
        (folder / "thesis.tex").write_text("mine")
        if contents == "broken results":
            (folder / "results.json").write_text("{not json")
    for overwrite in (False, True):
        with pytest.raises(SetupError, match=r"not a run of evaluate.py \(.*\); choose another folder") as raised:
            check_output_dir(folder, "evaluate.py", overwrite=overwrite)
        assert str(folder) in str(raised.value)
    assert (folder / ("old.mp4" if contents == "another script" else "thesis.tex")).exists()


def test_output_dir_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SetupError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "a_file", "evaluate.py", overwrite=False)
    with pytest.raises(SetupError, match="cannot be made, .*a_file is a file"):
        check_output_dir(tmp_path / "a_file" / "out", "evaluate.py", overwrite=False)

    def read_only(**kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(SetupError, match=r"cannot be written \(.*Permission denied\)"):
        check_output_dir(tmp_path / "out", "evaluate.py", overwrite=False)
