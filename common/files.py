"""Writing files so that a crash never leaves half of one."""

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(data)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_json_atomic(path: os.PathLike, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))
