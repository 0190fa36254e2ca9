"""Frame extraction (python -m pecn.video_loader): every frame, 0-based names, num_frames, failures marked, reruns skip."""

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from pecn import dataset
from pecn.synthetic import SHORT_NUM_FRAMES, write_synthetic_ssv2
from pecn.video_loader import frame_path

NUM_FRAMES = 18
SIZES = [(32, 32), (20, 12)]  # (width, height); the second is not square, so W and H cannot be swapped unnoticed


def decode(path) -> list[np.ndarray]:
    """Every frame of a video as RGB, decoded here with PyAV independently of the code under test."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def first_packet_offset(path) -> int:
    with av.open(str(path)) as container:
        return min(packet.pos for packet in container.demux(video=0) if packet.pos is not None and packet.pos >= 0)


def run_loader(root, annotation_files, num_workers):
    command = [sys.executable, "-m", "pecn.video_loader", "--data_root", str(root), "--annotation_files", *map(str, annotation_files)]
    command += ["--sizes", *(f"{w}x{h}" for w, h in SIZES), "--num_workers", str(num_workers)]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def read(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def snapshot(frames_root):
    """Modification time of every file under the frame folders."""
    return {str(p): p.stat().st_mtime_ns for p in Path(frames_root).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    data = write_synthetic_ssv2(root, train_per_class=1, val_per_class=1, test_videos=0, num_frames=NUM_FRAMES, width=48, height=32, short_videos=8)
    annotations = root / "annotations"
    dataset.main(["--data_root", str(root), "--train_per_task", "3", "--val_per_task", "2"])
    files = [annotations / "train_filtered.json", annotations / "val_filtered.json"]
    before = {path: read(path) for path in files}
    train_ids = [e["id"] for e in before[files[0]]]
    val_ids = [e["id"] for e in before[files[1]]]

    # Three broken videos: one missing, one cut inside its header, one cut before its first frame.
    missing, unreadable, frameless = val_ids[0], train_ids[0], train_ids[1]
    (root / "videos" / f"{missing}.webm").unlink()
    unreadable_path = root / "videos" / f"{unreadable}.webm"
    unreadable_path.write_bytes(unreadable_path.read_bytes()[:64])
    frameless_path = root / "videos" / f"{frameless}.webm"
    frameless_path.write_bytes(frameless_path.read_bytes()[: first_packet_offset(frameless_path)])
    failed = {missing, unreadable, frameless}

    first = run_loader(root, files, num_workers=2)
    assert first.returncode == 0, first.stderr
    after_first = {path: read(path) for path in files}
    mtimes = snapshot(root / "frames_32x32") | snapshot(root / "frames_20x12")
    good = [i for i in train_ids + val_ids if i not in failed]
    return {
        "root": root, "data": data, "files": files, "before": before, "after": after_first, "first": first,
        "failed": failed, "missing": missing, "good": good, "mtimes": mtimes,
    }


@pytest.fixture(scope="module")
def rerun(extracted):
    """A second run after removing one video's small frames: only that folder is rewritten."""
    root = extracted["root"]
    redo = extracted["good"][0]
    for png in (root / "frames_20x12" / redo).iterdir():
        png.unlink()
    (root / "frames_20x12" / redo).rmdir()
    second = run_loader(root, extracted["files"], num_workers=1)
    assert second.returncode == 0, second.stderr
    return {"process": second, "redo": redo, "mtimes": snapshot(root / "frames_32x32") | snapshot(root / "frames_20x12")}


def test_fixture_has_short_and_normal_videos(extracted):
    lengths = {len(decode(extracted["root"] / "videos" / f"{i}.webm")) for i in extracted["good"]}
    assert lengths == {NUM_FRAMES, SHORT_NUM_FRAMES}


def test_every_frame_written_at_every_size(extracted):
    root = extracted["root"]
    for video_id in extracted["good"]:
        count = len(decode(root / "videos" / f"{video_id}.webm"))
        assert count == extracted["data"].num_frames[video_id]
        for width, height in SIZES:
            folder = root / f"frames_{width}x{height}" / video_id
            assert sorted(os.listdir(folder)) == [f"{i:05d}.png" for i in range(count)]
            for name in ("00000.png", f"{count - 1:05d}.png"):
                with Image.open(folder / name) as image:
                    assert image.size == (width, height) and image.mode == "RGB"


def test_frame_names_are_zero_based_and_pixels_exact(extracted):
    root = extracted["root"]
    for video_id in extracted["good"][:3]:
        frames = decode(root / "videos" / f"{video_id}.webm")
        for size in SIZES:
            frames_dir = root / f"frames_{size[0]}x{size[1]}"
            for index in (0, 1, len(frames) // 2, len(frames) - 1):
                png = np.asarray(Image.open(frame_path(frames_dir, video_id, index)).convert("RGB"))
                # PNG is lossless: exactly the decoded frame, squeezed to the size with INTER_AREA, in RGB order.
                np.testing.assert_array_equal(png, cv2.resize(frames[index], size, interpolation=cv2.INTER_AREA))
            # Control: the scene moves, so an off-by-one name would not match.
            first = np.asarray(Image.open(frame_path(frames_dir, video_id, 0)).convert("RGB"))
            assert not np.array_equal(first, cv2.resize(frames[-1], size, interpolation=cv2.INTER_AREA))


def test_num_frames_written_into_both_annotation_files(extracted):
    root = extracted["root"]
    for path in extracted["files"]:
        before, after = extracted["before"][path], extracted["after"][path]
        assert [e["id"] for e in after] == [e["id"] for e in before]
        for old, new in zip(before, after):
            assert {k: v for k, v in new.items() if k not in ("num_frames", "extract_error")} == old
            if new["id"] in extracted["failed"]:
                assert new["num_frames"] == 0 and new["extract_error"]
            else:
                assert new["num_frames"] == len(decode(root / "videos" / f"{new['id']}.webm"))
                assert "extract_error" not in new
        # The files stay valid SSv2 annotation lists.
        dataset.load_annotations(path)


def test_failures_are_reported_by_name_and_the_rest_extracted(extracted):
    root, stdout = extracted["root"], extracted["first"].stdout
    failure_lines = [line for line in stdout.splitlines() if line.startswith("failed ")]
    assert len(failure_lines) == 3
    for video_id in extracted["failed"]:
        assert any(video_id in line for line in failure_lines), stdout
        for width, height in SIZES:
            assert not (root / f"frames_{width}x{height}" / video_id).exists()
    missing_line = next(line for line in failure_lines if extracted["missing"] in line)
    assert "not found" in missing_line
    assert f"extracted {len(extracted['good'])}," in stdout
    errors = {e["id"]: e["extract_error"] for path in extracted["files"] for e in extracted["after"][path] if "extract_error" in e}
    assert set(errors) == extracted["failed"]
    assert all(f"{video_id}.webm" in error for video_id, error in errors.items())


def test_no_temporary_files_left(extracted, rerun):
    root = extracted["root"]
    for width, height in SIZES:
        names = os.listdir(root / f"frames_{width}x{height}")
        assert sorted(names) == sorted(extracted["good"])
    leftovers = [p.name for p in (root / "annotations").iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_rerun_skips_finished_videos(extracted, rerun):
    stdout = rerun["process"].stdout
    # The one folder removed is redone, every other good video skipped, the broken ones fail again.
    assert f"extracted 1, skipped {len(extracted['good']) - 1}" in stdout and "failed 3" in stdout
    redone = str(extracted["root"] / "frames_20x12" / rerun["redo"])
    unchanged = {p: t for p, t in extracted["mtimes"].items() if not p.startswith(redone)}
    assert {p: rerun["mtimes"][p] for p in unchanged} == unchanged
    assert sorted(os.listdir(redone)) == [f"{i:05d}.png" for i in range(extracted["data"].num_frames[rerun["redo"]])]
    for path in extracted["files"]:
        assert read(path) == extracted["after"][path]


def test_video_cut_mid_stream_is_marked_failed(tmp_path):
    data = write_synthetic_ssv2(tmp_path, train_per_class=0, val_per_class=1, test_videos=0, num_frames=NUM_FRAMES, width=32, height=32, short_videos=0)
    video_id = data.validation[0]["id"]
    path = tmp_path / "videos" / f"{video_id}.webm"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 3 // 4])
    from pecn.video_loader import extract_video

    result = extract_video(path, video_id, {(16, 16): tmp_path / "frames_16x16"})
    assert result.status == "failed"


def object_track(frames, color, tolerance=45):
    """Per frame: (pixel count, centre x, centre y) of the pixels near `color`, x and y normalised to [0, 1]."""
    track = []
    for frame in frames:
        ys, xs = np.nonzero(np.abs(frame.astype(int) - color).max(axis=2) < tolerance)
        height, width = frame.shape[:2]
        track.append((len(xs), xs.mean() / width if len(xs) else np.nan, ys.mean() / height if len(ys) else np.nan))
    return track


def test_synthetic_videos_show_the_motion_of_their_label(tmp_path):
    from pecn.synthetic import OBJECTS

    data = write_synthetic_ssv2(tmp_path, train_per_class=1, val_per_class=0, test_videos=0, num_frames=24, width=96, height=64, short_videos=0)
    checked = set()
    for entry in data.train:
        template = entry["template"].replace("[", "").replace("]", "")
        (first_count, first_x, first_y), *_, (last_count, last_x, last_y) = object_track(decode(tmp_path / "videos" / f"{entry['id']}.webm"), OBJECTS[entry["placeholders"][0]])
        assert first_count > 50, template
        if template.endswith("from left to right"):
            assert last_x - first_x > 0.3, template
        elif template.endswith("from right to left"):
            assert first_x - last_x > 0.3, template
        elif template == "Moving something up":
            assert first_y - last_y > 0.2, template
        elif template in ("Moving something down", "Dropping something onto something", "Dropping something next to something"):
            assert last_y - first_y > 0.2, template
        elif template == "Moving something towards the camera":
            assert last_count > 2 * first_count, template
        elif template in ("Covering something with something", "Dropping something into something"):
            assert last_count < 0.1 * first_count, template
        else:
            continue
        checked.add(template)
    assert len(checked) == 11


def test_a_still_image_named_webm_is_marked_failed_as_an_image(tmp_path):
    from pecn.video_loader import extract_video

    path = tmp_path / "7.webm"
    Image.new("RGB", (32, 24), (10, 200, 10)).save(path, format="PNG")
    result = extract_video(path, "7", {(16, 16): tmp_path / "frames_16x16"})
    assert (result.status, result.num_frames) == ("failed", 0)
    assert result.error == f"{path}: is an image (png), not a video"
    assert os.listdir(tmp_path / "frames_16x16") == []


@pytest.mark.parametrize("content, needle", [("[{", "malformed JSON"), ('{"id": "1"}', "expected a list"), ('[{"id": 1, "label": "x", "template": "y"}]', "entry 0 lacks string field(s) id")])
def test_bad_annotation_file_is_a_one_line_error_naming_it(tmp_path, content, needle):
    path = tmp_path / "train_filtered.json"
    path.write_text(content)
    result = subprocess.run([sys.executable, "-m", "pecn.video_loader", "--data_root", str(tmp_path), "--annotation_files", str(path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: {needle}")
