"""Filter SSv2 to the PECN tasks and sample a fixed number of videos per task.

    python -m pecn.dataset --data_root data/sthv2

Reads labels.json, train.json and validation.json from the annotations folder and writes
train_filtered.json and val_filtered.json: per task, a seeded shuffle of the entries whose
template (brackets removed) is exactly one of the task's templates, first N kept, with a
"task" field added.
"""

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from common.files import remove_stale_temps, write_json_atomic
from pecn.tasks import TASK_TEMPLATES, strip_brackets

REQUIRED_ENTRY_FIELDS = ("id", "label", "template")
SPLITS = {"train": ("train.json", "train_filtered.json"), "val": ("validation.json", "val_filtered.json")}


class AnnotationError(ValueError):
    """An annotation file that is missing, malformed, or does not match the SSv2 schema."""


def read_json(path: os.PathLike) -> Any:
    """Parse a JSON file; a missing or malformed file raises AnnotationError naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: malformed JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    except UnicodeDecodeError:
        raise AnnotationError(f"{path}: not UTF-8 text") from None


def load_labels(path: os.PathLike) -> dict[str, str]:
    """labels.json: template text (no brackets) -> class id."""
    labels = read_json(path)
    if not isinstance(labels, dict) or not all(isinstance(key, str) for key in labels):
        raise AnnotationError(f"{path}: expected an object mapping template text to class id")
    return labels


def load_annotations(path: os.PathLike) -> list[dict]:
    """An SSv2 annotation list (train.json, validation.json or a filtered file), schema checked."""
    entries = read_json(path)
    if not isinstance(entries, list):
        raise AnnotationError(f"{path}: expected a list of entries, got {type(entries).__name__}")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise AnnotationError(f"{path}: entry {index} is {type(entry).__name__}, expected an object")
        missing = [field for field in REQUIRED_ENTRY_FIELDS if not isinstance(entry.get(field), str)]
        if missing:
            raise AnnotationError(f"{path}: entry {index} lacks string field(s) {', '.join(missing)}")
    return entries


def check_templates_exist(task_templates: dict[str, list[str]], labels: dict[str, str], labels_path: os.PathLike) -> None:
    """A configured template absent from labels.json would silently match nothing: make it an error."""
    missing = [f"{task}: {template!r}" for task, templates in task_templates.items() for template in templates if template not in labels]
    if missing:
        raise AnnotationError(f"{labels_path}: configured template(s) not in the label map: {'; '.join(missing)}")


def select_task_entries(entries: Iterable[dict], templates: Iterable[str], num_samples: int, seed: int) -> list[dict]:
    """Entries whose template (brackets removed) exactly equals one of `templates`, seeded shuffle, first `num_samples`."""
    wanted = set(templates)
    matching = [entry for entry in entries if strip_brackets(entry["template"]) in wanted]
    random.Random(seed).shuffle(matching)
    return matching[:num_samples]


def filter_ssv2(
    entries: list[dict], task_templates: dict[str, list[str]], num_per_task: int, seed: int
) -> tuple[list[dict], dict[str, tuple[int, int]]]:
    """Sample every task; returns the kept entries (with "task") and per task (kept, available)."""
    kept, counts = [], {}
    for task, templates in task_templates.items():
        available = select_task_entries(entries, templates, len(entries), seed)
        chosen = available[:num_per_task]
        kept += [
            {"id": e["id"], "label": e["label"], "template": e["template"], "placeholders": e.get("placeholders", []), "task": task}
            for e in chosen
        ]
        counts[task] = (len(chosen), len(available))
    return kept, counts


def keep_videos_on_disk(entries: list[dict], videos_dir: os.PathLike) -> list[dict]:
    """Entries whose <id>.webm exists in `videos_dir` (one directory listing, not one stat per entry)."""
    present = {name[: -len(".webm")] for name in os.listdir(videos_dir) if name.endswith(".webm")}
    return [entry for entry in entries if entry["id"] in present]


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {value}")
    return value


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Filter SSv2 to the PECN tasks and sample N videos per task.")
    parser.add_argument("--data_root", default="data/sthv2", help="SSv2 root holding annotations/ and videos/.")
    parser.add_argument("--annotations_dir", default=None, help="Folder with labels.json, train.json, validation.json (default: <data_root>/annotations).")
    parser.add_argument("--videos_dir", default=None, help="Folder of <id>.webm; when it exists only videos present there are kept (default: <data_root>/videos).")
    parser.add_argument("--output_dir", default=None, help="Where train_filtered.json and val_filtered.json go (default: the annotations folder).")
    parser.add_argument("--train_per_task", type=non_negative_int, default=1000, help="Training videos sampled per task.")
    parser.add_argument("--val_per_task", type=non_negative_int, default=100, help="Validation videos sampled per task.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the per-task shuffle.")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    annotations_dir = Path(args.annotations_dir or Path(args.data_root) / "annotations")
    videos_dir = Path(args.videos_dir or Path(args.data_root) / "videos")
    output_dir = Path(args.output_dir or annotations_dir)
    per_task = {"train": args.train_per_task, "val": args.val_per_task}

    try:
        labels_path = annotations_dir / "labels.json"
        check_templates_exist(TASK_TEMPLATES, load_labels(labels_path), labels_path)
        outputs = {}
        for split, (source_name, output_name) in SPLITS.items():
            entries = load_annotations(annotations_dir / source_name)
            # Sampling only among downloaded videos keeps N per task instead of N minus the missing ones.
            if videos_dir.is_dir():
                on_disk = keep_videos_on_disk(entries, videos_dir)
                if entries and not on_disk and per_task[split] > 0:
                    raise AnnotationError(f"{videos_dir}: holds none of the {len(entries)} videos of {source_name} (<id>.webm, e.g. "
                                          f"{entries[0]['id']}.webm); nothing was written: give --videos_dir, or download the videos")
                print(f"{split}: dropped {len(entries) - len(on_disk)} of {len(entries)} entries whose video is not in {videos_dir}")
                entries = on_disk
            else:
                print(f"{split}: {videos_dir} does not exist, keeping all entries without checking videos")
            kept, counts = filter_ssv2(entries, TASK_TEMPLATES, per_task[split], args.seed)
            for task, (num_kept, num_available) in counts.items():
                print(f"{split}: {task}: {num_kept} kept of {num_available} available")
                if num_kept < per_task[split]:
                    print(f"warning: {split}: {task} has only {num_available} entries, fewer than the {per_task[split]} asked", file=sys.stderr)
            outputs[output_dir / output_name] = kept
    except AnnotationError as error:
        sys.exit(f"error: {error}")

    # Both files are written only once both splits are known to be valid.
    for path, kept in outputs.items():
        try:
            # A run killed while writing this file left its temporary copy: the file itself is whole.
            remove_stale_temps(path)
            write_json_atomic(path, kept)
        except OSError as error:
            # The file keeps its previous content (written atomically); say which one could not be written.
            sys.exit(f"error: {error}")
        print(f"wrote {len(kept)} entries to {path}")


if __name__ == "__main__":
    main()
