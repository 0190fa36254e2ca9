"""Writing files so that a crash never leaves half of one, and a full disk is one clear error."""

import contextlib
import ctypes
import errno
import glob
import json
import os
import shutil
import signal
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2

from common.cli import SetupError

# Out of space or over quota: every later write on that disk fails the same way.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """The output disk is full: the run must stop (not record the item as bad); a rerun after freeing space goes on."""

    def __str__(self) -> str:
        return f"{self.filename}: no space left on device (free some space and rerun: finished work is kept)"


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def naming_path(error: OSError, path: os.PathLike) -> OSError:
    """The same error, naming `path` when it names no file; a full disk becomes DiskFullError."""
    filename = error.filename if error.filename is not None else str(path)
    if is_disk_full(error):
        return DiskFullError(error.errno, os.strerror(error.errno), filename)
    if error.filename is not None:
        return error
    # OSError(errno, ...) picks the matching subclass (FileNotFoundError, ...) by itself.
    return OSError(error.errno, error.strerror, filename) if error.errno is not None else OSError(f"{filename}: {error}")


def write_file(path: os.PathLike, data) -> None:
    """Write bytes (or any buffer) to `path`; an OSError names the path, a full disk raises DiskFullError."""
    try:
        with open(path, "wb") as handle:
            handle.write(data)
    except OSError as error:
        raise naming_path(error, path) from None


def fsync_dir(folder: os.PathLike) -> None:
    """Make the renames in `folder` survive a power cut; where folders cannot be opened (Windows) it is skipped."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def die_with_parent() -> None:
    """Ask Linux to kill this worker process when its parent dies.

    A worker orphaned by a killed run would go on writing into the folders that the rerun
    writes into. Elsewhere it does nothing.
    """
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def write_atomic(path: os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, flushed to disk, then rename it over `path`.

    A reader sees the old file or the new one, never a truncated one, even after a power cut.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise naming_path(error, path) from None
    try:
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            # Without this, a crash after the rename can leave `path` empty on ext4/xfs.
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise naming_path(error, path) from None
        raise
    fsync_dir(path.parent)


def remove_stale_temps(path: os.PathLike) -> int:
    """Delete the temporary files that a run killed inside write_atomic(path) left beside `path`; returns how many.

    Only for a single writer per file (as the data preparation CLIs are): another writer's temp would go too.
    """
    path = Path(path)
    stale = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp")) if path.parent.is_dir() else []
    for temp in stale:
        temp.unlink(missing_ok=True)
    return len(stale)


def write_json_atomic(path: os.PathLike, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))


def staging_folder(final: os.PathLike) -> Path:
    """Where `atomic_folder(final)` builds the folder: a hidden sibling, so no reader takes it for a finished one."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


@contextlib.contextmanager
def atomic_folder(final: os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a folder under a hidden name beside `final`; it becomes `final` only when the block completes.

    A staging folder that a killed run left is removed first (one writer per folder). On an error the
    staging folder is removed and the error passes on, naming the path (a full disk as DiskFullError).
    An existing `final` is an error unless `replace`: then it is removed only after the new folder is in place.
    """
    final = Path(final)
    staging = staging_folder(final)
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    except OSError as error:
        raise naming_path(error, staging) from None
    try:
        yield staging
        if final.exists() and not replace:
            raise FileExistsError(errno.EEXIST, "already exists", str(final))
        swapped_out = final.with_name(f".{final.name}.replaced")
        if final.exists():
            shutil.rmtree(swapped_out, ignore_errors=True)
            os.replace(final, swapped_out)
        os.replace(staging, final)
        fsync_dir(final.parent)
        shutil.rmtree(swapped_out, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            raise naming_path(error, staging) from None
        raise


def clean_staging_folders(folder: os.PathLike, pattern: str = "*") -> int:
    """Remove the staging folders of `atomic_folder` that killed runs left in `folder`; returns how many."""
    folder = Path(folder)
    leftovers = [p for p in folder.glob(f".{pattern}.partial") if p.is_dir()] if folder.is_dir() else []
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return len(leftovers)


class WorkerDied(RuntimeError):
    """The worker process running a job died (e.g. killed for memory); the job did not finish."""


def _init_worker() -> None:
    # One thread per worker: the parallelism comes from the processes.
    cv2.setNumThreads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    die_with_parent()


class WorkerPool:
    """Runs independent jobs in `num_workers` processes (in this process when `num_workers` is 1).

    Workers are single-threaded and die with the parent. A worker that dies fails only the jobs it had in
    flight (their result is a WorkerDied) and the pool replaces itself, so a run over thousands of videos
    goes on. Leaving the pool (an error, Ctrl-C) cancels the jobs not yet started.
    """

    def __init__(self, num_workers: int):
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers}")
        self.num_workers = num_workers
        self.pool = ProcessPoolExecutor(num_workers, initializer=_init_worker) if num_workers > 1 else None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, fn: Callable, job: tuple) -> Future:
        try:
            return self.pool.submit(fn, *job)
        except BrokenProcessPool:
            self.pool.shutdown(wait=False)
            self.pool = ProcessPoolExecutor(self.num_workers, initializer=_init_worker)
            return self.pool.submit(fn, *job)

    def run(self, fn: Callable, jobs: Iterable[tuple]) -> Iterator[tuple[tuple, Any]]:
        """Yield (job, fn(*job)) for every job as it finishes (WorkerDied in place of the result when its worker died).

        `jobs` is read lazily, at most two jobs queued per worker. An error raised while reading `jobs`
        passes on after the jobs in flight have been yielded.
        """
        if self.pool is None:
            for job in jobs:
                yield job, fn(*job)
            return
        in_flight: dict[Future, tuple] = {}

        def finished(futures) -> Iterator[tuple[tuple, Any]]:
            for future in futures:
                job = in_flight.pop(future)
                try:
                    yield job, future.result()
                except BrokenProcessPool:
                    yield job, WorkerDied("the worker process died while running this job")

        jobs = iter(jobs)
        while True:
            try:
                job = next(jobs)
            except StopIteration:
                break
            except Exception:
                # Reading `jobs` failed (e.g. an unreadable table): what is already running is reported, not lost.
                yield from finished(wait(in_flight).done)
                raise
            if len(in_flight) >= 2 * self.num_workers:
                yield from finished(wait(in_flight, return_when=FIRST_COMPLETED).done)
            in_flight[self._submit(fn, job)] = job
        yield from finished(wait(in_flight).done)


RESULTS_FILE = "results.json"


def earlier_run_of(folder: Path, script: str) -> bool:
    """Whether `folder` holds a finished run of `script`: a results.json whose "script" names it."""
    try:
        results = json.loads((folder / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and results.get("script") == script


def check_output_dir(output_dir: os.PathLike, script: str, overwrite: bool) -> bool:
    """Refuse, before any model loads, an --output_dir that a results run of `script` must not write.

    Missing or empty is fine; an earlier run of `script` (its results.json) only with `overwrite`; any
    other non-empty folder never (it is not ours to replace). The folder that will hold the staging
    folder must be writable. Returns the `replace` argument for `atomic_folder(output_dir)`.
    """
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise SetupError(f"{folder}: --output_dir is a file, not a folder")
    contents = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
    if contents and not earlier_run_of(folder, script):
        shown = ", ".join(contents[:5]) + (f", ... ({len(contents)} entries)" if len(contents) > 5 else "")
        raise SetupError(f"{folder}: --output_dir holds files that are not a run of {script} ({shown}); choose another folder or empty it")
    if contents and not overwrite:
        raise SetupError(f"{folder}: --output_dir holds an earlier run of {script} ({RESULTS_FILE}); pass --overwrite_output_dir "
                         "(OVERWRITE_OUTPUT_DIR=1 for the wrapper) to replace it when the new run completes, or choose another folder")
    # atomic_folder builds the results beside the folder: its nearest existing ancestor must take a new entry.
    ancestor = next(parent for parent in folder.absolute().parents if parent.exists())
    if not ancestor.is_dir():
        raise SetupError(f"{folder}: --output_dir cannot be made, {ancestor} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=ancestor))
    except OSError as error:
        raise SetupError(f"{folder}: --output_dir cannot be written ({ancestor}: {error.strerror})") from None
    return folder.is_dir()
