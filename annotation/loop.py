"""`hv annotate loop`: one active-learning cycle — pull what annotators finished, fine-tune, pre-annotate the rest.

    hv annotate loop --project people-pose --checkpoint runs/finetune-pose --out runs/loop \
        loop.finetune_config=configs/finetune/pose_sapiens_0.3b.yaml 'loop.finetune_overrides=[steps=2000]'

One call, one cycle, in `OUT/cycle-NNN/`:
1. pull: every finished annotation of the project, as annotated shards (`annotation.pull`, the latest annotation
   of each task) in `cycle-NNN/pull/`. The cycle records which tasks and annotations are new since the last
   cycle (a task whose latest annotation id or update time changed); with nothing new it says so, writes
   nothing and exits 0.
2. train: `hv train finetune` (a child process: the real command, its launcher and checks) on all pulled data,
   from the current model — the newest finished cycle's, else `--checkpoint` — with the model settings of that
   checkpoint, the project's task, and `loop.finetune_config` / `loop.finetune_overrides` for the rest. The new
   model is `cycle-NNN/model.safetensors`.
3. pre-annotate: the new model predicts every task nobody has finished (`annotation.predict`, model version
   `<OUT name>-cycle-NNN`); the project's model version is set to it, so Label Studio shows these predictions and
   its `predictions_score` column averages their scores (the mean keypoint confidence, or the mean class
   probability); a data manager tab "hv loop: least confident first" lists unlabelled tasks by that score,
   ascending, for annotators.

`cycle-NNN/cycle.json` (written atomically after each step) records what was pulled (task and annotation ids,
counts), trained (init, steps, checkpoint) and pushed (model version, counts, tab); `status: done` marks the
cycle finished and `OUT/cycles.jsonl` is rewritten from those records. A killed cycle is resumed by the same
command: finished steps are skipped, a half-done step is redone from scratch (pull writes a new folder;
predictions already made for the model version are not made twice). One cycle runs at a time per loop folder
(a lock file, `OUT/.loop.lock`): a second one fails at once instead of training beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from annotation.client import API_KEY_ENV, Studio
from annotation.config import AnnotateConfig, LaunchMode
from annotation.errors import AnnotationError
from annotation.pull import finished_annotations
from annotation.push import member_text, project_folder, project_kind, read_pushed_shards, resolve_media_root
from data_engine.outputs import prepare_output_dir

log = logging.getLogger(__name__)

RECORD = "cycle.json"
LOG = "cycles.jsonl"
MODEL = "model.safetensors"
LOCK = ".loop.lock"
VIEW_TITLE = "hv loop: least confident first"


def cycle_dir(out_dir: Path, number: int) -> Path:
    return out_dir / f"cycle-{number:03d}"


def read_record(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise AnnotationError(f"cycle record {folder / RECORD} is unreadable ({e}); remove that cycle folder") from None


def done_cycles(out_dir: Path) -> list[dict[str, Any]]:
    """The records of finished cycles, oldest first."""
    records = [read_record(f) for f in sorted(out_dir.glob("cycle-[0-9][0-9][0-9]")) if f.is_dir()]
    return [r for r in records if r.get("status") == "done"]


def current_model(out_dir: Path, checkpoint: str) -> str:
    """The model a new cycle starts from: the newest finished cycle's, else `checkpoint`."""
    done = done_cycles(out_dir)
    return str(done[-1]["trained"]["checkpoint"]) if done else checkpoint


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def _save(folder: Path, record: dict[str, Any]) -> None:
    _write_json(folder / RECORD, record)
    lines = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in done_cycles(folder.parent))
    tmp = folder.parent / f".{LOG}.tmp"
    tmp.write_text(lines)
    tmp.replace(folder.parent / LOG)


def labelled_now(studio: Studio, project_id: int, page_size: int) -> dict[str, list]:
    """task id -> [annotation id, updated_at] of its latest finished annotation, for every labelled task."""
    state: dict[str, list] = {}
    for task in studio.iter_tasks(project_id, with_annotations=True, page_size=page_size):
        anns = finished_annotations(task)
        if anns:
            state[str(task["id"])] = [int(anns[-1]["id"]), anns[-1].get("updated_at")]
    return state


def _pulled(shard_paths: list[str]) -> dict[str, list]:
    """task id -> [annotation id, updated_at] of what the pulled shards hold (their `json.annotation`)."""
    from data_engine import shards

    state: dict[str, list] = {}
    for path in shard_paths:
        for members in shards.iter_members(path):
            meta = json.loads(member_text(members["json"]))["annotation"]
            state[str(meta["task_id"])] = [int(meta["annotation_id"]), meta.get("updated_at")]
    return state


def check_checkpoint(checkpoint: str, kind: str, vocabulary: str = "") -> Any:
    """The ModelSpec of `checkpoint`; AnnotationError when it is missing or has no head for a `kind` project
    (for seg: no head over the project's `vocabulary`)."""
    from train.models.weights import CheckpointError, read_model_spec, resolve_weights_file

    try:
        spec = read_model_spec(resolve_weights_file(checkpoint))
    except (FileNotFoundError, CheckpointError, OSError, ValueError) as e:
        raise AnnotationError(f"checkpoint {checkpoint}: {e}") from None
    if kind not in spec.tasks:
        raise AnnotationError(
            f"checkpoint {checkpoint} has no {kind} head for a {kind} project (its tasks: {', '.join(spec.tasks)})"
        )
    if kind == "seg" and vocabulary and spec.vocabulary != vocabulary:
        raise AnnotationError(
            f"checkpoint {checkpoint} has a seg head over {spec.vocabulary}; the project labels {vocabulary}"
        )
    return spec


def finetune_command(init: str, spec: Any, kind: str, data: Path, run_dir: Path, config: AnnotateConfig) -> list[str]:
    """`hv train finetune` as a child process: the checkpoint's model settings, then the loop's overrides."""
    loop = config.loop
    h, w = spec.image_size
    model = [
        f"task={kind}",
        f"model.arch={spec.arch}",
        f"model.image_size=[{h},{w}]",
        f"model.depth={'null' if spec.depth is None else spec.depth}",
        f"model.head_channels={'null' if spec.head_channels is None else spec.head_channels}",
        f"pose.keypoint_set={spec.keypoint_set}",
        f"seg.vocabulary={spec.vocabulary}",
        f"data.shards={data}",
    ]
    launch = {
        LaunchMode.in_process: ["--in-process"],
        LaunchMode.cpus: ["--cpus", str(loop.processes)],
        LaunchMode.gpus: ["--gpus", str(loop.processes)],
    }[loop.launch]
    command = [sys.executable, "-m", "humanvision_cli", "train", "finetune", "--config", loop.finetune_config]
    return [*command, "--out", str(run_dir), "--init", init, *launch, *model, *loop.finetune_overrides]


@contextlib.contextmanager
def _only_cycle(out_dir: Path) -> Iterator[None]:
    """One cycle at a time per loop folder (a backend's trigger and a hand-run loop may share it)."""
    with open(out_dir / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AnnotationError(f"another loop cycle is running in {out_dir}; wait for it to finish") from None
        yield


def run_cycle(
    studio: Studio, title: str, checkpoint: str, out_dir: Path, config: AnnotateConfig, progress: bool = False
) -> dict[str, Any]:
    """One cycle (or the rest of an interrupted one); returns its record (`status`: done or nothing-new).
    Paths in the record are absolute, so a backend started elsewhere can follow the folder."""
    out_dir, checkpoint = out_dir.resolve(), str(Path(checkpoint).resolve())
    studio.check()
    project = studio.require_project(title)
    kind = project_kind(project.get("label_config", ""))
    if kind not in ("pose", "seg"):
        raise AnnotationError(f"project {title!r} is a {kind} project; the loop fine-tunes pose or seg models")
    if not Path(config.loop.finetune_config).is_file():
        raise AnnotationError(f"loop.finetune_config {config.loop.finetune_config!r} is not a file")
    try:
        prepare_output_dir(str(out_dir), "loop folder (--out)")
    except ValueError as e:  # OutputPathError: a file, or not writable
        raise AnnotationError(str(e)) from None
    with _only_cycle(out_dir):
        return _cycle(studio, title, project, kind, checkpoint, out_dir, config, progress)


def _cycle(
    studio: Studio,
    title: str,
    project: dict[str, Any],
    kind: str,
    checkpoint: str,
    out_dir: Path,
    config: AnnotateConfig,
    progress: bool,
) -> dict[str, Any]:
    from annotation.backend_model import served_config
    from annotation.model_predictor import model_predictor
    from annotation.predict import predict
    from annotation.pull import pull

    project_id = int(project["id"])
    done = done_cycles(out_dir)
    number = int(done[-1]["cycle"]) + 1 if done else 1
    folder = cycle_dir(out_dir, number)
    record = read_record(folder) if folder.is_dir() else {}
    init = record.get("init") or current_model(out_dir, checkpoint)
    spec = check_checkpoint(init, kind, served_config(project.get("label_config", ""))[1] if kind == "seg" else "")
    before = done[-1]["pulled"]["annotations"] if done else {}

    if "pulled" not in record:
        now = labelled_now(studio, project_id, config.page_size)
        new = sorted((t for t, a in now.items() if before.get(t) != a), key=int)
        if not new:
            log.info("hv annotate loop: no annotations finished since the last cycle; nothing to train")
            return {"cycle": None, "status": "nothing-new", "project": title, "labelled": len(now)}
        folder.mkdir(parents=True, exist_ok=True)
        record = {"cycle": number, "project": title, "project_id": project_id, "task": kind, "init": init}
        shutil.rmtree(folder / "pull", ignore_errors=True)  # a pull killed half-way: start it again
        report = pull(studio, title, folder / "pull", config, progress=progress)
        pulled = _pulled(report.shards)
        if not pulled:
            raise AnnotationError(
                f"none of the {len(now)} labelled tasks could be written as shards: see {folder / 'pull'}"
            )
        record["pulled"] = {
            "tasks": len(pulled),
            "new_task_ids": sorted((int(t) for t, a in pulled.items() if before.get(t) != a)),
            "annotations": pulled,
            "not_written": report.bad,
            "shards": report.shards,
        }
        _save(folder, record)
        log.info(
            "cycle %d: pulled %d labelled tasks (%d new)", number, len(pulled), len(record["pulled"]["new_task_ids"])
        )

    if "trained" not in record:
        run_dir = folder / "train"
        shutil.rmtree(run_dir, ignore_errors=True)
        command = finetune_command(init, spec, kind, folder / "pull", run_dir, config)
        log.info("cycle %d: fine-tuning from %s", number, init)
        start = time.monotonic()
        env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}  # training needs no Label Studio key
        code = subprocess.run(command, env={**env, "PYTHONUNBUFFERED": "1"}).returncode
        if code != 0 or not (run_dir / MODEL).is_file():
            raise AnnotationError(f"cycle {number}: `hv train finetune` failed (exit code {code}); see {run_dir}")
        os.replace(run_dir / MODEL, folder / MODEL)
        record["trained"] = {
            "init": init,
            "steps": _steps(run_dir),
            "checkpoint": str(folder / MODEL),
            "seconds": round(time.monotonic() - start, 1),
            "run": str(run_dir),
        }
        _save(folder, record)

    if "pushed" not in record:
        version = f"{out_dir.resolve().name}-cycle-{number:03d}"
        try:
            predictor = model_predictor(
                str(folder / MODEL), kind, device=config.loop.device, keypoint_threshold=config.loop.keypoint_threshold
            )
        except (OSError, ValueError) as e:
            raise AnnotationError(f"cycle {number}: cannot load the new model: {e}") from None
        shard_paths = sorted(read_pushed_shards(project_folder(resolve_media_root(config.media_root), title)))
        report = predict(
            studio, shard_paths, title, kind, config, version, predictor, progress=progress, only_unlabelled=True
        )
        if report.created or report.already_there:
            studio.set_model_version(project_id, version)
        view = studio.ensure_view(project_id, VIEW_TITLE, least_confident_first())
        record["pushed"] = {
            "model_version": version,
            "created": report.created,
            "already_there": report.already_there,
            "labelled": report.labelled,
            "skipped": report.skipped,
            "view": view,
        }
        record["status"] = "done"
        _save(folder, record)
    return record


def least_confident_first() -> dict[str, Any]:
    """A data manager tab: tasks without annotations, lowest prediction score (of the project's version) first."""
    unlabelled = {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}
    return {"filters": {"conjunction": "and", "items": [unlabelled]}, "ordering": ["tasks:predictions_score"]}


def _steps(run_dir: Path) -> int | None:
    import yaml

    try:
        return int(yaml.safe_load((run_dir / "config.yaml").read_text())["steps"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None
