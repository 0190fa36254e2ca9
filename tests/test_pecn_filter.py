"""SSv2 filtering (python -m pecn.dataset): exact templates, N per task, seeded shuffle, clear errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from pecn import dataset
from pecn.synthetic import write_synthetic_ssv2
from pecn.tasks import TASK_TEMPLATES, strip_brackets

TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 3

# The task templates exactly as DESIGN.md lists them (each checked by hand against the real labels.json).
DESIGN_TASKS = {
    "move_object": {
        "Moving something up",
        "Moving something down",
        "Moving something towards the camera",
        "Moving something away from the camera",
        "Moving something across a surface without it falling down",
        "Pushing something from left to right",
        "Pushing something from right to left",
        "Pulling something from left to right",
        "Pulling something from right to left",
    },
    "drop_object": {
        "Dropping something onto something",
        "Dropping something in front of something",
        "Dropping something behind something",
        "Dropping something into something",
        "Dropping something next to something",
    },
    "cover_object": {"Covering something with something"},
}
TASK_OF = {template: task for task, templates in DESIGN_TASKS.items() for template in templates}


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    return write_synthetic_ssv2(root, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, test_videos=0, num_frames=4, width=16, height=16, short_videos=0)


@pytest.fixture
def annotations(ssv2, tmp_path):
    """A private copy of the synthetic annotations, free to break."""
    copy = tmp_path / "annotations"
    shutil.copytree(ssv2.root / "annotations", copy)
    return copy


def run_filter(annotations_dir, *args, videos_dir=None, output_dir=None):
    """Run the CLI as a user does; returns the completed process."""
    command = [sys.executable, "-m", "pecn.dataset", "--annotations_dir", str(annotations_dir)]
    command += ["--videos_dir", str(videos_dir or Path(annotations_dir).parent / "no_videos_here")]
    if output_dir is not None:
        command += ["--output_dir", str(output_dir)]
    return subprocess.run(command + [str(a) for a in args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def read(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def matching(entries, task):
    """Entries of `task` by the definition: template without brackets equals one of the task's templates."""
    return [e for e in entries if TASK_OF.get(e["template"].replace("[", "").replace("]", "")) == task]


def assert_one_line_error(process, *needles):
    assert process.returncode != 0
    assert "Traceback" not in process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_task_templates_are_the_design_ones():
    assert {task: set(templates) for task, templates in TASK_TEMPLATES.items()} == DESIGN_TASKS
    assert all(len(templates) == len(set(templates)) for templates in TASK_TEMPLATES.values())
    assert "Moving something from left to right" not in TASK_OF, "SSv2 has no such class"


def test_every_task_template_is_in_the_synthetic_label_map(ssv2):
    labels = read(ssv2.root / "annotations" / "labels.json")
    assert set(TASK_OF) <= set(labels)
    # labels.json maps template text to distinct class ids "0".."N-1", as the real file does.
    assert sorted(labels.values(), key=int) == [str(i) for i in range(len(labels))]
    assert not any("[" in template for template in labels)


def test_strip_brackets():
    assert strip_brackets("Dropping [something] onto [something]") == "Dropping something onto something"
    assert strip_brackets("Moving something up") == "Moving something up"


def test_exactly_n_per_task_with_fields_kept_and_task_added(ssv2, annotations):
    process = run_filter(annotations, "--train_per_task", 3, "--val_per_task", 2)
    assert process.returncode == 0, process.stderr
    assert "warning" not in process.stderr
    for output, source, n in (("train_filtered.json", ssv2.train, 3), ("val_filtered.json", ssv2.validation, 2)):
        kept = read(annotations / output)
        by_id = {entry["id"]: entry for entry in source}
        for task in DESIGN_TASKS:
            assert len(matching(source, task)) > n, "the fixture must offer more than asked"
            assert sum(entry["task"] == task for entry in kept) == n
        assert len({entry["id"] for entry in kept}) == len(kept)
        for entry in kept:
            original = by_id[entry["id"]]
            assert entry == {**original, "task": TASK_OF[strip_brackets(original["template"])]}


def test_fewer_available_than_asked_warns_and_keeps_all(ssv2, annotations):
    process = run_filter(annotations, "--train_per_task", TRAIN_PER_CLASS + 1, "--val_per_task", 1)
    assert process.returncode == 0, process.stderr
    # Only cover_object has a single class, so only it falls short of TRAIN_PER_CLASS + 1.
    warnings = [line for line in process.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "cover_object" in warnings[0] and "train" in warnings[0]
    kept = read(annotations / "train_filtered.json")
    assert sorted(e["id"] for e in kept if e["task"] == "cover_object") == sorted(e["id"] for e in matching(ssv2.train, "cover_object"))
    assert sum(e["task"] == "move_object" for e in kept) == TRAIN_PER_CLASS + 1


def test_seeded_shuffle_is_reproducible_and_seed_dependent(ssv2, annotations, tmp_path):
    def order(seed, n, name):
        out = tmp_path / name
        assert run_filter(annotations, "--seed", seed, "--train_per_task", n, "--val_per_task", 0, output_dir=out).returncode == 0
        kept = read(out / "train_filtered.json")
        return {task: [e["id"] for e in kept if e["task"] == task] for task in DESIGN_TASKS}

    everything = order(1, 1000, "all_seed1")
    assert everything == order(1, 1000, "all_seed1_again")
    other_seed = order(2, 1000, "all_seed2")
    file_order = {task: [e["id"] for e in matching(ssv2.train, task)] for task in DESIGN_TASKS}
    for task in DESIGN_TASKS:
        # A shuffle: the same entries, in an order set by the seed.
        assert sorted(everything[task]) == sorted(file_order[task]) == sorted(other_seed[task])
    assert everything["move_object"] != other_seed["move_object"]
    assert everything["move_object"] != file_order["move_object"]
    # N kept = the first N of the seeded shuffle, so a larger N keeps the smaller N's videos.
    first_three = order(1, 3, "three_seed1")
    assert first_three == {task: ids[:3] for task, ids in everything.items()}


def test_exact_template_match_not_substring():
    entry = lambda i, template: {"id": str(i), "label": template.lower(), "template": template, "placeholders": []}
    wanted = ["Moving [something] up", "Covering [something] with [something]", "Dropping [something] onto [something]", "Pushing something from left to right"]
    distractors = [
        # Real SSv2 classes that start like a task template.
        "Moving [something] and [something] closer to each other",
        "Moving [something] across a surface until it falls down",
        "Moving [something] away from [something]",
        "Pushing [something] so that it slightly moves",
        "Pretending to put [something] onto [something]",
        "Uncovering [something]",
        # Not real classes: strict supersets of task templates, the case a substring match gets wrong.
        "Moving [something] up and down",
        "Pretending to be Covering [something] with [something]",
        "Dropping [something] onto [something] and it bounces",
    ]
    entries = [entry(i, t) for i, t in enumerate(distractors + wanted)]
    kept, counts = dataset.filter_ssv2(entries, TASK_TEMPLATES, num_per_task=100, seed=0)
    assert sorted(e["template"] for e in kept) == sorted(wanted)
    assert counts == {"move_object": (2, 2), "drop_object": (1, 1), "cover_object": (1, 1)}


def test_synthetic_distractors_are_never_kept(ssv2, annotations):
    assert run_filter(annotations, "--train_per_task", 1000, "--val_per_task", 1000).returncode == 0
    for output, source in (("train_filtered.json", ssv2.train), ("val_filtered.json", ssv2.validation)):
        kept = read(annotations / output)
        templates = {strip_brackets(e["template"]) for e in source}
        assert "Moving something and something closer to each other" in templates, "fixture needs the distractor"
        assert {strip_brackets(e["template"]) for e in kept} == set(TASK_OF)
        assert len(kept) == sum(len(matching(source, task)) for task in DESIGN_TASKS)


def test_template_missing_from_labels_is_an_error(annotations):
    labels = read(annotations / "labels.json")
    del labels["Dropping something behind something"]
    (annotations / "labels.json").write_text(json.dumps(labels))
    process = run_filter(annotations)
    assert_one_line_error(process, "labels.json", "Dropping something behind something")
    assert not (annotations / "train_filtered.json").exists()


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("labels.json", '{"Moving something up": "0",', "malformed"),
        ("train.json", '[{"id": "1", "label": "x", "template": "Moving [something] up"', "malformed"),
        ("validation.json", "", "malformed"),
        ("labels.json", '["Moving something up"]', "labels.json"),
        ("train.json", '{"id": "1", "label": "x", "template": "Moving [something] up"}', "list"),
        ("validation.json", '[{"id": "1", "label": "moving cup up", "placeholders": ["cup"]}]', "template"),
        ("train.json", '[{"id": 1, "label": "moving cup up", "template": "Moving [something] up"}]', "id"),
        ("validation.json", '["Moving [something] up"]', "entry 0"),
    ],
)
def test_bad_annotation_file_is_a_one_line_error_naming_it(annotations, name, content, needle):
    (annotations / name).write_text(content)
    process = run_filter(annotations, "--train_per_task", 1, "--val_per_task", 1)
    assert_one_line_error(process, str(annotations / name), needle)
    # Nothing is written unless both splits are valid.
    assert not (annotations / "train_filtered.json").exists() and not (annotations / "val_filtered.json").exists()


def test_missing_annotation_file_is_an_error_naming_it(annotations):
    (annotations / "validation.json").unlink()
    assert_one_line_error(run_filter(annotations, "--train_per_task", 1, "--val_per_task", 1), str(annotations / "validation.json"), "not found")


def test_videos_dir_keeps_only_present_videos(ssv2, annotations, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    present = {e["id"] for e in ssv2.train[::2] + ssv2.validation[1::2]}
    for video_id in present:
        os.symlink(ssv2.root / "videos" / f"{video_id}.webm", videos / f"{video_id}.webm")
    (videos / "notes.txt").write_text("not a video")
    n = 3
    process = run_filter(annotations, "--train_per_task", n, "--val_per_task", n, videos_dir=videos)
    assert process.returncode == 0, process.stderr
    for output, source in (("train_filtered.json", ssv2.train), ("val_filtered.json", ssv2.validation)):
        kept = read(annotations / output)
        assert {e["id"] for e in kept} <= present
        on_disk = [e for e in source if e["id"] in present]
        for task in DESIGN_TASKS:
            assert sum(e["task"] == task for e in kept) == min(n, len(matching(on_disk, task)))
    assert "cover_object" in process.stderr, "cover_object has fewer than 3 present videos in some split"


def test_absent_videos_dir_keeps_all_entries(ssv2, annotations):
    process = run_filter(annotations, "--train_per_task", 1000, "--val_per_task", 1000)
    assert process.returncode == 0
    assert len(read(annotations / "val_filtered.json")) == sum(len(matching(ssv2.validation, t)) for t in DESIGN_TASKS)


def test_outputs_are_valid_json_written_atomically(annotations, tmp_path):
    out = tmp_path / "out"
    assert run_filter(annotations, "--train_per_task", 2, "--val_per_task", 2, output_dir=out).returncode == 0
    assert sorted(os.listdir(out)) == ["train_filtered.json", "val_filtered.json"], "no temporary file may be left"
    dataset.load_annotations(out / "train_filtered.json")
    before = (out / "train_filtered.json").read_bytes()

    # A failing run leaves the previous outputs as they were.
    (annotations / "validation.json").write_text("[{")
    assert run_filter(annotations, "--train_per_task", 1, "--val_per_task", 1, output_dir=out).returncode != 0
    assert (out / "train_filtered.json").read_bytes() == before


def test_crash_while_writing_leaves_old_file_and_no_temp(annotations, tmp_path, monkeypatch):
    out = tmp_path / "out"
    dataset.main(["--annotations_dir", str(annotations), "--videos_dir", str(tmp_path / "none"), "--output_dir", str(out), "--train_per_task", "2"])
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(SystemExit, match=r"^error: .*train_filtered\.json: disk full$"):
        dataset.main(["--annotations_dir", str(annotations), "--videos_dir", str(tmp_path / "none"), "--output_dir", str(out), "--train_per_task", "1"])
    monkeypatch.undo()
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_temporary_copy_left_by_a_killed_run_is_removed(annotations, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".val_filtered.json.k1ll3d.tmp").write_text("[{")
    (out / "notes.tmp").write_text("not ours")
    dataset.main(["--annotations_dir", str(annotations), "--videos_dir", str(tmp_path / "none"), "--output_dir", str(out)])
    assert sorted(os.listdir(out)) == ["notes.tmp", "train_filtered.json", "val_filtered.json"]
