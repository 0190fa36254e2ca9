"""Writing files so that a crash never leaves half of one, and a full disk is one clear error."""

import ctypes
import errno
import glob
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

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
