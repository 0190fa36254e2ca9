"""common.files: the atomic folder writer and the worker pool that the extractors and checkpoints share."""

import errno
import os
import signal

import pytest

from common.files import DiskFullError, WorkerDied, WorkerPool, atomic_folder, clean_staging_folders, staging_folder


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
