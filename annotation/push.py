"""Push shards to Label Studio: one task per sample, the sample key in the task data.

    export LABEL_STUDIO_URL=http://127.0.0.1:8080 LABEL_STUDIO_API_KEY=...
    export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=runs/label-studio/media   # what `hv annotate serve` prints
    hv annotate push 'runs/curated/*.tar' --project people-pose --task pose

How images reach the annotators' browsers: local-files storage. Each image is copied once, as it is in
the shard, to `<media_root>/hv/<project>/<key>.<ext>`, and the task points at
`/data/local-files/?d=hv/<project>/<key>.<ext>`; a Local Files storage on that folder lets the server
serve it. Why: no size limit, no re-encoding, no image bytes in the server's database, and a re-push
rewrites nothing. Limits: the server must see the same folder (the same machine, or a shared mount whose
path is the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT), and that variable must be set when the
server starts. A team server elsewhere needs a shared mount, or a cloud bucket and storage (not built here).

The shards a project was pushed from are recorded in `<media_root>/hv/<project>/pushed-shards.json` (on
this side, not in the server): `pull` opens only those, never whatever path or URI a task's data names, so
a task edited through the API cannot make `pull` read an arbitrary file.

Idempotent: the keys already in the project are read first and skipped, so pushing again creates no
duplicate tasks. Tasks go in batches of `batch_size` per request with a progress bar.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotation import labeling
from annotation.client import Studio
from annotation.config import AnnotateConfig
from annotation.errors import AnnotationError
from data_engine import shards
from data_engine.sample import Sample, decode

MEDIA_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
MEDIA_SUBDIR = "hv"
PUSH_RECORD = "pushed-shards.json"


@dataclass
class PushReport:
    project_id: int = 0
    samples: int = 0
    created: int = 0
    already_there: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"project {self.project_id}: {self.samples} samples read, {self.created} tasks created, "
            f"{self.already_there} already there, {len(self.bad)} bad"
        )


def resolve_media_root(media_root: str) -> Path:
    root = media_root or os.environ.get(MEDIA_ROOT_ENV, "")
    if not root:
        raise AnnotationError(
            f"no media root: pass --media-root or set {MEDIA_ROOT_ENV} to the folder the Label Studio server "
            "serves local files from (`hv annotate serve` prints it)"
        )
    path = Path(root).resolve()
    if not path.is_dir():
        raise AnnotationError(f"media root {path} is not a folder")
    return path


def project_slug(title: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", title).strip("-.")
    if not slug:
        raise AnnotationError(f"project title {title!r} has no usable characters for a folder name")
    return slug


def project_kind(label_config: str) -> labeling.TaskType:
    """Which of our configs a project was made from, read from its control tags."""
    if f'name="{labeling.SEG}"' in label_config and "<BrushLabels" in label_config:
        return "seg"
    if "<KeyPointLabels" in label_config:
        return "pose"
    if f'name="{labeling.PERSON}"' in label_config:
        return "bbox"
    raise AnnotationError("the project's labeling config is not one `hv annotate config` makes")


def open_or_create_project(studio: Studio, title: str, task: labeling.TaskType, config: AnnotateConfig) -> dict:
    project = studio.find_project(title)
    if project is None:
        xml = labeling.label_config(task, config.keypoint_set, config.vocabulary)
        return studio.create_project(title, xml, description=f"humanvision {task} annotation")
    kind = project_kind(project.get("label_config", ""))
    if kind != task:
        raise AnnotationError(f"project {title!r} is a {kind} project; it cannot take {task} tasks")
    return project


def project_folder(media_root: Path, title: str) -> Path:
    return media_root / MEDIA_SUBDIR / project_slug(title)


def record_pushed_shards(folder: Path, shard_paths: list[str]) -> None:
    """Add `shard_paths` to the project's record (atomically): written before any task names them."""
    known = read_pushed_shards(folder) if (folder / PUSH_RECORD).exists() else set()
    record = {"shards": sorted(known | set(shard_paths))}
    tmp = folder / f".{PUSH_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(folder / PUSH_RECORD)


def read_pushed_shards(folder: Path) -> set[str]:
    path = folder / PUSH_RECORD
    try:
        record = json.loads(path.read_text())
        shards_pushed = record["shards"]
        if not isinstance(shards_pushed, list) or not all(isinstance(p, str) for p in shards_pushed):
            raise TypeError("shards is not a list of paths")
    except FileNotFoundError:
        raise AnnotationError(
            f"no push record at {path}: this project was not pushed from here (or with an older version); "
            "name its original shards with --shards"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AnnotationError(
            f"push record {path} is unreadable ({e}); name the original shards with --shards"
        ) from None
    return set(shards_pushed)


def _write_once(path: Path, data: bytes) -> None:
    if path.exists() and path.stat().st_size == len(data):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def push(
    studio: Studio,
    shard_paths: list[str],
    title: str,
    task: labeling.TaskType,
    config: AnnotateConfig,
    progress: bool = True,
) -> PushReport:
    from tqdm import tqdm

    files = shards.expand(shard_paths)  # a pattern that matches nothing fails here, before the server is touched
    media_root = resolve_media_root(config.media_root)
    studio.check()
    project = open_or_create_project(studio, title, task, config)
    report = PushReport(project_id=int(project["id"]))
    folder = project_folder(media_root, title)
    folder.mkdir(parents=True, exist_ok=True)
    record_pushed_shards(folder, files)
    studio.ensure_local_storage(report.project_id, str(folder))
    known = {
        str(t.get("data", {}).get("key")) for t in studio.iter_tasks(report.project_id, page_size=config.page_size)
    }

    read = shards.ReadReport()
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if batch:
            report.created += len(studio.import_tasks(report.project_id, batch))
            batch.clear()

    samples = shards.iter_samples(files, policy=config.bad_samples, report=read, decoder=decode_with_shard)
    for shard_path, sample in tqdm(samples, desc="push", unit="sample", disable=not progress):
        report.samples += 1
        if sample.key in known:
            report.already_there += 1
            continue
        known.add(sample.key)
        image_path = folder / f"{sample.key}.{sample.image_format}"
        assert sample.image_bytes is not None  # decode keeps the bytes as received
        _write_once(image_path, sample.image_bytes)
        data = {
            labeling.IMAGE: f"/data/local-files/?d={image_path.relative_to(media_root).as_posix()}",
            "key": sample.key,
            "shard": shard_path,
            "width": sample.width,
            "height": sample.height,
            "hv_task": task,
            "keypoint_set": config.keypoint_set,
            "vocabulary": config.vocabulary,
            # The detector's boxes: the ML backend's top-down pose starts from them.
            "persons": [
                {"bbox": p["bbox"]} for p in sample.meta.get("persons", []) if isinstance(p, dict) and "bbox" in p
            ],
        }
        batch.append({"data": data})
        if len(batch) >= config.batch_size:
            flush()
    flush()
    report.bad = [{"shard": b.shard, "key": b.key, "reason": b.reason} for b in read.bad]
    return report


def decode_with_shard(members: dict[str, bytes]) -> tuple[str, Sample]:
    """(the shard it came from, the sample): tasks remember their shard so `pull` can find the original."""
    return member_text(members["__url__"]), decode(members)


def member_text(value: bytes | str) -> str:
    """`__key__` / `__url__` as text (bytes from older readers, str from newer)."""
    return value.decode() if isinstance(value, bytes) else str(value)
