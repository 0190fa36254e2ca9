"""Bad input to python -m pecn.dataset (SSv2 JSON -> filtered annotations): nothing is written unless every file is
valid, and filtered files from a previous run survive. The matrix's rules: tests/bad_inputs_support.py."""

import json
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pytest

from bad_inputs_support import Built, Case, Env, params, try_case

ENTRY = "pecn.dataset"
CASES: list[Case] = []


def filter_broken_annotations(tmp: Path, env: Env, mutate: Callable[[Path], str]) -> Built:
    """pecn.dataset on a copy of the synthetic SSv2 annotations (with filtered files finished by a previous run)
    that `mutate` breaks; it returns the broken file's name."""
    annotations = tmp / "sthv2" / "annotations"
    shutil.copytree(env.ssv2 / "annotations", annotations)
    bad = mutate(annotations)
    keep = [annotations / "train_filtered.json", annotations / "val_filtered.json"]
    return Built(["--data_root", str(tmp / "sthv2"), "--videos_dir", str(tmp / "no_videos")], {"bad": str(annotations / bad)}, keep)


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def labels_malformed(annotations: Path) -> str:
    (annotations / "labels.json").write_text('{"Moving something up": "0",')
    return "labels.json"


CASES.append(Case("ssv2-labels-malformed-json", ENTRY, partial(filter_broken_annotations, mutate=labels_malformed), "error", (r"{bad}", r"malformed JSON")))


def train_malformed(annotations: Path) -> str:
    text = (annotations / "train.json").read_text()
    (annotations / "train.json").write_text(text[: len(text) // 2])
    return "train.json"


CASES.append(Case("ssv2-train-malformed-json", ENTRY, partial(filter_broken_annotations, mutate=train_malformed), "error", (r"{bad}", r"malformed JSON")))


def validation_not_utf8(annotations: Path) -> str:
    (annotations / "validation.json").write_bytes(b'[{"id": "1", "label": "caf\xe9"}]')
    return "validation.json"


CASES.append(Case("ssv2-validation-not-utf8", ENTRY, partial(filter_broken_annotations, mutate=validation_not_utf8), "error", (r"{bad}", r"not UTF-8")))


def labels_is_a_list(annotations: Path) -> str:
    edit_json(annotations / "labels.json", list)
    return "labels.json"


CASES.append(Case("ssv2-labels-is-a-list", ENTRY, partial(filter_broken_annotations, mutate=labels_is_a_list), "error", (r"{bad}", r"expected an object")))


def train_is_a_dict(annotations: Path) -> str:
    edit_json(annotations / "train.json", lambda entries: {entry["id"]: entry for entry in entries})
    return "train.json"


CASES.append(Case("ssv2-train-is-a-dict", ENTRY, partial(filter_broken_annotations, mutate=train_is_a_dict), "error",
                  (r"{bad}", r"expected a list of entries, got dict")))


def train_entry_without_id(annotations: Path) -> str:
    edit_json(annotations / "train.json", lambda entries: entries[:3] + [{k: v for k, v in entries[3].items() if k != "id"}] + entries[4:])
    return "train.json"


CASES.append(Case("ssv2-entry-without-id", ENTRY, partial(filter_broken_annotations, mutate=train_entry_without_id), "error",
                  (r"{bad}", r"entry 3 lacks string field\(s\) id")))


def validation_entry_without_template(annotations: Path) -> str:
    edit_json(annotations / "validation.json", lambda entries: [{k: v for k, v in entries[0].items() if k != "template"}] + entries[1:])
    return "validation.json"


CASES.append(Case("ssv2-entry-without-template", ENTRY, partial(filter_broken_annotations, mutate=validation_entry_without_template), "error",
                  (r"{bad}", r"entry 0 lacks string field\(s\) template")))


def template_not_in_labels(annotations: Path) -> str:
    edit_json(annotations / "labels.json", lambda labels: {k: v for k, v in labels.items() if k != "Covering something with something"})
    return "labels.json"


CASES.append(Case("ssv2-template-not-in-labels", ENTRY, partial(filter_broken_annotations, mutate=template_not_in_labels), "error",
                  (r"{bad}", r"template\(s\) not in the label map", r"cover_object: 'Covering something with something'")))


def labels_missing(annotations: Path) -> str:
    (annotations / "labels.json").unlink()
    return "labels.json"


CASES.append(Case("ssv2-labels-missing", ENTRY, partial(filter_broken_annotations, mutate=labels_missing), "error", (r"{bad}", r"file not found")))


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case, matrix_env, tmp_path, capsys, caplog):
    try_case(case, matrix_env, tmp_path, capsys, caplog)
