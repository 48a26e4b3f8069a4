"""The human schema: the 308 Goliath keypoints and the body-part class vocabularies.

Everything here is read from data files shipped inside the package (`data_engine/data/`), copied from
the project's reference notes, so no stage reads anything outside the installed package at run time.
Imports only the standard library and numpy, so every package can use it cheaply.

Keypoints (`KEYPOINTS`): index, name, group, flip partner, OKS sigma. Groups: body 17 (COCO names; the
wrists sit at 41 and 62, not in COCO order, so COCO-17 is a name mapping, see `subset("coco17")`),
feet 6, left_hand 20, right_hand 20, extra 7, face 238. The "243 face keypoints" of the paper are the
238 face points plus nose, eyes and ears: subset `face`.

Vocabularies (`VOCABULARIES`): `goliath28` (28 body-part classes), `lip20` (LIP/CIHP) and `sapiens2_29`
(Sapiens2's seg head: goliath28 with `Eyeglass` at 2), each with names, palette colours, cross-entropy weights
and left/right swaps.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import numpy as np

Group = Literal["body", "feet", "left_hand", "right_hand", "extra", "face"]
GROUPS: tuple[Group, ...] = ("body", "feet", "left_hand", "right_hand", "extra", "face")
# The reference file says "foot"; the subset and the rest of the project say "feet".
_GROUP_ALIASES = {"foot": "feet"}

COCO17_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
COCO_FACE_NAMES: tuple[str, ...] = COCO17_NAMES[:5]

NUM_KEYPOINTS = 308
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Keypoint:
    index: int
    name: str
    group: Group
    flip: int  # index of the mirror keypoint; its own index when it lies on the mid-line
    sigma: float  # OKS sigma (COCO convention, fraction of object scale)


@dataclass(frozen=True)
class SegClass:
    id: int
    name: str
    color: tuple[int, int, int]
    weight: float  # cross-entropy class weight
    flip: int  # id of the mirror class; its own id when symmetric


@dataclass(frozen=True)
class Vocabulary:
    name: str
    classes: tuple[SegClass, ...]

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def palette(self) -> np.ndarray:
        """(C, 3) uint8 RGB colours, row = class id."""
        return np.array([c.color for c in self.classes], dtype=np.uint8)

    def weights(self) -> np.ndarray:
        """(C,) float32 cross-entropy weights."""
        return np.array([c.weight for c in self.classes], dtype=np.float32)

    def flip_lut(self) -> np.ndarray:
        """(256,) uint8 lookup table mapping each class id to its mirror; ignore (255) and unused ids map to
        themselves, so `lut[seg]` flips a whole label map."""
        lut = np.arange(256, dtype=np.uint8)
        for c in self.classes:
            lut[c.id] = c.flip
        return lut


def _data_text(name: str) -> str:
    return resources.files("data_engine").joinpath("data", name).read_text(encoding="utf-8")


@functools.cache
def _keypoint_tables() -> tuple[tuple[Keypoint, ...], tuple[tuple[int, int], ...]]:
    rows: list[tuple[int, str, float, str, str]] = []
    links: list[tuple[str, str]] = []
    for line in _data_text("goliath_keypoints.txt").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if cols[0].startswith("L"):
            links.append((cols[1], cols[2]))
        elif cols[0] == "F":
            continue  # flip pairs are derived from the swap column; the F rows repeat them
        else:
            index, name, sigma, swap, group = cols
            rows.append((int(index), name, float(sigma), swap, _GROUP_ALIASES.get(group, group)))
    by_name = {name: index for index, name, *_ in rows}
    keypoints = tuple(
        Keypoint(index=i, name=name, group=group, flip=by_name[swap] if swap else i, sigma=sigma)  # type: ignore[arg-type]
        for i, name, sigma, swap, group in rows
    )
    skeleton = tuple((by_name[a], by_name[b]) for a, b in links)
    return keypoints, skeleton


def keypoints() -> tuple[Keypoint, ...]:
    """The 308 Goliath keypoints in index order."""
    return _keypoint_tables()[0]


def skeleton() -> tuple[tuple[int, int], ...]:
    """The 65 skeleton links as index pairs."""
    return _keypoint_tables()[1]


@functools.cache
def keypoint_index() -> dict[str, int]:
    """Keypoint name -> index."""
    return {k.name: k.index for k in keypoints()}


def flip_indices() -> np.ndarray:
    """(308,) int64: `kpts[flip_indices()]` mirrors a left/right-labelled keypoint array."""
    return np.array([k.flip for k in keypoints()], dtype=np.int64)


def sigmas() -> np.ndarray:
    """(308,) float64 OKS sigmas."""
    return np.array([k.sigma for k in keypoints()], dtype=np.float64)


@functools.cache
def _subsets() -> dict[str, tuple[int, ...]]:
    kps = keypoints()
    idx = keypoint_index()

    def group(*groups: str) -> tuple[int, ...]:
        return tuple(k.index for k in kps if k.group in groups)

    face = tuple(sorted(group("face") + tuple(idx[n] for n in COCO_FACE_NAMES)))
    return {
        "all": tuple(range(len(kps))),
        "coco17": tuple(idx[n] for n in COCO17_NAMES),
        "body": group("body"),
        "feet": group("feet"),
        "left_hand": group("left_hand"),
        "right_hand": group("right_hand"),
        "hands": group("left_hand", "right_hand"),
        "extra": group("extra"),
        "face": face,
        "body+feet": group("body", "feet"),
        "body+feet+hands": group("body", "feet", "left_hand", "right_hand"),
    }


SUBSET_NAMES: tuple[str, ...] = (
    "all",
    "coco17",
    "body",
    "feet",
    "left_hand",
    "right_hand",
    "hands",
    "extra",
    "face",
    "body+feet",
    "body+feet+hands",
)


def subset(name: str) -> np.ndarray:
    """Goliath indices of a named keypoint subset, in the subset's own order (COCO order for `coco17`).

    Raises ValueError naming the valid subsets for an unknown name.
    """
    table = _subsets()
    if name not in table:
        raise ValueError(f"unknown keypoint subset {name!r}; choose one of: {', '.join(SUBSET_NAMES)}")
    return np.array(table[name], dtype=np.int64)


def subset_names(name: str) -> list[str]:
    kps = keypoints()
    return [kps[i].name for i in subset(name)]


def subset_flip_indices(name: str) -> np.ndarray:
    """Flip permutation within a subset: `kpts_subset[perm]` mirrors it. Every subset here is closed
    under flipping (a left point's right partner is in the same subset); an open one is an error."""
    members = subset(name)
    position = {int(g): i for i, g in enumerate(members)}
    try:
        return np.array([position[keypoints()[int(g)].flip] for g in members], dtype=np.int64)
    except KeyError as missing:
        raise ValueError(f"subset {name!r} is not closed under left/right flip (missing {missing})") from None


def subset_skeleton(name: str) -> list[tuple[int, int]]:
    """Skeleton links whose two ends are both in the subset, as positions within the subset."""
    position = {int(g): i for i, g in enumerate(subset(name))}
    return [(position[a], position[b]) for a, b in skeleton() if a in position and b in position]


def subset_sigmas(name: str) -> np.ndarray:
    return sigmas()[subset(name)]


@functools.cache
def _vocabularies() -> dict[str, Vocabulary]:
    goliath: list[tuple[int, str, float, tuple[int, int, int]]] = []
    lip: list[tuple[int, str, float]] = []
    swaps: dict[str, dict[int, int]] = {"goliath28": {}, "lip20": {}}
    section = "goliath28"
    for line in _data_text("seg_classes.txt").splitlines():
        if line.startswith("#"):
            # Swap lines read like "...: 4<->13 (Left_Foot/Right_Foot), 5<->14 ...".
            if "swap" in line.lower():
                target = "lip20" if "LIP" in line else "goliath28"
                for token in line.split(":", 1)[1].split(","):
                    a, b = token.strip().split(" ")[0].split("<->")
                    swaps[target][int(a)] = int(b)
                    swaps[target][int(b)] = int(a)
            continue
        if not line.strip():
            continue
        cols = line.split("\t")
        if cols[0].startswith("O"):
            section = "original"
        elif cols[0].startswith("S"):
            lip.append((int(cols[0][1:]), cols[1], float(cols[2])))
        elif section == "goliath28":
            rgb = tuple(int(v) for v in json.loads(cols[3]))
            goliath.append((int(cols[0]), cols[1], float(cols[2]), rgb))  # type: ignore[arg-type]
    goliath_classes = tuple(
        SegClass(id=i, name=n, color=c, weight=w, flip=swaps["goliath28"].get(i, i)) for i, n, w, c in goliath
    )
    lip_palette = _lip_palette(len(lip))
    lip_classes = tuple(
        SegClass(id=i, name=n, color=lip_palette[i], weight=w, flip=swaps["lip20"].get(i, i)) for i, n, w in lip
    )
    return {
        "goliath28": Vocabulary("goliath28", goliath_classes),
        "lip20": Vocabulary("lip20", lip_classes),
        "sapiens2_29": _sapiens2_vocabulary(goliath_classes),
    }


# Sapiens2's 29 segmentation classes in its logits' order (facebookresearch/sapiens2 docs/SEG.md; the hub
# configs' id2label). Every class but Eyeglass is a goliath28 class and keeps its colour, CE weight and mirror;
# Eyeglass (symmetric) gets its own colour and the weight of goliath28's small classes (ours, not Meta's).
SAPIENS2_29_NAMES: tuple[str, ...] = (
    "Background", "Apparel", "Eyeglass", "Face_Neck", "Hair", "Left_Foot", "Left_Hand", "Left_Lower_Arm",
    "Left_Lower_Leg", "Left_Shoe", "Left_Sock", "Left_Upper_Arm", "Left_Upper_Leg", "Lower_Clothing", "Right_Foot",
    "Right_Hand", "Right_Lower_Arm", "Right_Lower_Leg", "Right_Shoe", "Right_Sock", "Right_Upper_Arm",
    "Right_Upper_Leg", "Torso", "Upper_Clothing", "Lower_Lip", "Upper_Lip", "Lower_Teeth", "Upper_Teeth", "Tongue",
)  # fmt: skip
_EYEGLASS = SegClass(id=2, name="Eyeglass", color=(255, 255, 128), weight=10.0, flip=2)


def _sapiens2_vocabulary(goliath: tuple[SegClass, ...]) -> Vocabulary:
    by_name = {c.name: c for c in goliath}
    index = {n: i for i, n in enumerate(SAPIENS2_29_NAMES)}
    classes = []
    for i, name in enumerate(SAPIENS2_29_NAMES):
        if name == _EYEGLASS.name:
            classes.append(_EYEGLASS)
            continue
        src = by_name[name]
        mirror = index[goliath[src.flip].name]
        classes.append(SegClass(id=i, name=name, color=src.color, weight=src.weight, flip=mirror))
    return Vocabulary("sapiens2_29", tuple(classes))


def _lip_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL-VOC bit-interleaved colour map that LIP/CIHP tools use (class 0 is black)."""
    colors = []
    for label in range(n):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return colors


VOCABULARY_NAMES: tuple[str, ...] = ("goliath28", "lip20", "sapiens2_29")
VocabularyName = Literal["goliath28", "lip20", "sapiens2_29"]


def vocabulary(name: str) -> Vocabulary:
    vocabs = _vocabularies()
    if name not in vocabs:
        raise ValueError(f"unknown class vocabulary {name!r}; choose one of: {', '.join(VOCABULARY_NAMES)}")
    return vocabs[name]


def schema_dict() -> dict:
    """The whole schema as one JSON-serialisable object (the `hv schema --format json` output)."""
    kps = keypoints()

    def flip_name(k: Keypoint) -> str | None:
        return None if k.flip == k.index else kps[k.flip].name

    return {
        "keypoints": [
            {"index": k.index, "name": k.name, "group": k.group, "flip": flip_name(k), "sigma": k.sigma} for k in kps
        ],
        "skeleton": [[kps[a].name, kps[b].name] for a, b in skeleton()],
        "subsets": {name: [int(i) for i in subset(name)] for name in SUBSET_NAMES},
        "vocabularies": {
            name: [
                {
                    "id": c.id,
                    "name": c.name,
                    "color": list(c.color),
                    "weight": c.weight,
                    "flip": None if c.flip == c.id else c.flip,
                }
                for c in vocabulary(name).classes
            ]
            for name in VOCABULARY_NAMES
        },
    }


def summary_text() -> str:
    """A human summary: keypoint counts per group, subsets and class lists."""
    kps = keypoints()
    lines = [f"keypoints: {len(kps)} (Goliath), skeleton links: {len(skeleton())}"]
    for g in GROUPS:
        lines.append(f"  {g:<11} {sum(k.group == g for k in kps):>4}")
    lines.append("subsets:")
    for name in SUBSET_NAMES:
        lines.append(f"  {name:<16} {len(subset(name)):>4}")
    for name in VOCABULARY_NAMES:
        vocab = vocabulary(name)
        lines.append(f"classes {name}: {len(vocab)}")
        for c in vocab.classes:
            mirror = f"  <-> {vocab.classes[c.flip].name}" if c.flip != c.id else ""
            lines.append(f"  {c.id:>3} {c.name:<16} w={c.weight:<5g} rgb={c.color}{mirror}")
    return "\n".join(lines)
