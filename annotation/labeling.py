"""Label Studio labeling configs (XML) generated from `data_engine.schema`.

    hv annotate config --task pose --keypoints all        # 308 keypoints, one panel per body region
    hv annotate config --task seg --vocab goliath28       # 28 brush classes in the schema's palette
    hv annotate config --task bbox                        # person boxes only

Pose: a `person` RectangleLabels for top-down boxes, then one KeyPointLabels control per keypoint region
(body, feet, right_hand, left_hand, extra, face; each wrist with its hand), each in its own collapsible panel,
labels coloured by group,
so an annotator can work one region at a time; the big groups get a `<Filter>` box to find a label by
typing. Every keypoint label carries `model_index`, its row in the keypoint subset (the Goliath order for
`all`): Label Studio's own COCO / YOLO exports order keypoints by it and refuse a config without it.
Visibility is a per-region choice (`visible` / `occluded`): a keypoint without the choice is
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
KEYPOINT_PREFIX = "kp_"  # KeyPointLabels controls are kp_<group of the panel>

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


def keypoint_panels(keypoint_set: str) -> list[tuple[str, list[str]]]:
    """The subset's keypoint names cut into panels (one KeyPointLabels control each) of consecutive keypoints.

    A panel is a run of one group in the subset's order; a later run of a group already seen joins the panel
    before it (in the Goliath order each wrist follows its hand's 20 points, so it lives in that hand's panel).
    Why runs: Label Studio's COCO export lists a category's keypoint names in control order and places the
    coordinates by `model_index`; only when the concatenated panels are the subset order do the two agree.
    """
    kps = schema.keypoints()
    panels: list[tuple[str, list[str]]] = []
    for index in schema.subset(keypoint_set):
        k = kps[int(index)]
        if panels and (panels[-1][0] == k.group or any(group == k.group for group, _ in panels[:-1])):
            panels[-1][1].append(k.name)
        else:
            panels.append((k.group, [k.name]))
    return panels


def keypoint_panel_of(keypoint_set: str) -> dict[str, str]:
    """Keypoint name -> the name of the control that holds it in the subset's config."""
    return {name: keypoint_control(group) for group, names in keypoint_panels(keypoint_set) for name in names}


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
    rows = {name: row for row, name in enumerate(schema.subset_names(keypoint_set))}
    group_of = {k.name: k.group for k in schema.keypoints()}
    for group, names in keypoint_panels(keypoint_set):
        control = keypoint_control(group)
        parts.append(f"    <Panel value={quoteattr(f'{group} ({len(names)})')}>\n")
        if len(names) >= FILTER_MIN_LABELS:
            parts.append(
                f'      <Filter name="filter_{group}" toName="{control}" minlength="0" placeholder="find a label"/>\n'
            )
        parts.append(f'      <KeyPointLabels name="{control}" toName="{IMAGE}" strokeWidth="2" opacity="0.9">\n')
        parts.extend(
            f"        <Label value={quoteattr(name)} background={quoteattr(GROUP_COLORS[group_of[name]])}"
            f' model_index="{rows[name]}"/>\n'
            for name in names
        )
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
