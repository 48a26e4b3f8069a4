"""Annotation QA: agreement between annotators and validation problems, per task and overall.

    hv annotate qa --project people-pose --out runs/qa/people-pose.json

Agreement, for every pair of finished annotations of a task:
- pose: persons are matched greedily by OKS over all keypoints; then per keypoint group (body, feet,
  left_hand, right_hand, extra, face) OKS = mean_i exp(-d_i^2 / (2 s k_i^2)), k_i = 2 sigma_i (the
  schema's sigmas, COCO convention), s = the mean of the two person boxes' areas (symmetric in the
  pair), over the group's keypoints placed by either annotator; a keypoint placed by only one counts 0.
- seg: IoU per class over the classes either annotator painted.
Validation (every finished annotation): keypoint outside the image, one label used twice for a person,
a person box without keypoints, unknown labels, undecodable or mis-sized brush masks.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from annotation.client import Studio
from annotation.config import AnnotateConfig
from annotation.pull import finished_annotations, labels_of
from annotation.push import project_kind
from data_engine import schema
from data_engine.sample import PersonPose


def group_positions(keypoint_set: str) -> dict[str, np.ndarray]:
    """Group name -> positions within the subset."""
    kps = schema.keypoints()
    positions: dict[str, list[int]] = defaultdict(list)
    for row, g in enumerate(schema.subset(keypoint_set)):
        positions[kps[int(g)].group].append(row)
    return {g: np.asarray(rows) for g, rows in positions.items()}


def keypoint_similarity(a: PersonPose, b: PersonPose, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per keypoint similarity (K,) in [0, 1] and the mask of keypoints placed by either annotator (K,)."""
    ka, kb = np.asarray(a.keypoints, np.float64), np.asarray(b.keypoints, np.float64)
    in_a, in_b = ka[:, 2] > 0, kb[:, 2] > 0
    area = 0.5 * (_area(a.bbox) + _area(b.bbox))
    d2 = ((ka[:, :2] - kb[:, :2]) ** 2).sum(axis=1)
    k2 = (2.0 * sigmas) ** 2
    sim = np.exp(-d2 / (2.0 * max(area, np.finfo(float).eps) * k2))
    sim = np.where(in_a & in_b, sim, 0.0)
    return sim, in_a | in_b


def _area(bbox: tuple[float, float, float, float]) -> float:
    return max(bbox[2] - bbox[0], 0.0) * max(bbox[3] - bbox[1], 0.0)


def pose_agreement(persons_a: list[PersonPose], persons_b: list[PersonPose], keypoint_set: str) -> dict[str, Any]:
    sigmas = schema.subset_sigmas(keypoint_set)
    groups = group_positions(keypoint_set)
    scored = []
    for i, pa in enumerate(persons_a):
        for j, pb in enumerate(persons_b):
            sim, placed = keypoint_similarity(pa, pb, sigmas)
            scored.append((float(sim[placed].mean()) if placed.any() else 0.0, i, j, sim, placed))
    scored.sort(key=lambda s: -s[0])
    used_a: set[int] = set()
    used_b: set[int] = set()
    per_group: dict[str, list[float]] = defaultdict(list)
    for overall, i, j, sim, placed in scored:
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        per_group["all"].append(overall)
        for g, rows in groups.items():
            if placed[rows].any():
                per_group[g].append(float(sim[rows][placed[rows]].mean()))
    return {
        "oks": {g: float(np.mean(v)) for g, v in per_group.items()},
        "matched_persons": len(used_a),
        "unmatched_persons": len(persons_a) + len(persons_b) - 2 * len(used_a),
    }


def seg_agreement(seg_a: np.ndarray, seg_b: np.ndarray, vocabulary: str) -> dict[str, Any]:
    names = schema.vocabulary(vocabulary).names
    iou: dict[str, float] = {}
    for class_id in sorted(set(np.unique(seg_a).tolist()) | set(np.unique(seg_b).tolist())):
        if class_id == schema.IGNORE_INDEX or class_id >= len(names):
            continue
        a, b = seg_a == class_id, seg_b == class_id
        iou[names[class_id]] = float((a & b).sum() / (a | b).sum())
    return {"iou": iou}


def qa(studio: Studio, title: str, config: AnnotateConfig) -> dict[str, Any]:
    studio.check()
    project = studio.require_project(title)
    kind = project_kind(project.get("label_config", ""))
    tasks_out: list[dict[str, Any]] = []
    problem_counts: Counter[str] = Counter()
    agreement_values: dict[str, list[float]] = defaultdict(list)
    n_tasks = n_annotated = n_multi = 0
    for task in studio.iter_tasks(int(project["id"]), with_annotations=True, page_size=config.page_size):
        n_tasks += 1
        anns = finished_annotations(task)
        if not anns:
            continue
        n_annotated += 1
        data = task.get("data", {})
        entry: dict[str, Any] = {
            "task_id": task["id"],
            "key": data.get("key"),
            "annotations": len(anns),
            "problems": [],
        }
        labels = []
        for ann in anns:
            parts, problems = labels_of(ann, data, kind, config)
            labels.append((ann["id"], parts))
            for p in problems:
                problem_counts[p.kind] += 1
                entry["problems"].append({**p.as_dict(), "annotation": ann["id"]})
        if len(anns) >= 2 and kind in ("pose", "seg"):
            n_multi += 1
            entry["pairs"] = []
            for (id_a, a), (id_b, b) in itertools.combinations(labels, 2):
                if kind == "pose":
                    pair = pose_agreement(a["pose"].persons, b["pose"].persons, a["pose"].keypoint_set)
                    for g, v in pair["oks"].items():
                        agreement_values[f"oks/{g}"].append(v)
                else:
                    pair = seg_agreement(a["seg"], b["seg"], data.get("vocabulary", config.vocabulary))
                    for c, v in pair["iou"].items():
                        agreement_values[f"iou/{c}"].append(v)
                entry["pairs"].append({"annotations": [id_a, id_b], **pair})
        if entry["problems"] or "pairs" in entry:
            tasks_out.append(entry)
    summary = {
        "tasks": n_tasks,
        "annotated_tasks": n_annotated,
        "tasks_with_several_annotations": n_multi,
        "tasks_with_problems": sum(1 for t in tasks_out if t["problems"]),
        "problems": dict(problem_counts),
        "agreement": {k: {"mean": float(np.mean(v)), "pairs": len(v)} for k, v in sorted(agreement_values.items())},
    }
    return {"project": title, "kind": kind, "summary": summary, "tasks": tasks_out}


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
