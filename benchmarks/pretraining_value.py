"""The value of MAE pretraining, Sapiens' Table 7 in miniature: the same multi-task fine-tuning (pose, seg, depth,
normal) from MAE weights and from random init, on the same labelled subjects, scored on held-out subjects over
several fine-tuning seeds, next to the trivial baselines.

    .venv/bin/python benchmarks/pretraining_value.py --profile cpu --out runs/ptv-cpu          # <= 45 min, 2 cores
    .venv/bin/python benchmarks/pretraining_value.py --profile gpu --out runs/ptv-gpu          # ~30 min, one GPU
    .venv/bin/python benchmarks/pretraining_value.py --profile smoke --out /tmp/ptv --seeds 2  # the test's size
    .venv/bin/python benchmarks/pretraining_value.py --profile cpu --out runs/ptv-cpu --eval-split val  # tuning

One set of parametric bodies is rendered (`hv synth`) and split by subject into four disjoint groups:
`heldout` (synth's own held-out subjects: evaluation only), `val` (training subjects never trained on:
`--eval-split val` scores them instead, for tuning; numbers tuned on held-out subjects do not count),
`labelled` (fine-tuning) and `pool` (pretraining). The pretraining pool is the pool subjects' renders plus the
photos the demo curates (`hv curate`), both stripped to image-only shards (`demo.data.image_only_members`: no
label member, no person box, no subject), so MAE never sees a label; it must hold at least `min_pool_ratio` times
the labelled images. One MAE run (`hv train pretrain`, its encoder exported) is shared by every fine-tuning seed
unless `--vary-pretrain-seed` gives each seed its own. Each fine-tuning (`hv train finetune --task multi`) is
the real command in a subprocess, and so are a model's four evaluations (`hv eval TASK`, one interpreter for the
four); their logs are in OUT/logs/.

Writes OUT/pretraining_value.json and OUT/pretraining_value.md (per task and arm: mean, sample std, min-max and
every seed's number; the baselines beside them; `-val` before the suffix for --eval-split val) and prints the
table. Resumable: a stage whose outputs exist
with the same settings is skipped; one whose settings changed (a profile value edited) is redone, and so is
everything downstream of it. Each stage's wall time is printed and kept in OUT/stage_seconds.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

Device = Literal["cpu", "cuda"]
EvalSplit = Literal["heldout", "val"]
Arm = Literal["mae", "random"]
ARMS: tuple[Arm, ...] = ("mae", "random")
ARM_NAMES: dict[Arm, str] = {"mae": "MAE init", "random": "random init"}
GROUPS = ("heldout", "val", "labelled", "pool")


@dataclass(frozen=True)
class Settings:
    """Every size and hyperparameter of one profile. Pool = the train subjects left after `val_subjects` and
    `labelled_subjects`; the run stops before rendering when it would hold under `min_pool_ratio` x the labelled
    images."""

    device: Device
    seeds: int  # fine-tuning seeds (0 .. seeds-1); --seeds overrides
    # Data: `hv synth --bodies --views --size`, split per subject
    bodies: int
    views: int
    render_size: str  # W x H of the renders
    heldout_fraction: float  # synth's held-out subjects (by a hash of the subject id, so only about this fraction)
    val_subjects: int  # train subjects set aside for --eval-split val
    labelled_subjects: int  # the fine-tuning set
    min_pool_ratio: float  # pool images (renders + curated photos) per labelled image, at least
    curate_min_short_side: int
    synth_inline: bool  # render in the benchmark's own synth process, without Ray: quicker for a few bodies
    # Model (pretraining and fine-tuning share it)
    arch: str  # train.models.vit.ARCHS
    model_depth: int  # ViT blocks (the arch's own count when equal)
    image_size: tuple[int, int]  # H x W of the model input: MAE crops, pose crops and dense views
    patch_size: int  # model.backbone_options.patch_size (the heads keep their output stride at any patch size)
    # MAE pretraining
    pretrain_procs: int  # `--cpus N` / `--gpus N`; 1 on CPU trains in-process
    pretrain_steps: int
    pretrain_batch_size: int  # per process
    pretrain_lr: float
    pretrain_warmup: int
    pretrain_loader_workers: int
    decoder_dim: int
    decoder_depth: int
    # Multi-task fine-tuning (configs/finetune/multi_tiny.yaml plus these)
    finetune_steps: int
    finetune_batch_size: int
    finetune_lr: float
    finetune_warmup: int
    layer_decay: float
    head_channels: int  # the heads' full-resolution deconvolutions dominate a CPU step
    pose_sigma: float  # heatmap Gaussian sigma, in heatmap pixels
    finetune_loader_workers: int
    finetune_extra: tuple[str, ...] = ()  # more `key=value` for `hv train finetune` (e.g. "pose.loss_weight=10")
    eval_pictures: int = 0  # prediction pictures per evaluation (eval's `pictures`)


PROFILES: dict[str, Settings] = {
    # 2 idle cores, <= 45 minutes (29 measured, 2026-12-01). A starting point (the demo's `full` sizes, grown toward
    # the hand runs in benchmarks/RESULTS.md, "Learning at demo scale"); the recipe that makes pose learn is open.
    "cpu": Settings(
        device="cpu",
        seeds=3,
        bodies=140,
        views=4,
        render_size="192x256",
        heldout_fraction=0.12,
        val_subjects=8,
        labelled_subjects=10,
        min_pool_ratio=10.0,
        curate_min_short_side=160,
        synth_inline=False,
        arch="tiny",
        model_depth=6,
        image_size=(128, 96),
        patch_size=16,
        pretrain_procs=2,
        pretrain_steps=1200,
        pretrain_batch_size=16,
        pretrain_lr=1.5e-3,
        pretrain_warmup=60,
        pretrain_loader_workers=1,
        decoder_dim=128,
        decoder_depth=2,
        finetune_steps=800,
        finetune_batch_size=8,
        finetune_lr=1e-3,
        finetune_warmup=40,
        layer_decay=0.9,
        head_channels=32,
        pose_sigma=3.0,  # sigma 3 and light augmentation: the best of the pose sweeps in RESULTS.md
        finetune_extra=("pose.rotation_prob=0", "pose.scale_range=[0.9,1.1]", "pose.shift=0.05"),
        finetune_loader_workers=0,
    ),
    # One GPU (16 CPU cores beside it), about 30 minutes; not yet run on one (sizes estimated, not measured).
    "gpu": Settings(
        device="cuda",
        seeds=3,
        bodies=480,
        views=6,
        render_size="384x512",
        heldout_fraction=0.1,
        val_subjects=12,
        labelled_subjects=36,
        min_pool_ratio=10.0,
        curate_min_short_side=160,
        synth_inline=False,
        arch="small",
        model_depth=12,
        image_size=(256, 192),
        patch_size=16,
        pretrain_procs=1,
        pretrain_steps=6000,
        pretrain_batch_size=128,
        pretrain_lr=1.5e-3,
        pretrain_warmup=300,
        pretrain_loader_workers=8,
        decoder_dim=256,
        decoder_depth=4,
        finetune_steps=2000,
        finetune_batch_size=32,
        finetune_lr=5e-4,
        finetune_warmup=100,
        layer_decay=0.85,
        head_channels=128,
        pose_sigma=2.0,
        finetune_loader_workers=12,  # row making (decode, augment, targets) would otherwise starve the GPU
        eval_pictures=4,
    ),
    # The test's: every stage and output at the smallest size that still has every group and task.
    "smoke": Settings(
        device="cpu",
        seeds=2,
        bodies=14,
        views=2,
        render_size="96x128",
        heldout_fraction=0.15,
        val_subjects=1,
        labelled_subjects=1,
        min_pool_ratio=10.0,
        curate_min_short_side=96,
        synth_inline=True,
        arch="tiny",
        model_depth=1,
        image_size=(64, 48),
        patch_size=16,
        pretrain_procs=1,
        pretrain_steps=4,
        pretrain_batch_size=4,
        pretrain_lr=1e-3,
        pretrain_warmup=1,
        pretrain_loader_workers=0,
        decoder_dim=32,
        decoder_depth=1,
        finetune_steps=3,
        finetune_batch_size=2,
        finetune_lr=1e-3,
        finetune_warmup=1,
        layer_decay=0.9,
        head_channels=8,
        pose_sigma=2.0,
        finetune_loader_workers=0,
    ),
}

SYNTH_SEED = 0


# ------------------------------------------------------------------------------------------------ subjects


def order_key(subject: str) -> str:
    """A fixed, arbitrary order of subjects (not the render order), for drawing val and labelled ones."""
    return hashlib.sha256(f"pretraining-value\x1f{subject}".encode()).hexdigest()


def assign_subjects(synth_split: dict[str, str], s: Settings) -> dict[str, list[str]]:
    """Subject id -> synth's split (train / heldout) => the four disjoint groups of GROUPS, each sorted."""
    heldout = sorted(k for k, v in synth_split.items() if v == "heldout")
    train = sorted((k for k, v in synth_split.items() if v != "heldout"), key=order_key)
    n_val, n_lab = s.val_subjects, s.labelled_subjects
    groups = {
        "heldout": heldout,
        "val": sorted(train[:n_val]),
        "labelled": sorted(train[n_val : n_val + n_lab]),
        "pool": sorted(train[n_val + n_lab :]),
    }
    return groups


def planned_groups(s: Settings) -> dict[str, list[str]]:
    """The groups `hv synth --bodies N --seed SYNTH_SEED` will give, known before rendering (the subject ids
    and synth's per-subject split are fixed by the seed and index)."""
    from synth.engine import split_of

    ids = [f"body-{SYNTH_SEED}-{i:06d}" for i in range(s.bodies)]
    return assign_subjects({k: split_of(k, s.heldout_fraction) for k in ids}, s)


class SettingsError(ValueError):
    """The profile's sizes cannot make the benchmark (an empty group, a pool too small)."""


def check_groups(groups: dict[str, list[str]], views: int, photos: int, s: Settings) -> None:
    empty = [g for g in GROUPS if not groups[g]]
    if empty:
        raise SettingsError(
            f"no {' or '.join(empty)} subjects among {s.bodies} bodies (heldout_fraction {s.heldout_fraction}, "
            f"val {s.val_subjects}, labelled {s.labelled_subjects}): raise bodies or change the split"
        )
    labelled, pool = len(groups["labelled"]) * views, len(groups["pool"]) * views + photos
    if pool < s.min_pool_ratio * labelled:
        raise SettingsError(
            f"the pretraining pool would hold {pool} images ({len(groups['pool'])} subjects x {views} views + "
            f"{photos} photos), under {s.min_pool_ratio:g} x the {labelled} labelled images: raise bodies or "
            "lower labelled_subjects"
        )


# ------------------------------------------------------------------------------------------------ stages


@dataclass
class Paths:
    out: Path

    @property
    def synth(self) -> Path:
        return self.out / "synth"

    @property
    def curate_inputs(self) -> Path:
        return self.out / "curate_inputs"

    @property
    def curate(self) -> Path:
        return self.out / "curate"

    @property
    def splits(self) -> Path:
        """heldout/ val/ labelled/ (synth samples), pool/ photos/ (image only), subjects.json."""
        return self.out / "splits"

    def pretrain(self, seed: int | None) -> Path:
        return self.out / ("pretrain" if seed is None else f"pretrain-seed{seed}")

    def finetune(self, arm: Arm, seed: int) -> Path:
        return self.out / "finetune" / f"{arm}-seed{seed}"

    def eval(self, split: EvalSplit, arm: Arm, seed: int, task: str) -> Path:
        return self.out / f"eval-{split}" / f"{arm}-seed{seed}" / task


def fingerprint(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Runner:
    """Runs stages in order. A stage is skipped when its record in OUT/stages/ says it finished with the same
    fingerprint (its settings and its inputs' fingerprints) and its outputs exist. A stage whose fingerprint
    changed gets its outputs deleted first (an `hv train` run folder would otherwise resume the old run); one
    that was started but not finished with the same fingerprint runs again in place (the `hv` commands resume)."""

    out: Path
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        from demo.stages import StageLog

        self.log = StageLog(self.out)
        (self.out / "stages").mkdir(parents=True, exist_ok=True)

    def stage(self, name: str, params: dict[str, Any], outputs: Sequence[Path], work: Callable[[], object]) -> str:
        """Run `work` unless done; returns the stage's fingerprint (for the stages that read its outputs)."""
        fp = fingerprint(params)
        record_path = self.out / "stages" / f"{name}.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        elapsed = time.monotonic() - self.started
        if record.get("fingerprint") == fp and record.get("done") and all(p.exists() for p in outputs):
            self.timings[name] = record.get("seconds", 0.0)
            print(f"[{elapsed:7.1f} s] {name}: done before ({record.get('seconds', 0.0):.1f} s then), skipped")
            return fp
        if record and record.get("fingerprint") != fp:
            for path in outputs:
                _remove(path.parent if path.name in _RUN_FILES else path)
        record_path.write_text(json.dumps({"fingerprint": fp, "done": False, "params": params}, default=str))
        print(f"[{elapsed:7.1f} s] {name} ...", flush=True)
        start = time.monotonic()
        work()
        seconds = round(time.monotonic() - start, 1)
        record_path.write_text(
            json.dumps({"fingerprint": fp, "done": True, "seconds": seconds, "params": params}, default=str)
        )
        self.timings[name] = seconds
        # demo.stages keeps each command's time in OUT/timings.json; these are the stages'.
        (self.out / "stage_seconds.json").write_text(json.dumps(self.timings, indent=2))
        print(f"[{time.monotonic() - self.started:7.1f} s] {name}: {seconds:.1f} s", flush=True)
        return fp

    def hv(self, name: str, *args: str) -> None:
        """`hv ARGS` in a subprocess (demo.stages: its output shown and kept in OUT/logs/NAME.log)."""
        from demo.stages import hv_command, run_stage

        run_stage(self.log, name, hv_command(*args), env=self.env)

    def hv_batch(self, name: str, commands: Sequence[Sequence[str]]) -> None:
        """Several `hv` commands in one subprocess (demo.stages.hv_commands: torch imported once)."""
        from demo.stages import hv_commands, run_stage

        run_stage(self.log, name, hv_commands(*commands), env=self.env)


# An output that is one file of an `hv` run folder: the folder goes when the stage is redone.
_RUN_FILES = ("encoder.safetensors", "model.safetensors", "metrics.json", "manifest.parquet")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def launch_args(device: Device, procs: int) -> list[str]:
    if device == "cuda":
        return ["--gpus", str(procs)]
    return ["--cpus", str(procs)] if procs > 1 else ["--in-process"]


def model_overrides(s: Settings) -> list[str]:
    return [f"model.arch={s.arch}", f"model.depth={s.model_depth}", f"model.backbone_options.patch_size={s.patch_size}"]


def run_benchmark(
    out: Path, s: Settings, profile: str, eval_split: EvalSplit = "heldout", vary_pretrain_seed: bool = False
) -> dict[str, Any]:
    """Every stage, then the table; returns the results (also written to OUT/pretraining_value[-val].json).

    A stage's fingerprint is its `hv` arguments (which carry every setting it uses), the device, and the
    fingerprints of the stages whose outputs it reads."""
    from eval.tasks import EVAL_TASKS
    from train.models.tasks import TASK_NAMES

    out = out.resolve()  # every stage gets absolute paths, whatever its working directory
    paths = Paths(out)
    check_groups(planned_groups(s), s.views, photos=0, s=s)  # before anything is rendered
    # The stages import this checkout's packages (not an installed copy), render with EGL and train on s.device.
    pythonpath = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env = {"PYOPENGL_PLATFORM": "egl", "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": s.device}
    env["PYTHONPATH"] = pythonpath
    run = Runner(out, env)
    (out / "settings.json").write_text(json.dumps({"profile": profile, **asdict(s)}, indent=2))
    h, w = s.image_size

    synth_args = [
        "synth", "--out", str(paths.synth), "--bodies", str(s.bodies), "--views", str(s.views),
        "--size", s.render_size, "--seed", str(SYNTH_SEED), f"heldout_fraction={s.heldout_fraction}",
        *(["inline=true"] if s.synth_inline else []),
    ]  # fmt: skip
    synth_fp = run.stage(
        "synth", {"args": synth_args}, [paths.synth / "manifest.parquet"], lambda: run.hv("synth", *synth_args)
    )

    curate_args = [
        "curate", str(paths.curate_inputs), "--out", str(paths.curate), "--detector", "none",
        f"quality.min_short_side={s.curate_min_short_side}",
    ]  # fmt: skip

    def curate() -> None:
        from demo.inputs import build_curation_inputs

        build_curation_inputs(paths.curate_inputs, renders=[])  # photos, duplicates, bad files; renders are pool's
        run.hv("curate", *curate_args)

    curate_fp = run.stage("curate", {"args": curate_args}, [paths.curate / "manifest.parquet"], curate)

    split_params = {"after": [synth_fp, curate_fp], "val": s.val_subjects, "labelled": s.labelled_subjects}
    split_params["min_pool_ratio"] = s.min_pool_ratio
    split_fp = run.stage("split", split_params, [paths.splits / "subjects.json"], lambda: write_splits(paths, s))
    subjects = json.loads((paths.splits / "subjects.json").read_text())
    print(
        "    subjects: "
        + ", ".join(f"{g} {len(subjects['groups'][g])} ({subjects['images'][g]} images)" for g in GROUPS)
        + f"; pool photos {subjects['images']['photos']}"
    )

    pretrain_fps: dict[int | None, str] = {}
    for pseed in range(s.seeds) if vary_pretrain_seed else [None]:
        folder, suffix = paths.pretrain(pseed), "" if pseed is None else f"-seed{pseed}"
        pretrain_args = [
            "train", "pretrain", "--config", "configs/pretrain/tiny.yaml", "--out", str(folder),
            *launch_args(s.device, s.pretrain_procs),
            f"data.shards={paths.splits / 'pool'},{paths.splits / 'photos'}",
            f"data.num_workers={s.pretrain_loader_workers}", f"seed={pseed or 0}",
            f"steps={s.pretrain_steps}", f"batch_size={s.pretrain_batch_size}", "zero_stage=0",
            f"optim.lr={s.pretrain_lr}", f"optim.warmup_steps={s.pretrain_warmup}",
            f"ckpt_every={max(s.pretrain_steps // 4, 1)}", f"log_every={max(s.pretrain_steps // 50, 1)}",
            f"model.img_size=[{h},{w}]", f"model.decoder_dim={s.decoder_dim}",
            f"model.decoder_depth={s.decoder_depth}", *model_overrides(s),
        ]  # fmt: skip

        def pretrain(args: list[str] = pretrain_args, folder: Path = folder, suffix: str = suffix) -> None:
            run.hv(f"pretrain{suffix}", *args)
            run.hv(f"export-weights{suffix}", "train", "export-weights", str(folder), "--part", "encoder")

        params = {"args": pretrain_args, "device": s.device, "after": [split_fp]}
        pretrain_fps[pseed] = run.stage(folder.name, params, [folder / "encoder.safetensors"], pretrain)

    finetune_fps: dict[tuple[Arm, int], str] = {}
    for seed in range(s.seeds):
        for arm in ARMS:
            folder, name = paths.finetune(arm, seed), f"finetune-{arm}-seed{seed}"
            pretrain_key = seed if vary_pretrain_seed else None
            init = ["--init", str(paths.pretrain(pretrain_key) / "encoder.safetensors")] if arm == "mae" else []
            finetune_args = [
                "train", "finetune", "--task", "multi", "--config", "configs/finetune/multi_tiny.yaml",
                "--out", str(folder), "--in-process", *init,
                f"data.shards={paths.splits / 'labelled'}", f"data.num_workers={s.finetune_loader_workers}",
                f"seed={seed}", f"steps={s.finetune_steps}", f"batch_size={s.finetune_batch_size}",
                f"optim.lr={s.finetune_lr}", f"optim.warmup_steps={s.finetune_warmup}",
                f"optim.layer_decay={s.layer_decay}", f"log_every={max(s.finetune_steps // 50, 1)}",
                f"model.image_size=[{h},{w}]", f"model.head_channels={s.head_channels}",
                f"pose.sigma={s.pose_sigma}", *model_overrides(s), *s.finetune_extra,
            ]  # fmt: skip
            after = [split_fp] + ([pretrain_fps[pretrain_key]] if arm == "mae" else [])
            finetune_fps[arm, seed] = run.stage(
                name,
                {"args": finetune_args, "device": s.device, "after": after},
                [folder / "model.safetensors"],
                lambda name=name, args=finetune_args: run.hv(name, *args),
            )

    for seed in range(s.seeds):
        for arm in ARMS:
            folders = [paths.eval(eval_split, arm, seed, task) for task in TASK_NAMES]
            name = f"eval-{eval_split}-{arm}-seed{seed}"
            commands = [
                ["eval", task, "--checkpoint", str(paths.finetune(arm, seed)),
                 "--shards", str(paths.splits / eval_split), "--out-dir", str(folder),
                 f"device={s.device}", f"pictures={s.eval_pictures}"]
                for task, folder in zip(TASK_NAMES, folders, strict=True)
            ]  # fmt: skip
            run.stage(
                name,
                {"args": commands, "after": [finetune_fps[arm, seed]]},
                [folder / "metrics.json" for folder in folders],
                lambda name=name, commands=commands: run.hv_batch(name, commands),
            )

    baselines_path = out / f"eval-{eval_split}" / "baselines.json"

    def baselines() -> None:
        from demo.baselines import baseline_metrics

        # The labelled subjects' statistics (all a baseline may learn from), scored on the evaluation subjects;
        # the pose baseline on exactly the people the models were scored on (that run's gt_coco.json).
        scores = baseline_metrics(
            paths.splits / "labelled", paths.splits / eval_split, paths.eval(eval_split, "mae", 0, "pose")
        )
        baselines_path.write_text(json.dumps(scores, indent=2))

    run.stage(f"baselines-{eval_split}", {"after": [split_fp], "eval": eval_split}, [baselines_path], baselines)

    results = collect_results(paths, s, profile, eval_split, vary_pretrain_seed, subjects, run.timings)
    results["tasks"] = {
        task: task_row(task, EVAL_TASKS[task].headline, EVAL_TASKS[task].higher_is_better, paths, eval_split, s.seeds)
        for task in TASK_NAMES
    }
    baselines_scores = json.loads(baselines_path.read_text())
    for task, row in results["tasks"].items():
        b = baselines_scores.get(task)
        row["baseline"] = None if b is None else {"method": b["method"], "value": float(b[row["metric"]])}
    stem = out / ("pretraining_value" if eval_split == "heldout" else f"pretraining_value-{eval_split}")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    stem.with_suffix(".md").write_text(table)
    print("\n" + table)
    print(f"written: {stem.with_suffix('.json')}, {stem.with_suffix('.md')}")
    return results


def write_splits(paths: Paths, s: Settings) -> None:
    """synth shards -> splits/{heldout,val,labelled}/ (bytes unchanged) and splits/pool/ (image only); the curated
    photos -> splits/photos/ (image only); splits/subjects.json records the groups and the keys in each."""
    from data_engine.shards import expand, iter_members
    from demo.data import copy_image_only, split_by_meta

    synth_split: dict[str, str] = {}
    for path in expand(str(paths.synth / "shards")):
        for members in iter_members(path):
            meta = json.loads(members["json"])
            synth_split[meta["synth"]["subject"]] = meta["split"]
    groups = assign_subjects(synth_split, s)
    group_of = {subject: g for g, members in groups.items() for subject in members}
    tmp = paths.splits.with_name(paths.splits.name + ".tmp")
    counts = split_by_meta(
        paths.synth / "shards", tmp, route=lambda meta: group_of[meta["synth"]["subject"]], image_only={"pool"}
    )
    photos = copy_image_only(paths.curate / "shards", tmp / "photos", prefix="curated")
    images = {g: counts.get(g, 0) for g in GROUPS} | {"photos": photos}
    check_groups(groups, s.views, photos, s)  # the renders that were made, not the plan
    keys = {g: sorted(m["__key__"] for p in expand(str(tmp / g)) for m in iter_members(p)) for g in (*GROUPS, "photos")}
    record = {"groups": groups, "images": images, "keys": keys}
    (tmp / "subjects.json").write_text(json.dumps(record, indent=2))
    _remove(paths.splits)
    tmp.rename(paths.splits)  # complete or absent


# ------------------------------------------------------------------------------------------------ results


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation (None for one value), min and max."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def task_row(task: str, metric: str, higher: bool, paths: Paths, split: EvalSplit, seeds: int) -> dict[str, Any]:
    arms = {}
    for arm in ARMS:
        per_seed = {
            str(seed): float(json.loads((paths.eval(split, arm, seed, task) / "metrics.json").read_text())[metric])
            for seed in range(seeds)
        }
        arms[arm] = {"per_seed": per_seed, **spread(list(per_seed.values()))}
    wins = sum(
        (a > b) if higher else (a < b)
        for a, b in zip(arms["mae"]["per_seed"].values(), arms["random"]["per_seed"].values(), strict=True)
    )
    return {"metric": metric, "higher_is_better": higher, "arms": arms, "mae_better_seeds": wins}


def collect_results(
    paths: Paths,
    s: Settings,
    profile: str,
    eval_split: EvalSplit,
    vary_pretrain_seed: bool,
    subjects: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    return {
        "profile": profile,
        "settings": asdict(s),
        "eval_split": eval_split,
        "seeds": list(range(s.seeds)),
        "pretrain_seeds": list(range(s.seeds)) if vary_pretrain_seed else [0],
        "subjects": subjects["groups"],
        "images": subjects["images"],
        "timings_s": dict(timings),
    }


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def markdown(results: dict[str, Any]) -> str:
    """Table 7's layout: a row per task and arm, the baseline under them."""
    images, split = results["images"], results["eval_split"]
    lines = [
        f"# Pretraining value ({results['profile']} profile): {results['eval_split']} subjects, "
        f"{len(results['seeds'])} fine-tuning seeds",
        "",
        f"Labelled: {len(results['subjects']['labelled'])} subjects, {images['labelled']} images. "
        f"MAE pool: {len(results['subjects']['pool'])} other subjects ({images['pool']} renders) + "
        f"{images['photos']} curated photos, images only. Evaluated on {len(results['subjects'][split])} "
        f"{split} subjects ({images[split]} images). std: sample standard deviation "
        "over fine-tuning seeds.",
        "",
        "| task | metric | arm | mean | std | min | max | per seed | MAE better |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, row in results["tasks"].items():
        metric = f"{row['metric']} ({'higher' if row['higher_is_better'] else 'lower'} is better)"
        for arm in ARMS:
            a = row["arms"][arm]
            seeds = ", ".join(f"{v:.4f}" for v in a["per_seed"].values())
            better = f"{row['mae_better_seeds']}/{len(a['per_seed'])} seeds" if arm == "mae" else ""
            lines.append(
                f"| {task} | {metric} | {ARM_NAMES[arm]} | {_fmt(a['mean'])} | {_fmt(a['std'])} | {_fmt(a['min'])} "
                f"| {_fmt(a['max'])} | {seeds} | {better} |"
            )
        b = row["baseline"]
        if b is not None:
            lines.append(f"| {task} | {metric} | baseline: {b['method']} | {_fmt(b['value'])} | | | | | |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ command line


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="sizes (see PROFILES)")
    parser.add_argument("--out", type=Path, help="output folder; re-use it to resume (default runs/ptv-PROFILE)")
    parser.add_argument("--seeds", type=positive_int, help="fine-tuning seeds, 0..N-1 (default: the profile's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="training and eval device (default: the profile's)")
    parser.add_argument(
        "--eval-split", choices=("heldout", "val"), default="heldout",
        help="score the held-out subjects (the result) or the validation subjects (for tuning)",
    )  # fmt: skip
    parser.add_argument(
        "--vary-pretrain-seed", action="store_true", help="one MAE pretraining per seed instead of one shared"
    )
    args = parser.parse_args(argv)
    from data_engine.outputs import OutputPathError, prepare_output_dir
    from demo.stages import StageFailed

    settings = PROFILES[args.profile]
    settings = replace(settings, seeds=args.seeds or settings.seeds, device=args.device or settings.device)
    out = (args.out or Path(ROOT) / "runs" / f"ptv-{args.profile}").resolve()
    os.chdir(ROOT)  # the stages name configs/ relative to the checkout
    try:
        prepare_output_dir(str(out), "--out")
        run_benchmark(out, settings, args.profile, args.eval_split, args.vary_pretrain_seed)
    except (OutputPathError, SettingsError) as e:
        print(f"pretraining_value: error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"pretraining_value: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # benchmarks/ holds a train.py that would shadow the `train` package: import from the repository root instead
    # (every project import above is inside a function, so this comes first).
    sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p) != HERE]
    sys.exit(main())
