"""The PECN edit prompt: exact strings of DESIGN.md, progress floored to a multiple of 10."""

import pytest

from pecn.prompts import build_prompt, progress_percent

LABEL = "pushing cup from left to right"


def test_prompt_without_progress():
    assert build_prompt(LABEL) == "Generate a future frame of this action: pushing cup from left to right"
    # Without progress the frame numbers do not change the text.
    assert build_prompt(LABEL, add_progress=False, input_frame_idx=20, num_frames=33) == build_prompt(LABEL)


def test_prompt_with_progress_example_of_the_design():
    # 20 / 33 = 0.606 -> 60 %.
    assert build_prompt(LABEL, add_progress=True, input_frame_idx=20, num_frames=33) == (
        "Generate a future frame of this action: pushing cup from left to right. And 60% of the action has been completed."
    )


@pytest.mark.parametrize(
    "input_frame_idx, num_frames, percent",
    [
        (20, 21, 90),  # 0.952
        (20, 40, 50),  # exactly 0.5
        (0, 10, 0),
        (20, 200, 10),  # exactly 0.1
        (19, 200, 0),  # 0.095
        (9, 10, 90),
        (1, 3, 30),  # 0.333
        (2, 3, 60),  # 0.667
        (7, 10, 70),  # 0.7 * 10 is 7.000000000000001 in floats
        (3, 10, 30),  # 0.3 * 10 is 3.0000000000000004 in floats
        (20, 24, 80),  # 0.833, the synthetic SSv2 length
    ],
)
def test_progress_hand_computed(input_frame_idx, num_frames, percent):
    assert progress_percent(input_frame_idx, num_frames) == percent
    assert build_prompt("holding cup", True, input_frame_idx, num_frames) == (
        f"Generate a future frame of this action: holding cup. And {percent}% of the action has been completed."
    )


def test_progress_is_exact_floor_over_a_grid():
    # DESIGN: p = int((i / n) * 10) * 10, i.e. the share of the video before frame i floored to tens.
    for num_frames in range(1, 120):
        for input_frame_idx in range(num_frames):
            assert progress_percent(input_frame_idx, num_frames) == (10 * input_frame_idx // num_frames) * 10


@pytest.mark.parametrize("kwargs", [{}, {"input_frame_idx": 20}, {"num_frames": 33}])
def test_progress_prompt_without_frame_numbers_is_an_error(kwargs):
    with pytest.raises(ValueError, match="num_frames") as error:
        build_prompt(LABEL, add_progress=True, **kwargs)
    # The message points at the stage that writes num_frames.
    assert "pecn.video_loader" in str(error.value)


@pytest.mark.parametrize("input_frame_idx, num_frames", [(20, 20), (25, 20), (-1, 20), (0, 0)])
def test_progress_outside_the_video_is_an_error(input_frame_idx, num_frames):
    with pytest.raises(ValueError):
        build_prompt(LABEL, True, input_frame_idx, num_frames)
