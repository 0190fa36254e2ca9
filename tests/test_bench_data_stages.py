"""bench/data_stages.py: a quick run of every stage reports a table and one JSON line (times are not checked)."""

import json
import subprocess
import sys

import cv2
import numpy as np

from bench.data_stages import COLUMNS, png_pixels_identical
from conftest import REPO_ROOT


def test_quick_run_reports_every_stage_with_identical_ssv2_pixels():
    result = subprocess.run([sys.executable, "-m", "bench.data_stages", "--quick", "--repeats", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[1] == "| " + " | ".join(COLUMNS) + " |"
    record = json.loads(lines[-1])
    assert record["bench"] == "data_stages (quick)" and record["machine"]
    stages = [row["stage"] for row in record["rows"]]
    assert [s.split(" ")[0] + " " + s.split(" ")[1] for s in stages] == ["genex extraction"] * 2 + ["clip loading", "ssv2 extraction"]
    # One table line per row, between the header and the JSON line.
    assert [line.split(" | ")[0].lstrip("| ") for line in lines[3:-1]] == stages
    for row in record["rows"]:
        assert row["predecessor_s"] > 0 and row["project_s"] > 0 and row["speedup"] == row["predecessor_s"] / row["project_s"]
        assert isinstance(row["pass"], bool) and row["target"]
    genex, ssv2 = record["rows"][0], record["rows"][3]
    assert genex["decode_only_s"] > 0 and genex["project_vs_decode"] == genex["project_s"] / genex["decode_only_s"]
    assert ssv2["pixels_identical"] is True


def test_stages_flag_runs_only_the_chosen_stage():
    result = subprocess.run([sys.executable, "-m", "bench.data_stages", "--quick", "--repeats", "1", "--stages", "clip_loading"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [row["stage"].split(" ")[0] for row in json.loads(result.stdout.strip().splitlines()[-1])["rows"]] == ["clip"]


def test_pixel_check_sees_one_changed_pixel_and_a_missing_frame(tmp_path):
    frame = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    for who in ("a", "b"):
        (tmp_path / who / "1").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / who / "1" / "00000.png"), frame)
    assert png_pixels_identical(tmp_path / "a", tmp_path / "b")
    # The same pixels at another compression level are still identical.
    cv2.imwrite(str(tmp_path / "b" / "1" / "00000.png"), frame, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert png_pixels_identical(tmp_path / "a", tmp_path / "b")
    frame[3, 4, 1] ^= 1
    cv2.imwrite(str(tmp_path / "b" / "1" / "00000.png"), frame)
    assert not png_pixels_identical(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "1" / "00000.png").unlink()
    assert not png_pixels_identical(tmp_path / "a", tmp_path / "b")
