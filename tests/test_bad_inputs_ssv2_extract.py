"""Bad input to python -m pecn.video_loader (SSv2 webm -> frame folders): a bad webm is listed and its entry marked,
the other videos are extracted, frames extracted before survive. The matrix's rules: tests/bad_inputs_support.py."""

import json
import shutil
from functools import partial
from pathlib import Path
from typing import Callable

import pytest

from bad_inputs_support import (DECODE_FAILURE, NUM_FRAMES, SIZE, Built, Case, Env, Outcome, cut_before_first_frame, cut_mid_stream, image_bytes,
                                noise_frames, params, try_case, write_video)

ENTRY = "pecn.video_loader"
CASES: list[Case] = []


def extract_with_broken_video(tmp: Path, env: Env, break_video: Callable[[Path], None]) -> Built:
    """pecn.video_loader over three videos; the first is broken by `break_video`, the second was extracted before."""
    root = tmp / "sthv2"
    entries = [{k: v for k, v in e.items() if k not in ("num_frames", "extract_error")}
               for e in json.loads((env.ssv2 / "annotations" / "val_filtered.json").read_text()) if e["num_frames"] == NUM_FRAMES][:3]
    annotation = root / "annotations" / "val_filtered.json"
    annotation.parent.mkdir(parents=True)
    annotation.write_text(json.dumps(entries))
    for entry in entries:
        (root / "videos").mkdir(exist_ok=True)
        shutil.copy(env.ssv2 / "videos" / f"{entry['id']}.webm", root / "videos")
    done = root / f"frames_{SIZE}x{SIZE}" / entries[1]["id"]
    shutil.copytree(env.ssv2 / f"frames_{SIZE}x{SIZE}" / entries[1]["id"], done)
    break_video(root / "videos" / f"{entries[0]['id']}.webm")
    argv = ["--data_root", str(root), "--annotation_files", str(annotation), "--sizes", f"{SIZE}x{SIZE}", "--num_workers", "1"]
    return Built(argv, {"bad": entries[0]["id"], "annotation": str(annotation)}, sorted(done.iterdir()))


def extract_error_marked(built: Built, outcome: Outcome) -> None:
    """The failed video keeps its entry, marked, so the pair dataset counts it instead of losing it."""
    entries = {e["id"]: e for e in json.loads(Path(built.names["annotation"]).read_text())}
    assert entries[built.names["bad"]]["num_frames"] == 0 and entries[built.names["bad"]]["extract_error"]
    assert sum(1 for e in entries.values() if e["num_frames"] == NUM_FRAMES) == 2


def webm_truncated(path: Path) -> None:
    write_video(path, noise_frames(NUM_FRAMES, SIZE, SIZE, seed=3), codec="libvpx-vp9")
    cut_mid_stream(path)


CASES.append(Case("ssv2-webm-truncated", ENTRY, partial(extract_with_broken_video, break_video=webm_truncated), "skip",
                  (r"extracted 1, skipped 1 \(already done\), failed 1", r"failed {bad}: .*(" + DECODE_FAILURE + ")"), extract_error_marked))


def webm_zero_frames(path: Path) -> None:
    cut_before_first_frame(path)


CASES.append(Case("ssv2-webm-zero-frames", ENTRY, partial(extract_with_broken_video, break_video=webm_zero_frames), "skip",
                  (r"failed 1", r"failed {bad}: .*(" + DECODE_FAILURE + ")"), extract_error_marked))


def webm_is_an_image(path: Path) -> None:
    path.write_bytes(image_bytes("JPEG"))


CASES.append(Case("ssv2-webm-is-an-image", ENTRY, partial(extract_with_broken_video, break_video=webm_is_an_image), "skip",
                  (r"failed 1", r"failed {bad}: .*an image"), extract_error_marked))


def webm_missing(path: Path) -> None:
    path.unlink()


CASES.append(Case("ssv2-webm-missing", ENTRY, partial(extract_with_broken_video, break_video=webm_missing), "skip",
                  (r"failed 1", r"failed {bad}: .*video file not found"), extract_error_marked))


def extract_from_annotations(tmp: Path, env: Env, text: str) -> Built:
    """pecn.video_loader on a filtered annotation file holding `text`."""
    annotation = tmp / "sthv2" / "annotations" / "val_filtered.json"
    annotation.parent.mkdir(parents=True)
    annotation.write_text(text)
    return Built(["--data_root", str(tmp / "sthv2"), "--annotation_files", str(annotation), "--num_workers", "1"], {"bad": str(annotation)})


CASES.append(Case("ssv2-filtered-malformed-json", ENTRY, partial(extract_from_annotations, text='[{"id": "1"'), "error", (r"{bad}", r"malformed JSON")))
CASES.append(Case("ssv2-filtered-entry-without-label", ENTRY, partial(extract_from_annotations, text='[{"id": "1", "template": "x"}]'), "error",
                  (r"{bad}", r"entry 0 lacks string field\(s\) label")))


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case, matrix_env, tmp_path, capsys, caplog):
    try_case(case, matrix_env, tmp_path, capsys, caplog)
