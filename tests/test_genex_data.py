"""genex.data.FrameFolderDataset on frame folders written by the tests."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.images import to_rgb
from common.pixels import to_model_range
from genex.data import FrameFolderDataset, find_frame_folders, load_frame, natural_key

GREY_STEP = 10


def write_frames(folder: Path, count: int, size=(16, 8), names="frame_{}.png") -> Path:
    """Frames whose grey level is 10 * (their number - 1), numbered from 1 without zero padding."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, count + 1):
        Image.new("L", size, GREY_STEP * (k - 1)).save(folder / names.format(k))
    return folder


def frame_numbers(pixel_values: torch.Tensor) -> list[int]:
    """Recover each frame's number - 1 from its grey level in a uint8 clip."""
    grey = pixel_values.float().mean(dim=(1, 2, 3))
    return [round(g / GREY_STEP) for g in grey.tolist()]


def test_natural_order_and_output_format(tmp_path):
    write_frames(tmp_path / "video", 12)
    (tmp_path / "video" / "notes.txt").write_text("ignored")
    dataset = FrameFolderDataset(tmp_path, num_frames=12, width=10, height=6)
    item = dataset[0]
    # frame_2 comes before frame_10: numbers are compared by value, not as text.
    assert frame_numbers(item["pixel_values"]) == list(range(12))
    assert item["pixel_values"].shape == (12, 3, 6, 10) and item["pixel_values"].dtype == torch.uint8
    assert item["folder"] == str(tmp_path / "video")
    assert sorted(["frame_10", "frame_2", "frame_1"], key=natural_key) == ["frame_1", "frame_2", "frame_10"]


def test_windows_are_contiguous_and_reproducible(tmp_path):
    for v in range(4):
        write_frames(tmp_path / f"video_{v}", 20)
    dataset = FrameFolderDataset(tmp_path, num_frames=5, width=16, height=8, seed=7)
    starts = {}
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            numbers = frame_numbers(dataset[index]["pixel_values"])
            assert numbers == list(range(numbers[0], numbers[0] + 5))
            expected = np.random.default_rng((7, epoch, index)).integers(0, 16)
            assert numbers[0] == expected == dataset.window_start(index)
            starts[epoch, index] = numbers[0]
    assert len(set(starts.values())) > 3, "windows should move between items and epochs"

    again = FrameFolderDataset(tmp_path, num_frames=5, width=16, height=8, seed=7)
    again.set_epoch(2)
    assert [again.window_start(i) for i in range(4)] == [starts[2, i] for i in range(4)]
    other_seed = FrameFolderDataset(tmp_path, num_frames=5, width=16, height=8, seed=8)
    other_seed.set_epoch(2)
    assert [other_seed.window_start(i) for i in range(4)] != [starts[2, i] for i in range(4)]

    # DataLoader workers draw the same windows as the main process.
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    dataset.set_epoch(1)
    batches = [frame_numbers(clip)[0] for batch in loader for clip in batch["pixel_values"]]
    assert batches == [starts[1, i] for i in range(4)]


def test_short_folders_skipped_with_one_counted_warning(tmp_path):
    write_frames(tmp_path / "long", 8)
    write_frames(tmp_path / "short_a", 3)
    write_frames(tmp_path / "short_b", 5)
    with pytest.warns(UserWarning, match="skipped 2 of 3 frame folders with fewer than num_frames=6") as record:
        dataset = FrameFolderDataset(tmp_path, num_frames=6, width=16, height=8)
    assert len(record) == 1
    assert len(dataset) == 1 and dataset[0]["folder"].endswith("long")


def test_nothing_usable_is_a_clear_error(tmp_path):
    write_frames(tmp_path / "a", 3)
    write_frames(tmp_path / "b", 4)
    with pytest.raises(ValueError, match=r"num_frames=10 frames; the longest, .*b, has 4") as error:
        FrameFolderDataset(tmp_path, num_frames=10, width=16, height=8)
    assert str(tmp_path) in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no folder of frame images"):
        FrameFolderDataset(tmp_path / "empty", num_frames=1, width=16, height=8)


def test_nested_scene_folders_and_hidden_partials(tmp_path):
    write_frames(tmp_path / "realistic" / "video_00001", 4, names="frame_{:04d}.jpg")
    write_frames(tmp_path / "realistic" / "video_00002", 4, names="frame_{:04d}.jpg")
    write_frames(tmp_path / "Real-World" / "video_00001", 4, names="frame_{:04d}.webp")
    write_frames(tmp_path / "realistic" / ".video_00003.partial", 4)  # an unfinished prepare_dataset.py video
    folders = [p.relative_to(tmp_path).as_posix() for p in find_frame_folders(tmp_path)]
    assert folders == ["Real-World/video_00001", "realistic/video_00001", "realistic/video_00002"]
    dataset = FrameFolderDataset(tmp_path, num_frames=4, width=16, height=8)
    assert len(dataset) == 3
    assert all(len(frame_numbers(dataset[i]["pixel_values"])) == 4 for i in range(3))


def test_image_modes_become_correct_rgb(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 10, 20, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent: its colour must not show
    rgba[1, :] = (0, 0, 200, 128)  # half-transparent blue
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert tuple(out[0, 0]) == (200, 10, 20) and tuple(out[0, 1]) == (255, 255, 255)
    assert abs(int(out[1, 0, 2]) - 228) <= 1 and abs(int(out[1, 0, 0]) - 127) <= 1

    sixteen = Image.fromarray(np.array([[0, 32896, 65535, 1000]], np.uint16))
    sixteen.save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as reopened:
        assert reopened.mode.startswith("I")
        out = np.asarray(to_rgb(reopened))
    # Scaled to 8 bits, not clipped at 255.
    assert out.shape == (1, 4, 3) and out[0, :, 0].tolist() == [0, 128, 255, 4]

    assert np.asarray(to_rgb(Image.new("L", (1, 1), 77))).tolist() == [[[77, 77, 77]]]
    assert np.asarray(to_rgb(Image.new("LA", (1, 1), (77, 0)))).tolist() == [[[255, 255, 255]]]
    palette = Image.new("P", (1, 1), 0)
    palette.putpalette([10, 20, 30] + [0] * 765)
    assert np.asarray(to_rgb(palette)).tolist() == [[[10, 20, 30]]]
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette)).tolist() == [[[255, 255, 255]]]
    cmyk = to_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0)))
    assert cmyk.mode == "RGB" and np.asarray(cmyk).tolist() == [[[255, 0, 0]]]


def test_mixed_modes_in_one_clip(tmp_path):
    folder = tmp_path / "video"
    folder.mkdir()
    Image.new("RGBA", (20, 10), (255, 0, 0, 255)).save(folder / "frame_1.png")
    Image.new("L", (20, 10), 128).save(folder / "frame_2.png")
    Image.fromarray(np.full((10, 20), 65535, np.uint16)).save(folder / "frame_3.png")
    Image.new("CMYK", (20, 10), (0, 0, 0, 0)).save(folder / "frame_4.jpg")
    clip = FrameFolderDataset(tmp_path, num_frames=4, width=8, height=4)[0]["pixel_values"]
    assert clip.shape == (4, 3, 4, 8)
    means = clip.float().mean(dim=(2, 3)).round().tolist()
    assert means[0] == [255, 0, 0] and means[1] == [128, 128, 128] and means[2] == [255, 255, 255]
    assert min(means[3]) >= 250


def test_to_model_range_maps_0_255_to_minus_one_one():
    pixels = torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8)
    expected = torch.tensor([0, 1, 127, 128, 255], dtype=torch.float64) / 127.5 - 1
    torch.testing.assert_close(to_model_range(pixels), expected.float())
    assert to_model_range(pixels, torch.bfloat16).dtype == torch.bfloat16
    assert to_model_range(pixels)[[0, -1]].tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="uint8"):
        to_model_range(pixels.float())


def pillow_reference(path, width, height):
    """The previous loader: Pillow decode, to_rgb, bicubic resize."""
    with Image.open(path) as image:
        image = to_rgb(image)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_frames_decode_to_the_same_pixels_as_pillow(tmp_path, mode):
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    array = rng.integers(0, 256, (24, 40, channels), dtype=np.uint8)
    Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(tmp_path / "frame.jpg", quality=90)
    for width, height in ((40, 24), (16, 8)):
        frame = load_frame(tmp_path / "frame.jpg", width, height)
        assert frame.dtype == np.uint8 and frame.shape == (height, width, 3)
        assert np.array_equal(frame, pillow_reference(tmp_path / "frame.jpg", width, height))


def test_unreadable_frame_names_the_file(tmp_path):
    (tmp_path / "frame_1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="frame_1.jpg: cannot read image"):
        load_frame(tmp_path / "frame_1.jpg", 8, 4)


def test_a_clip_with_an_unreadable_frame_is_skipped_for_the_next_readable_one(tmp_path, caplog):
    for seed in range(3):
        folder = tmp_path / f"video_{seed:05d}"
        folder.mkdir()
        for i in range(1, 5):
            Image.fromarray(np.full((8, 16, 3), 40 * seed + i, np.uint8)).save(folder / f"frame_{i:04d}.png")
    (tmp_path / "video_00001" / "frame_0002.png").write_bytes(b"not a png")
    dataset = FrameFolderDataset(tmp_path, num_frames=4, width=16, height=8)
    with caplog.at_level("WARNING"):
        items = [dataset[i]["folder"] for i in range(3)]
    assert items == [str(tmp_path / "video_00000"), str(tmp_path / "video_00002"), str(tmp_path / "video_00002")]
    assert dataset.unreadable_clips == 1
    assert "frame_0002.png: cannot read image" in caplog.text and "skipped" in caplog.text


def test_every_clip_unreadable_is_an_error_naming_the_frame(tmp_path):
    folder = tmp_path / "video_00000"
    folder.mkdir()
    for i in range(1, 4):
        (folder / f"frame_{i:04d}.png").write_bytes(b"")
    dataset = FrameFolderDataset(tmp_path, num_frames=3, width=16, height=8)
    with pytest.raises(ValueError, match=r"frame_0001\.png: cannot read image.*no clip under"):
        dataset[0]


def test_windows_never_cross_a_gap_in_the_frame_numbering(tmp_path):
    for name, numbers in (("whole", range(1, 7)), ("gapped", [1, 2, 3, 7, 8, 9]), ("short_runs", [1, 2, 5, 6])):
        folder = tmp_path / name
        folder.mkdir()
        for n in numbers:
            Image.fromarray(np.full((8, 16, 3), n, np.uint8)).save(folder / f"frame_{n:04d}.png")
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 frame folders with fewer than num_frames=3 consecutive frames"):
        with pytest.warns(UserWarning, match=r"gap in their frame numbering .*frame 3 is followed by frame 7"):
            dataset = FrameFolderDataset(tmp_path, num_frames=3, width=16, height=8)
    assert [folder.name for folder, _ in dataset.videos] == ["gapped", "whole"]
    assert dataset.starts == [[0, 3], [0, 1, 2, 3]]
    for epoch in range(8):
        dataset.set_epoch(epoch)
        values = dataset[0]["pixel_values"][:, 0, 0, 0].tolist()
        assert values in ([1, 2, 3], [7, 8, 9])
