"""A small synthetic Something-Something V2 in the real on-disk formats, for tests and dry runs.

    python -m pecn.synthetic --output_dir data/sthv2_synthetic

Writes <root>/annotations/{labels,train,validation,test}.json and <root>/videos/<id>.webm
(VP9, 12 fps). Classes are the real SSv2 templates of the PECN tasks plus a few real
distractor templates (one, "Moving something and something closer to each other", starts
like a move_object template). Each video shows the motion its label names: a coloured block
pushed sideways, lifted, dropped under gravity onto a receiver, covered by a sliding cloth.
"""

import argparse
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
from tqdm.auto import tqdm

from common.cli import run_cli
from common.video import encode_video_bytes
from pecn.dataset import write_json_atomic
from pecn.tasks import TASK_TEMPLATES, strip_brackets

FPS = 12
SHORT_NUM_FRAMES = 16  # below the default target frame 21, so these videos yield no pair
DISTRACTOR_TEMPLATES = [
    "Holding something",
    "Spinning something that quickly stops spinning",
    "Moving something and something closer to each other",
    "Moving something across a surface until it falls down",
    "Pushing something so that it slightly moves",
]
OBJECTS = {"red block": (220, 40, 40), "blue cup": (40, 80, 220), "green box": (40, 170, 60), "yellow sponge": (230, 200, 40), "purple book": (140, 60, 170)}
RECEIVERS = {"a white plate": (240, 240, 235), "a grey box": (120, 120, 125), "a brown bowl": (120, 70, 30), "a blue tray": (30, 160, 170)}
COVERS = {"a towel": (245, 245, 240), "a cloth": (200, 60, 120), "a paper": (250, 250, 200)}
SKIN = (225, 180, 150)
TABLE_TOP = 0.75  # normalised y of the table surface


@dataclass
class SyntheticSSv2:
    """What was written: the label map, the split entries and each video's true frame count."""

    root: Path
    labels: dict[str, str]
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    num_frames: dict[str, int] = field(default_factory=dict)


def bracket_template(template: str) -> str:
    """labels.json text to annotation template: "Moving something up" -> "Moving [something] up"."""
    return re.sub(r"\bsomething\b", "[something]", template)


def fill_label(template: str, placeholders: list[str]) -> str:
    """The SSv2 label: the bracketed template with its placeholders, lower case."""
    parts = bracket_template(template).split("[something]")
    filled = parts[0] + "".join(placeholder + part for placeholder, part in zip(placeholders, parts[1:]))
    return filled.lower()


# --- drawing in normalised coordinates (x, y in [0, 1], y down) ---

def _box(canvas: np.ndarray, cx: float, cy: float, w: float, h: float, color) -> None:
    height, width = canvas.shape[:2]
    x0, x1 = round((cx - w / 2) * width), round((cx + w / 2) * width)
    y0, y1 = round((cy - h / 2) * height), round((cy + h / 2) * height)
    canvas[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = color


def _rotated_box(canvas: np.ndarray, cx: float, cy: float, w: float, h: float, angle: float, color) -> None:
    height, width = canvas.shape[:2]
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]]) * [width, height]
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = corners @ rotation.T + [cx * width, cy * height]
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], color)


def _fall(t: float, start: float, end: float, y_from: float, y_to: float) -> float:
    """Height under gravity: at rest until `start`, quadratic fall, on the ground from `end`."""
    s = min(max((t - start) / (end - start), 0.0), 1.0)
    return y_from + (y_to - y_from) * s * s


def _lerp(t: float, a: float, b: float) -> float:
    return a + (b - a) * t


OW, OH = 0.18, 0.24  # object size
RESTING = TABLE_TOP - OH / 2


def _push(direction: int, pull: bool):
    # The hand trails the block when pushing and leads it when pulling.
    def scene(c, t, obj, other):
        x = _lerp(t, 0.5 - 0.3 * direction, 0.5 + 0.3 * direction)
        hand_side = direction if pull else -direction
        _box(c, x, RESTING, OW, OH, obj)
        _box(c, x + hand_side * (OW / 2 + 0.04), RESTING, 0.08, 0.12, SKIN)
    return scene


def _move_vertical(up: bool):
    def scene(c, t, obj, other):
        y = _lerp(t if up else 1 - t, RESTING, 0.2)
        _box(c, 0.5, y, OW, OH, obj)
        _box(c, 0.5, y + OH / 2 + 0.05, 0.08, 0.1, SKIN)
    return scene


def _move_depth(towards: bool):
    def scene(c, t, obj, other):
        scale = _lerp(t if towards else 1 - t, 0.8, 2.2)
        _box(c, 0.5, 0.5, OW * scale, OH * scale, obj)
    return scene


def _across_surface(falls: bool):
    # The table ends at x = 0.7 above a dark floor; the block stops before the edge, or goes over it and falls.
    def scene(c, t, obj, other):
        _box(c, 0.85, (TABLE_TOP + 1) / 2, 0.3, 1 - TABLE_TOP, (70, 60, 55))
        x = _lerp(min(t / 0.6, 1.0), 0.15, 0.82 if falls else 0.55)
        y = _fall(t, 0.6, 0.85, RESTING, 1 - OH / 2) if falls else RESTING
        _box(c, x, y, OW, OH, obj)
    return scene


def _drop(where: str):
    # Where the block lands relative to the receiver: (receiver x, landing x, landing bottom y).
    receiver_x, landing_x, landing_bottom = {
        "onto": (0.5, 0.5, TABLE_TOP - 0.15),
        "in front of": (0.5, 0.5, 0.9),
        "behind": (0.5, 0.5, TABLE_TOP - 0.1),
        "into": (0.5, 0.5, TABLE_TOP),
        "next to": (0.35, 0.72, TABLE_TOP),
    }[where]
    receiver_h = 0.3 if where == "into" else 0.15

    def scene(c, t, obj, other):
        y = _fall(t, 0.2, 0.6, 0.15, landing_bottom - OH / 2)
        # Draw order is depth: the receiver hides what falls behind it or into it.
        if where in ("behind", "into"):
            _box(c, landing_x, y, OW, OH, obj)
        _box(c, receiver_x, TABLE_TOP - receiver_h / 2, 0.4 if where == "into" else 0.3, receiver_h, other)
        if where not in ("behind", "into"):
            _box(c, landing_x, y, OW, OH, obj)
    return scene


def _cover(c, t, obj, other):
    _box(c, 0.5, RESTING, OW, OH, obj)
    right_edge = _lerp(min(t / 0.7, 1.0), 0.0, 0.75)
    _box(c, right_edge / 2, RESTING - 0.02, right_edge, OH + 0.12, other)


def _hold(c, t, obj, other):
    y = 0.4 + 0.02 * math.sin(2 * math.pi * 2 * t)
    _box(c, 0.5, y, OW, OH, obj)
    _box(c, 0.5, y + OH / 2 + 0.05, 0.08, 0.1, SKIN)


def _spin(c, t, obj, other):
    # Angular speed decays exponentially, so the angle saturates: it quickly stops.
    _rotated_box(c, 0.5, 0.5, OW, OH * 1.5, 2 * math.pi * (1 - math.exp(-4 * t)), obj)


def _closer(c, t, obj, other):
    _box(c, _lerp(t, 0.2, 0.38), RESTING, OW, OH, obj)
    _box(c, _lerp(t, 0.8, 0.62), RESTING, OW, OH, other)


def _slight_push(c, t, obj, other):
    x = _lerp(min(t / 0.5, 1.0), 0.45, 0.5)
    _box(c, x, RESTING, OW, OH, obj)
    _box(c, x - OW / 2 - 0.04, RESTING, 0.08, 0.12, SKIN)


def _still(c, t, obj, other):
    # Fallback for a template added to pecn.tasks without a scene of its own.
    _box(c, 0.5, RESTING, OW, OH, obj)


SCENES: dict[str, Callable] = {
    "Moving something up": _move_vertical(up=True),
    "Moving something down": _move_vertical(up=False),
    "Moving something towards the camera": _move_depth(towards=True),
    "Moving something away from the camera": _move_depth(towards=False),
    "Moving something across a surface without it falling down": _across_surface(falls=False),
    "Pushing something from left to right": _push(+1, pull=False),
    "Pushing something from right to left": _push(-1, pull=False),
    "Pulling something from left to right": _push(+1, pull=True),
    "Pulling something from right to left": _push(-1, pull=True),
    "Dropping something onto something": _drop("onto"),
    "Dropping something in front of something": _drop("in front of"),
    "Dropping something behind something": _drop("behind"),
    "Dropping something into something": _drop("into"),
    "Dropping something next to something": _drop("next to"),
    "Covering something with something": _cover,
    "Holding something": _hold,
    "Spinning something that quickly stops spinning": _spin,
    "Moving something and something closer to each other": _closer,
    "Moving something across a surface until it falls down": _across_surface(falls=True),
    "Pushing something so that it slightly moves": _slight_push,
}


def render_video(template: str, placeholders: list[str], num_frames: int, width: int, height: int, background: np.ndarray) -> list[np.ndarray]:
    """RGB uint8 frames of the scene for `template`, coloured by its placeholders."""
    scene = SCENES.get(template, _still)
    colors = {**OBJECTS, **RECEIVERS, **COVERS}
    obj = colors[placeholders[0]]
    other = colors[placeholders[1]] if len(placeholders) > 1 else (90, 90, 90)
    frames = []
    for index in range(num_frames):
        canvas = background.copy()
        scene(canvas, index / max(num_frames - 1, 1), obj, other)
        frames.append(canvas)
    return frames


def make_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A wall above a table, with a faint fixed texture so the codec has some detail to keep."""
    background = np.empty((height, width, 3), dtype=np.int16)
    table_row = round(TABLE_TOP * height)
    background[:table_row] = (205, 195, 175)
    background[table_row:] = (150, 110, 70)
    background += rng.integers(-6, 7, size=(height, width, 1), dtype=np.int16)
    return np.clip(background, 0, 255).astype(np.uint8)


def pick_placeholders(template: str, rng: np.random.Generator) -> list[str]:
    """An object for the first [something]; the second is a receiver/cover, or another object for a pair."""
    first = str(rng.choice(list(OBJECTS)))
    if bracket_template(template).count("[something]") == 1:
        return [first]
    kind = OBJECTS if " and something" in template else COVERS if template.startswith("Covering") else RECEIVERS
    pool = [name for name in kind if name != first]
    return [first, str(rng.choice(pool))]


def write_synthetic_ssv2(
    root: os.PathLike,
    train_per_class: int = 4,
    val_per_class: int = 2,
    test_videos: int = 4,
    num_frames: int = 30,
    width: int = 96,
    height: int = 64,
    seed: int = 0,
    short_videos: int = 2,
) -> SyntheticSSv2:
    """Write the synthetic SSv2 under `root`; `short_videos` task videos per split get SHORT_NUM_FRAMES frames."""
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ValueError(f"width and height must be even and >= 16 (VP9 yuv420p), got {width}x{height}")
    if num_frames < 1 or min(train_per_class, val_per_class, test_videos, short_videos) < 0:
        raise ValueError(f"need num_frames >= 1 and no negative count, got {num_frames} frames, {train_per_class} train and {val_per_class} "
                         f"validation per class, {test_videos} test and {short_videos} short videos")
    root = Path(root)
    rng = np.random.default_rng(seed)
    task_classes = [template for templates in TASK_TEMPLATES.values() for template in templates]
    classes = sorted(dict.fromkeys(task_classes + DISTRACTOR_TEMPLATES))
    labels = {template: str(index) for index, template in enumerate(classes)}

    num_videos = len(classes) * (train_per_class + val_per_class) + test_videos
    ids = iter(str(i) for i in rng.choice(np.arange(1, 10 * num_videos + 1000), size=num_videos, replace=False))
    splits = {}
    for split, per_class in (("train", train_per_class), ("validation", val_per_class)):
        entries = []
        for template in classes:
            for _ in range(per_class):
                placeholders = pick_placeholders(template, rng)
                entries.append({"id": next(ids), "label": fill_label(template, placeholders), "template": bracket_template(template), "placeholders": placeholders})
        # Real annotation files mix the classes.
        splits[split] = [entries[i] for i in rng.permutation(len(entries))]
    test_classes = [classes[i] for i in rng.integers(len(classes), size=test_videos)]
    test_entries = [{"id": next(ids), "template": bracket_template(c), "placeholders": pick_placeholders(c, rng)} for c in test_classes]

    lengths = {entry["id"]: num_frames for entries in (*splits.values(), test_entries) for entry in entries}
    for entries in splits.values():
        task_entries = [entry for entry in entries if strip_brackets(entry["template"]) in task_classes]
        for index in rng.choice(len(task_entries), size=min(short_videos, len(task_entries)), replace=False):
            lengths[task_entries[index]["id"]] = min(SHORT_NUM_FRAMES, num_frames)

    videos_dir = root / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    background = make_background(width, height, rng)
    for entry in tqdm([*splits["train"], *splits["validation"], *test_entries], desc="writing synthetic videos", unit="video"):
        template = strip_brackets(entry["template"])
        frames = render_video(template, entry["placeholders"], lengths[entry["id"]], width, height, background)
        path = videos_dir / f"{entry['id']}.webm"
        temp_path = path.with_name(f".{path.name}.tmp")
        temp_path.write_bytes(encode_video_bytes(frames, codec="libvpx-vp9", fps=FPS, container_format="webm"))
        os.replace(temp_path, path)

    annotations_dir = root / "annotations"
    test_ids = [{"id": entry["id"]} for entry in test_entries]
    write_json_atomic(annotations_dir / "labels.json", labels)
    write_json_atomic(annotations_dir / "train.json", splits["train"])
    write_json_atomic(annotations_dir / "validation.json", splits["validation"])
    write_json_atomic(annotations_dir / "test.json", test_ids)
    return SyntheticSSv2(root, labels, splits["train"], splits["validation"], test_ids, lengths)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Write a small synthetic SSv2 (labels, annotations, VP9 webm videos).")
    parser.add_argument("--output_dir", required=True, help="Root to write annotations/ and videos/ into.")
    parser.add_argument("--train_per_class", type=int, default=4, help="Training videos per class.")
    parser.add_argument("--val_per_class", type=int, default=2, help="Validation videos per class.")
    parser.add_argument("--test_videos", type=int, default=4, help="Unlabelled videos listed in test.json.")
    parser.add_argument("--num_frames", type=int, default=30, help="Frames per video.")
    parser.add_argument("--width", type=int, default=96, help="Video width in pixels (even).")
    parser.add_argument("--height", type=int, default=64, help="Video height in pixels (even).")
    parser.add_argument("--seed", type=int, default=0, help="Seed for ids, placeholders and which videos are short.")
    parser.add_argument("--short_videos", type=int, default=2, help=f"Task videos per split shortened to {SHORT_NUM_FRAMES} frames.")
    args = parser.parse_args(argv)
    data = write_synthetic_ssv2(
        args.output_dir, args.train_per_class, args.val_per_class, args.test_videos, args.num_frames, args.width, args.height, args.seed, args.short_videos
    )
    print(f"wrote {len(data.train)} train, {len(data.validation)} validation, {len(data.test)} test videos under {data.root}")


if __name__ == "__main__":
    run_cli(main)
