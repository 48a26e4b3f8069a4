"""`hv synth`: render scans and parametric bodies into WebDataset shards, on Ray, resumably.

    hv synth scans/ --out runs/synth --views 8 --size 1024x768 --units mm
    hv synth --bodies 100 --out runs/synth-bodies --seed 3 --backgrounds backgrounds/
    hv synth /shared/scans --out /shared/synth --ray-address auto workers=64   # on a cluster

Layout of `--out`:
    config.yaml                 the resolved config (a re-run must resolve to the same render settings)
    shards/{subject}-000000.tar one shard set per scan or body (closed every `shard_max_count` views)
    manifest/part-*.parquet     one row per finished subject, written as it finishes
    manifest.parquet            the merged manifest (latest row per subject)

On a cluster, `--out`, the scans and the backgrounds must be on a filesystem every node mounts at the
same path (NFS, Lustre, a FUSE-mounted bucket): workers write their shards directly.

Resume: a subject with a `done` or `rejected` row is skipped; any shards of an unfinished subject
(from a killed run) are deleted and the subject is rendered again from its own seed, so a re-run ends
with the same keys and no duplicates.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import time
import traceback
from dataclasses import dataclass
from typing import Literal

import numpy as np

from synth.config import SynthConfig, render_settings, to_yaml
from synth.manifest import FINAL_STATUSES, SynthManifestWriter, consolidate, latest, read_rows
from synth.subject import Subject, stable_fraction, subject_seed

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class SubjectTask:
    kind: Literal["scan", "body"]
    uri: str  # scan path, or anny://seed/S/body/I
    subject: str  # the subject id (shard prefix)
    index: int = 0  # body index
    fingerprint: str | None = None
    sha256: str | None = None  # of a scan file, when the planner hashed it


def split_of(subject_id: str, heldout_fraction: float) -> Split:
    """Per subject, never per view, so that no person lands in both splits."""
    return "heldout" if stable_fraction("split", subject_id) < heldout_fraction else "train"


def _fingerprint(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def plan(config: SynthConfig, done: dict[str, dict]) -> tuple[list[SubjectTask], list[dict]]:
    """The subjects still to render, and manifest rows for inputs refused before rendering."""
    from synth.scans import file_sha256, find_scans, scan_id

    tasks: list[SubjectTask] = []
    refused: list[dict] = []
    paths, missing = find_scans(config.scans)
    for item, reason in missing:
        refused.append(_row(f"missing-{_short_hash(item)}", "scan", item, "rejected", reason))
    known = {(r["uri"], r["fingerprint"]): r["subject"] for r in done.values() if r["kind"] == "scan"}
    seen: dict[str, str] = {}
    for path in paths:
        uri = os.path.abspath(path)
        fingerprint = _fingerprint(path)
        sha = None if (uri, fingerprint) in known else file_sha256(path)
        subject = known.get((uri, fingerprint)) or scan_id(path, sha)
        if subject in seen:
            reason = f"same content as {seen[subject]}: rendered once"
            refused.append(_row(f"{subject}-dup-{_short_hash(uri)}", "scan", uri, "rejected", reason))
            continue
        seen[subject] = uri
        if done.get(subject, {}).get("status") in FINAL_STATUSES:
            continue
        tasks.append(SubjectTask(kind="scan", uri=uri, subject=subject, fingerprint=fingerprint, sha256=sha))
    for i in range(config.bodies.count):
        subject = f"body-{config.seed}-{i:06d}"
        if done.get(subject, {}).get("status") in FINAL_STATUSES:
            continue
        tasks.append(SubjectTask(kind="body", uri=f"anny://seed/{config.seed}/body/{i}", subject=subject, index=i))
    return tasks, refused


def poses_per_body(config: SynthConfig) -> int:
    """ceil(views / bodies.views_per_pose): the views are spread evenly over them (`Subject.pose_of_view`)."""
    return -(-config.views // config.bodies.views_per_pose)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _row(subject: str, kind: str, uri: str, status: str, reason: str | None = None, **extra) -> dict:
    return {"subject": subject, "kind": kind, "uri": uri, "status": status, "reason": reason, **extra}


# --------------------------------------------------------------------------------------------- one worker


class RenderWorker:
    """Renders whole subjects. Holds one GL context and (when bodies are asked for) one anny model.

    Used directly in-process (`inline=true`) or as a Ray actor, one per CPU: a GL context and anny's
    model are too costly to build per view, and a context must stay on the thread that made it.
    """

    def __init__(self, config: SynthConfig, out_dir: str) -> None:
        self.config = config
        self.out_dir = out_dir
        self._renderer = None
        self._bodies = None
        self._backgrounds: list[str] | None = None

    def _get_renderer(self):
        if self._renderer is None:
            from synth.render import Renderer

            cam = self.config.camera
            self._renderer = Renderer(self.config.width, self.config.height, znear=cam.znear, zfar=cam.zfar)
        return self._renderer

    def _get_bodies(self):
        if self._bodies is None:
            from synth.bodies import BodyModel

            self._bodies = BodyModel(texture_size=self.config.bodies.texture_size)
        return self._bodies

    def run(self, task: SubjectTask) -> dict:
        from synth.scans import ScanError, load_scan

        started = time.perf_counter()
        row = _row(task.subject, task.kind, task.uri, "failed", fingerprint=task.fingerprint)
        row["views_requested"] = self.config.views
        row["split"] = split_of(task.subject, self.config.heldout_fraction)
        prefix = os.path.join(self.out_dir, "shards", task.subject)
        _delete_shards(prefix)  # a killed run may have left complete shards of this unfinished subject
        try:
            if task.kind == "scan":
                subject = load_scan(task.uri, self.config.scan, task.sha256)
                subject.id = task.subject
            else:
                poses = poses_per_body(self.config)
                subject = self._get_bodies().sample(task.index, self.config.seed, self.config.bodies, poses=poses)
            row["warnings"] = "; ".join(subject.warnings) or None
            shards, keys = self._render_subject(subject, prefix, row["split"])
        except ScanError as e:
            row.update(status="rejected", reason=str(e))
        except Exception as e:  # anything else: record it, keep the job going, retry on the next run
            _delete_shards(prefix)
            row.update(status="failed", reason=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")
        else:
            row.update(status="done", views_written=len(keys), shards=shards, keys=keys)
        row["seconds"] = time.perf_counter() - started
        return row

    def _render_subject(self, subject: Subject, prefix: str, split: Split) -> tuple[list[str], list[str]]:
        from data_engine.shards import ShardWriter

        renderer = self._get_renderer()
        loaded = renderer.load(subject.geometry)
        shown = 0  # the pose on the GPU; later poses replace its vertices and keep its textures
        keys: list[str] = []
        try:
            with ShardWriter(prefix, max_count=self.config.shard_max_count, start_index=0) as writer:
                for view in range(self.config.views):
                    pose = subject.pose_of_view(view, self.config.views)
                    if pose != shown:
                        renderer.repose(loaded, subject.poses[pose].geometry)
                        shown = pose
                    sample = self.render_view(subject, loaded, view, split)
                    writer.write(sample)
                    keys.append(sample.key)
            shards = [info.path for info in writer.shards]
        finally:
            renderer.unload(loaded)
        return shards, keys

    def render_view(self, subject: Subject, loaded, view: int, split: Split):
        from data_engine.sample import Sample, key_from_params
        from synth import annotate
        from synth.views import list_backgrounds, make_background, sample_view

        cfg = self.config
        posed = subject.poses[subject.pose_of_view(view, cfg.views)]
        rng = np.random.default_rng(subject_seed("view", subject.id, cfg.seed, view))
        if self._backgrounds is None:  # listed once per worker: a background folder can hold many files
            self._backgrounds = list_backgrounds(cfg.background.dir)
        backgrounds = self._backgrounds
        params = sample_view(
            rng,
            cfg.width,
            cfg.height,
            posed.centre,
            posed.extent_m,
            cfg.camera,
            cfg.lights,
            backgrounds,
            cfg.background,
        )
        background = make_background(params.background, cfg.width, cfg.height, cfg.background.dir)
        out = self._get_renderer().render(loaded, params.camera, params.lights, background, params.ambient)
        synth_meta = {
            "subject": subject.id,
            "kind": subject.kind,
            "view": view,
            "seed": cfg.seed,
            "subject_params": subject.params,
            "view_params": params.as_json(),
            "size": [cfg.width, cfg.height],
        }
        if posed.params:  # a body's pose (a scan has one fixed pose and no parameters)
            synth_meta["pose"] = posed.params
        key = key_from_params(synth_meta)
        pose = annotate.pose_label(posed.landmarks, params.camera, out.depth, out.mask)
        bbox = annotate.mask_bbox(out.mask)
        camera = params.camera.as_json()
        if subject.scan_to_world is not None:  # not part of the key: it follows from the scan and its settings
            camera["scan_to_world"] = subject.scan_to_world.tolist()
        meta = {
            "source": {"uri": subject.uri, "sha256": subject.params.get("sha256")},
            "persons": [] if bbox is None else [{"bbox": list(bbox), "score": 1.0, "detector": "synth"}],
            "camera": camera,
            "split": split,
            "synth": synth_meta,
        }
        seg = out.labels if (cfg.seg and out.labels is not None) else None
        if seg is not None:
            meta["seg_vocabulary"] = "goliath28"
        return Sample(
            key=key,
            image=out.rgb,
            meta=meta,
            pose=pose,
            seg=seg,
            depth=out.depth,
            normal=out.normal,
            mask=out.mask,
            image_format=cfg.image_format,
        )

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.delete()
            self._renderer = None


def _delete_shards(prefix: str) -> None:
    """Remove every shard of one subject, complete or temporary (ShardWriter keeps `.{name}.tmp-*` files
    until it finishes; with an explicit start index it does not sweep old ones itself)."""
    base = re.escape(os.path.basename(prefix))
    pattern = re.compile(rf"^(\.)?{base}-\d{{6}}\.tar(\.tmp-[0-9a-f]+)?$")
    folder = os.path.dirname(prefix)
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        match = pattern.match(name)
        if match and bool(match.group(1)) == bool(match.group(2)):  # hidden iff temporary
            os.remove(os.path.join(folder, name))


# ---------------------------------------------------------------------------------------------- the job


class OutputMismatch(ValueError):
    """The output folder was made with different render settings; resuming would mix two datasets."""


def prepare_output(config: SynthConfig) -> None:
    """Create `--out`, save the resolved config, refuse a folder made with other render settings."""
    os.makedirs(os.path.join(config.out, "shards"), exist_ok=True)
    saved_path = os.path.join(config.out, "config.yaml")
    if os.path.exists(saved_path):
        from synth.config import load_config

        saved = render_settings(load_config(saved_path))
        current = render_settings(config)
        if saved != current:
            old, new = _flatten(saved), _flatten(current)
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise OutputMismatch(
                f"{config.out} was made with different render settings ({', '.join(diff[:8])}); "
                "use a new --out or the same settings"
            )
    tmp = saved_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(to_yaml(config))
    os.replace(tmp, saved_path)


def _flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class JobSummary:
    done: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0  # finished by an earlier run
    views: int = 0
    rows: list[dict] | None = None


def run_job(config: SynthConfig, log=print) -> JobSummary:
    """Render every subject not yet finished; returns counts. Rows are in `{out}/manifest.parquet`."""
    # Ray workers need not share the driver's working directory: make every path absolute.
    config = copy.deepcopy(config)
    config.out = os.path.abspath(config.out)
    if config.background.dir:
        config.background.dir = os.path.abspath(config.background.dir)
    prepare_output(config)
    manifest_dir = os.path.join(config.out, "manifest")
    done = latest(read_rows(manifest_dir))
    tasks, refused = plan(config, done)
    writer = SynthManifestWriter(manifest_dir)
    writer.append(refused)
    summary = JobSummary(skipped=sum(1 for r in done.values() if r["status"] in FINAL_STATUSES), rows=list(refused))
    summary.rejected += len(refused)
    log(f"synth: {len(tasks)} subjects to render ({summary.skipped} finished earlier), {config.views} views each")

    def record(row: dict) -> None:
        writer.append([row])
        summary.rows.append(row)  # type: ignore[union-attr]
        if row["status"] == "done":
            summary.done += 1
            summary.views += row["views_written"]
        elif row["status"] == "rejected":
            summary.rejected += 1
        else:
            summary.failed += 1
        detail = f"{row['views_written']} views" if row["status"] == "done" else row["reason"].splitlines()[0]
        log(f"  {row['subject']} {row['status']}: {detail}" + (f" [{row['warnings']}]" if row.get("warnings") else ""))

    if tasks and config.inline:
        worker = RenderWorker(config, config.out)
        try:
            for task in tasks:
                record(worker.run(task))
        finally:
            worker.close()
    elif tasks:
        _run_on_ray(config, tasks, record)
    consolidate(manifest_dir, os.path.join(config.out, "manifest.parquet"))
    return summary


def _run_on_ray(config: SynthConfig, tasks: list[SubjectTask], record) -> None:
    import ray
    from ray.util import ActorPool

    from data_engine.ray_runtime import init_ray

    started_here = not ray.is_initialized()
    if started_here:
        init_ray(config.ray_address, object_store_memory=256 * 1024 * 1024)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        count = max(1, min(config.workers or cpus, len(tasks)))
        env = {"PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "egl")}
        for name in ("ANNY_CACHE_DIR", "WARP_CACHE_PATH", "OMP_NUM_THREADS"):
            if name in os.environ:
                env[name] = os.environ[name]
        actor = ray.remote(num_cpus=1, max_restarts=0)(RenderWorker).options(runtime_env={"env_vars": env})
        actors = [actor.remote(config, config.out) for _ in range(count)]
        pool = ActorPool(actors)
        for row in pool.map_unordered(lambda a, t: a.run.remote(t), tasks):
            record(row)
        ray.get([a.close.remote() for a in actors])
    finally:
        if started_here:
            ray.shutdown()
