"""Label Studio labeling configs (XML) generated from `data_engine.schema`.

    hv annotate config --task pose --keypoints all        # 308 keypoints, one panel per body region
    hv annotate config --task seg --vocab goliath28       # 28 brush classes in the schema's palette
    hv annotate config --task bbox                        # person boxes only

Pose: a `person` RectangleLabels for top-down boxes, then one KeyPointLabels control per keypoint group
(body, feet, left_hand, right_hand, extra, face), each in its own collapsible panel and coloured by group,
so an annotator can work one region at a time; the big groups get a `<Filter>` box to find a label by
typing. Visibility is a per-region choice (`visible` / `occluded`): a keypoint without the choice is
visible (v = 2), `occluded` gives v = 1, an absent keypoint v = 0 (COCO).

The names of the controls below are the contract with `annotation.convert`: change both together.
"""

from __future__ import annotations

from typing import Literal
from xml.sax.saxutils import quoteattr

from data_engine import schema

TaskType = Literal["pose", "seg", "bbox"]
TASK_TYPES: tuple[TaskType, ...] = ("pose", "seg", "bbox")

IMAGE = "image"  # the <Image> tag; the task data field is `$image`
PERSON = "person"  # RectangleLabels control and its one label
VISIBILITY = "visibility"  # per-region Choices on keypoints
VISIBLE, OCCLUDED = "visible", "occluded"
SEG = "parts"  # BrushLabels control
KEYPOINT_PREFIX = "kp_"  # KeyPointLabels controls are kp_<group>

GROUP_COLORS: dict[str, str] = {
    "body": "#e6194b",
    "feet": "#f58231",
    "left_hand": "#3cb44b",
    "right_hand": "#4363d8",
    "extra": "#911eb4",
    "face": "#f032e6",
}
PERSON_COLOR = "#ffe119"
# Groups with more labels than fit a glance get a type-to-find box.
FILTER_MIN_LABELS = 15


def keypoint_control(group: str) -> str:
    return f"{KEYPOINT_PREFIX}{group}"


def keypoint_groups(keypoint_set: str) -> list[tuple[str, list[str]]]:
    """The subset's keypoint names grouped by schema group, groups in schema order, names in subset order."""
    kps = schema.keypoints()
    names_by_group: dict[str, list[str]] = {g: [] for g in schema.GROUPS}
    for index in schema.subset(keypoint_set):
        k = kps[int(index)]
        names_by_group[k.group].append(k.name)
    return [(g, names) for g, names in names_by_group.items() if names]


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _person_control() -> str:
    return (
        f'  <RectangleLabels name="{PERSON}" toName="{IMAGE}" strokeWidth="2">\n'
        f'    <Label value="{PERSON}" background="{PERSON_COLOR}"/>\n'
        "  </RectangleLabels>\n"
    )


def _image_tag() -> str:
    return f'  <Image name="{IMAGE}" value="${IMAGE}" zoom="true" zoomControl="true"/>\n'


def pose_config(keypoint_set: str = "all") -> str:
    parts = [
        "<View>\n",
        '  <Header value="Draw a person box, then place keypoints one region at a time. '
        'Select a keypoint to mark it occluded; leave out what you cannot place."/>\n',
        _image_tag(),
        _person_control(),
        f'  <Choices name="{VISIBILITY}" toName="{IMAGE}" perRegion="true" choice="single-radio" showInline="true">\n'
        f'    <Choice value="{VISIBLE}"/>\n'
        f'    <Choice value="{OCCLUDED}"/>\n'
        "  </Choices>\n",
        "  <Collapse>\n",
    ]
    for group, names in keypoint_groups(keypoint_set):
        control = keypoint_control(group)
        parts.append(f"    <Panel value={quoteattr(f'{group} ({len(names)})')}>\n")
        if len(names) >= FILTER_MIN_LABELS:
            parts.append(
                f'      <Filter name="filter_{group}" toName="{control}" minlength="0" placeholder="find a label"/>\n'
            )
        parts.append(f'      <KeyPointLabels name="{control}" toName="{IMAGE}" strokeWidth="2" opacity="0.9">\n')
        color = GROUP_COLORS[group]
        parts.extend(f'        <Label value={quoteattr(name)} background="{color}"/>\n' for name in names)
        parts.append("      </KeyPointLabels>\n    </Panel>\n")
    parts.append("  </Collapse>\n</View>\n")
    return "".join(parts)


def seg_config(vocabulary: str = "goliath28") -> str:
    vocab = schema.vocabulary(vocabulary)
    labels = "".join(
        f"    <Label value={quoteattr(c.name)} background={quoteattr(_hex(c.color))}/>\n" for c in vocab.classes
    )
    return (
        "<View>\n"
        '  <Header value="Paint every body part; later strokes cover earlier ones where they overlap."/>\n'
        f"{_image_tag()}"
        f'  <BrushLabels name="{SEG}" toName="{IMAGE}">\n{labels}  </BrushLabels>\n'
        "</View>\n"
    )


def bbox_config() -> str:
    return f"<View>\n{_image_tag()}{_person_control()}</View>\n"


def label_config(task: TaskType, keypoint_set: str = "all", vocabulary: str = "goliath28") -> str:
    if task == "pose":
        return pose_config(keypoint_set)
    if task == "seg":
        return seg_config(vocabulary)
    if task == "bbox":
        return bbox_config()
    raise ValueError(f"unknown annotation task {task!r}; choose one of: {', '.join(TASK_TYPES)}")
