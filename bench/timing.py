"""What every benchmark shares: interleaved repeats, medians, the machine, one table and one JSON line.

Candidates are timed in turn within each repeat (A, B, A, B, ...), so a slow spell of the
machine hits all of them alike; the median of the repeats is reported.
"""

import datetime
import json
import os
import platform
import statistics
import time
from typing import Any, Callable


def machine_description() -> str:
    """CPU model and core count, plus the GPU when there is one, e.g. "Intel Xeon ... (2 cores), no GPU"."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    description = f"{cpu} ({os.cpu_count()} cores)"
    try:
        import torch

        if torch.cuda.is_available():
            return f"{description}, {torch.cuda.get_device_name()}"
    except ImportError:
        pass
    return f"{description}, no GPU"


def interleaved_medians(candidates: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, synchronize: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median seconds per call of each candidate over `repeats` interleaved rounds, after `warmup` untimed rounds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for run in candidates.values():
            run()
    synchronize()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table (Markdown pipes) of `rows`, numbers to 3 significant digits."""

    def cell(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def report(bench: str, rows: list[dict], columns: list[str]) -> dict:
    """Print the table and then one JSON line {bench, machine, date, rows}; returns that record."""
    record = {"bench": bench, "machine": machine_description(), "date": datetime.date.today().isoformat(), "rows": rows}
    print(f"{bench} on {record['machine']}, {record['date']}")
    print(format_table(rows, columns))
    print(json.dumps(record))
    return record
