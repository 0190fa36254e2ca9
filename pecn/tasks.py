"""The PECN tasks: each task is a list of exact SSv2 templates (brackets removed, as in labels.json).

To add a task or a template, edit TASK_TEMPLATES; every stage reads it from here.
"""

TASK_TEMPLATES: dict[str, list[str]] = {
    "move_object": [
        "Moving something up",
        "Moving something down",
        "Moving something towards the camera",
        "Moving something away from the camera",
        "Moving something across a surface without it falling down",
        "Pushing something from left to right",
        "Pushing something from right to left",
        "Pulling something from left to right",
        "Pulling something from right to left",
    ],
    "drop_object": [
        "Dropping something onto something",
        "Dropping something in front of something",
        "Dropping something behind something",
        "Dropping something into something",
        "Dropping something next to something",
    ],
    "cover_object": [
        "Covering something with something",
    ],
}


def strip_brackets(template: str) -> str:
    """SSv2 annotation template to its labels.json key: "Moving [something] up" -> "Moving something up"."""
    return template.replace("[", "").replace("]", "")
