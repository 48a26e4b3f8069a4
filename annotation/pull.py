"""Pull finished annotations into annotated shards: the original image and `json`, plus `pose.json` /
`seg.png` (or the person boxes for a bbox project), under the same key.

    hv annotate pull --project people-pose --out runs/annotated/pose
    hv annotate pull --project people-seg --out runs/annotated/seg --all     # every annotator's, for QA

Several annotations on one task: the latest (by update time) becomes `pose.json` / `seg.png`. With
`--all`, every annotation is also written as `ann<ID>.pose.json` / `ann<ID>.seg.png` beside it, and
`json` lists them under `annotations`; `json.annotation` always names the one chosen. Cancelled
(skipped) annotations are ignored; tasks without a finished annotation are counted, not written.

Which originals are read: only the shards the project was pushed from (push records them beside its
images), or those named with `--shards`; a task whose data names any other path or URI is not followed
but listed in the report with the reason.

Two passes keep memory flat for big projects: the tasks are streamed page by page into a spool file
(key -> offset), then the original shards are read in order and each annotated sample is rewritten.
Everything is written under a hidden folder inside `--out` and moved into place only when the pull
succeeds, so a failure (server down, killed job) leaves no partial output.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotation import convert
from annotation.client import Studio
from annotation.config import AnnotateConfig
from annotation.errors import AnnotationError
from annotation.push import member_text, project_folder, project_kind, read_pushed_shards, resolve_media_root
from data_engine import shards
from data_engine.config import save_config, to_dict
from data_engine.sample import SampleError, decode, encode, encode_pose, encode_seg

SHARD_PREFIX = "annotated"
REPORT_NAME = "pull-report.json"
CONFIG_NAME = "annotate-config.yaml"


@dataclass
class PullReport:
    project_id: int = 0
    tasks: int = 0
    unfinished: int = 0
    written: int = 0
    annotations: int = 0
    shards: list[str] = field(default_factory=list)
    problems: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # key -> findings
    bad: list[dict[str, Any]] = field(default_factory=list)  # {key, shard, reason}: samples not written

    def summary(self) -> str:
        flagged = sum(1 for v in self.problems.values() if v)
        return (
            f"project {self.project_id}: {self.tasks} tasks, {self.written} annotated samples written "
            f"({self.annotations} annotations), {self.unfinished} unfinished, {len(self.bad)} not written, "
            f"{flagged} with validation findings"
        )


def finished_annotations(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Non-cancelled annotations, oldest first (by update time, then id)."""
    anns = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    return sorted(anns, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), int(a.get("id", 0))))


def labels_of(annotation: dict, data: dict, kind: str, config: AnnotateConfig) -> tuple[dict[str, Any], list]:
    """One annotation's labels as sample parts: {"pose": Pose} / {"seg": array} / {"persons": [...]}."""
    width, height = int(data["width"]), int(data["height"])
    results = annotation.get("result") or []
    if kind == "seg":
        seg, problems = convert.results_to_seg(
            results, width, height, data.get("vocabulary", config.vocabulary), config.seg_overlap
        )
        return {"seg": seg}, problems
    keypoint_set = data.get("keypoint_set", config.keypoint_set)
    pose, problems = convert.results_to_pose(results, width, height, keypoint_set)
    if kind == "bbox":
        persons = [{"bbox": [float(v) for v in p.bbox], "score": 1.0, "detector": "label-studio"} for p in pose.persons]
        problems = [p for p in problems if p.kind != "box_without_keypoints"]  # a bbox project has no keypoints
        return {"persons": persons}, problems
    return {"pose": pose}, problems


def pull(
    studio: Studio,
    title: str,
    out_dir: Path,
    config: AnnotateConfig,
    keep_all: bool = False,
    shard_override: list[str] | None = None,
    progress: bool = True,
) -> PullReport:
    if out_dir.exists() and any(out_dir.glob(f"{SHARD_PREFIX}-*.tar")):
        raise AnnotationError(f"{out_dir} already holds annotated shards; pull into a new --out folder")
    override = _index_override(shard_override) if shard_override else None
    studio.check()
    project = studio.require_project(title)
    pushed = (
        None
        if override is not None
        else read_pushed_shards(project_folder(resolve_media_root(config.media_root), title))
    )
    kind = project_kind(project.get("label_config", ""))
    report = PullReport(project_id=int(project["id"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = out_dir / f".pull-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        _pull_into(studio, stage, kind, config, keep_all, override, pushed, report, progress)
        for name in sorted(os.listdir(stage)):
            if name.endswith(".tar"):
                os.replace(stage / name, out_dir / name)
        report.shards = [str(out_dir / Path(p).name) for p in report.shards]
        save_config(config, out_dir / CONFIG_NAME)
        _write_json(out_dir / REPORT_NAME, {"project": title, "config": to_dict(config), **report.__dict__})
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _pull_into(
    studio: Studio,
    stage: Path,
    kind: str,
    config: AnnotateConfig,
    keep_all: bool,
    override: dict[str, str] | None,
    pushed: set[str] | None,
    report: PullReport,
    progress: bool,
) -> None:
    from tqdm import tqdm

    # Pass 1: spool finished tasks to disk, remember where each sample's original lives.
    spool_path = stage / "tasks.jsonl"
    offsets: dict[str, int] = {}
    by_shard: dict[str, list[str]] = defaultdict(list)
    with open(spool_path, "wb") as spool:
        for task in tqdm(
            studio.iter_tasks(report.project_id, with_annotations=True, page_size=config.page_size),
            desc="export",
            unit="task",
            disable=not progress,
        ):
            report.tasks += 1
            anns = finished_annotations(task)
            if not anns:
                report.unfinished += 1
                continue
            data = task.get("data", {})
            key = str(data.get("key"))
            shard = override.get(key) if override is not None else data.get("shard")
            if not shard:
                report.bad.append({"key": key, "shard": None, "reason": "original sample not found in --shards"})
                continue
            if pushed is not None and (not isinstance(shard, str) or shard not in pushed):
                report.bad.append(
                    {
                        "key": key,
                        "shard": str(shard)[:300],
                        "reason": "the task names a shard this project was not pushed from; not opened",
                    }
                )
                continue
            offsets[key] = spool.tell()
            by_shard[shard].append(key)
            record = {"task_id": task["id"], "data": data, "annotations": anns if keep_all else anns[-1:]}
            spool.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")

    # Pass 2: each original shard once, in order; rewrite the annotated samples.
    with (
        open(spool_path, "rb") as spool,
        shards.ShardWriter(str(stage / SHARD_PREFIX), max_count=config.shard_max_count) as writer,
    ):
        for shard, keys in tqdm(by_shard.items(), desc="write", unit="shard", disable=not progress):
            wanted = set(keys)
            try:
                for members in shards.iter_members(shard):
                    key = member_text(members["__key__"])
                    if key not in wanted:
                        continue
                    wanted.discard(key)
                    spool.seek(offsets[key])
                    record = json.loads(spool.readline())
                    try:
                        out = _annotated_members(members, record, kind, config, keep_all, report)
                    except (SampleError, ValueError, KeyError) as e:
                        report.bad.append({"key": key, "shard": shard, "reason": str(e)})
                        continue
                    writer.write(out)
                    report.written += 1
                    report.annotations += len(record["annotations"])
            except (shards.ShardError, FileNotFoundError, OSError) as e:
                report.bad.extend(
                    {"key": k, "shard": shard, "reason": f"cannot read the original: {e}"} for k in sorted(wanted)
                )
                continue
            report.bad.extend(
                {"key": k, "shard": shard, "reason": "key not found in its original shard"} for k in sorted(wanted)
            )
    report.shards = [info.path for info in writer.shards]
    spool_path.unlink()


def _annotated_members(
    members: dict[str, bytes], record: dict, kind: str, config: AnnotateConfig, keep_all: bool, report: PullReport
) -> dict[str, bytes]:
    sample = decode(members)
    data, anns = record["data"], record["annotations"]
    if (int(data["width"]), int(data["height"])) != (sample.width, sample.height):
        raise ValueError(
            f"task says {data['width']}x{data['height']}, the original image is {sample.width}x{sample.height}"
        )
    extra: dict[str, bytes] = {}
    findings: list[dict[str, str]] = []
    chosen: dict[str, Any] = {}
    for ann in anns:
        labels, problems = labels_of(ann, data, kind, config)
        findings.extend({**p.as_dict(), "annotation": str(ann["id"])} for p in problems)
        chosen = labels  # the list is oldest first: the last one is the latest
        if keep_all and "pose" in labels:
            extra[f"ann{ann['id']}.pose.json"] = encode_pose(labels["pose"])
        elif keep_all and "seg" in labels:
            extra[f"ann{ann['id']}.seg.png"] = encode_seg(labels["seg"], data.get("vocabulary", config.vocabulary))
    latest = anns[-1]
    sample.meta["annotation"] = {
        "project_id": report.project_id,
        "task_id": record["task_id"],
        "annotation_id": latest["id"],
        "completed_by": latest.get("completed_by"),
        "updated_at": latest.get("updated_at"),
    }
    if keep_all:
        sample.meta["annotations"] = [
            {"annotation_id": a["id"], "completed_by": a.get("completed_by"), "updated_at": a.get("updated_at")}
            for a in anns
        ]
    if "pose" in chosen:
        sample.pose = chosen["pose"]
    elif "seg" in chosen:
        sample.seg = chosen["seg"]
        sample.meta["seg_vocabulary"] = data.get("vocabulary", config.vocabulary)
    else:
        sample.meta["persons"] = chosen.get("persons", [])
    if findings:
        report.problems[sample.key] = findings
    out = encode(sample)
    out.update(extra)
    return out


def _index_override(paths: list[str]) -> dict[str, str]:
    """key -> shard for `--shards`: where the originals live now, if they moved since push."""
    index: dict[str, str] = {}
    for path in shards.expand(paths):
        for members in shards.iter_members(path):
            index.setdefault(member_text(members["__key__"]), path)
    return index


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)
