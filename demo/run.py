"""The main job: `hv demo --out runs/demo` (or `make demo`) runs the whole factory end to end on data it
makes itself, with no network and nothing of the user's:

 1. synth     parametric bodies rendered with full ground truth, split into train and held-out subjects
 2. curate    real photos shipped in packages + renders + duplicates + bad files through the curation DAG
 3. pretrain  MAE on a tiny ViT with DeepSpeed ZeRO-2 on 2 CPU processes (curated + synthetic train images)
 4. finetune  pose, seg, depth and normal heads on one backbone, from the MAE weights and from random init
 5. eval      held-out metrics for both runs next to trivial baselines
 6. annotate  a local Label Studio with the curated images as tasks and the model's pre-annotations
 7. report    OUT/report.html and OUT/summary.json

Each stage is the real `hv` command a user would run (its log in OUT/logs/), its outputs left in OUT/ to
inspect. Re-running the same command continues where a killed run stopped: every stage resumes or skips.
The annotation stage runs after fine-tuning so that its pre-annotations come from the demo's own model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from demo.stages import StageLog, hv_command, hv_commands, run_stage, run_stages
from train.models.tasks import TASK_NAMES

Profile = Literal["full", "smoke"]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run. `full` is `make demo` (about 13 minutes on 2 idle cores); `smoke` is the test's."""

    bodies: int
    views: int
    render_size: str  # W x H of the renders
    heldout_fraction: float
    renders_to_curate: int  # renders copied among the curation inputs
    curate_min_short_side: int  # the renders are small; real photos are far above any of these
    pretrain_steps: int
    finetune_steps: int
    pretrain_batch_size: int
    finetune_batch_size: int  # smaller: every row also runs the heads' full-resolution deconvolutions
    model_depth: int  # ViT blocks of the tiny arch (12 is the arch's own)
    head_channels: int  # width of the task heads; their full-resolution deconvolutions dominate a CPU step
    image_size: tuple[int, int]  # H x W of the model's input (pose crops and dense views)
    patch_size: int = 16  # the ViT's patches: 8 gives the dense heads and keypoints 4x the tokens, at 2x the step
    # Fine-tuning for a budget of minutes (tuned on a validation split of training subjects, benchmarks/RESULTS.md):
    # a wider Gaussian, foreground-weighted heatmap MSE and light pose augmentation learn keypoints in fewer steps,
    # and a cosine decay settles them.
    pose_sigma: float = 3.0
    pose_foreground_weight: float = 20.0
    pose_augment: tuple[str, ...] = ("pose.rotation_deg=0", "pose.scale_range=[0.9,1.1]", "pose.shift=0.05")
    schedule: str = "cosine"
    finetune_warmup: int = 30
    # The pose head's own width over `head_channels`: its 1/4-size map makes 64 channels nearly free (0.246 against
    # 0.251 s a step), where the same width on the full-size depth head would not be.
    pose_head_width: int = 64
    # The foreground-weighted heatmap MSE is about 0.15 where seg's cross-entropy is about 2: at weight 1 pose has
    # little say in the shared backbone's updates. On the validation subjects weights 5 / 10 / 20 / 50 raised pose
    # AP50 from 0.036 to 0.054 / 0.072 / 0.098 / 0.070, and depth a little; normals lost a little (32.7 degrees at
    # weight 1, 33.0 at 10, 34.6 at 50). With `depth_log_offset`, 20 against 10 at 1,000 steps: depth RMSE 0.1391-
    # 0.1396 (two seeds) against 0.1409, normals 32.2-32.5 against 31.5 degrees (benchmarks/RESULTS.md).
    pose_loss_weight: float = 20.0
    # Added inside the SiLog loss's log (`depth.log_offset`): on the min-max normalised targets the paper's loss puts
    # most of its weight on the few pixels nearest the camera, and the depth loss hardly fell in 1,000 steps. With
    # 1 the validation subjects' depth RMSE went from 0.1439 to 0.1409 (benchmarks/RESULTS.md).
    depth_log_offset: float = 1.0
    # MiDaS's gradient matching term on top of the SiLog loss (`depth.grad_weight`): a plane through the person
    # (the camera looks down) is most of a view's depth spread, and without it every loss and head tried stopped
    # there, at RMSE 0.1506-0.1530 on the validation subjects (the ramp: 0.1493). With it 0.1488-0.1490 (weights
    # 0.5 and 2, with SiLog or ssi), pose and seg unchanged (benchmarks/RESULTS.md).
    depth_grad_weight: float = 0.5
    # Fine-tuning steps where the CPU lacks bf16 instructions: fp32 steps cost about 1.3x, so fewer of them keep
    # the demo inside its budget. None: `finetune_steps` either way.
    fp32_finetune_steps: int | None = None
    # Evaluate each model on its input and its mirror image, averaged (the flip test, as pose benchmarks report):
    # on the validation subjects it raised pose AP50 from 0.114 to 0.143 and helped the dense tasks a little, for
    # a few more seconds of evaluation.
    flip_test: bool = True
    # "auto": bf16 (DeepSpeed's bf16 mode) where the CPU multiplies bf16 matrices natively, else fp32; see
    # `cpu_precision`. The demo-settings.json of a run records the choice.
    precision: str = "auto"

    def resolved(self) -> DemoSettings:
        """These settings for this machine: precision "auto" decided (`cpu_precision`), and the step count that
        goes with it. demo-settings.json records the result."""
        precision = cpu_precision() if self.precision == "auto" else self.precision
        steps = self.fp32_finetune_steps if precision == "fp32" and self.fp32_finetune_steps else self.finetune_steps
        return replace(self, precision=precision, finetune_steps=steps)

    def finetune_overrides(self) -> list[str]:
        # Resolved here too: a training config's own "auto" means fp32 on any CPU.
        precision = self.resolved().precision
        return [
            f"precision={precision}",
            f"model.head_options.pose.width={self.pose_head_width}",
            f"pose.sigma={self.pose_sigma}",
            f"pose.foreground_weight={self.pose_foreground_weight}",
            f"pose.loss_weight={self.pose_loss_weight}",
            f"depth.log_offset={self.depth_log_offset}",
            f"depth.grad_weight={self.depth_grad_weight}",
            *self.pose_augment,
            f"optim.schedule={self.schedule}",
            f"optim.warmup_steps={min(self.finetune_warmup, self.finetune_steps)}",
        ]


def cpu_precision() -> str:
    """bf16 where the CPU has bf16 matrix instructions (AMX or AVX512-BF16), else fp32. On the 2-core AMX VM a
    bf16 matrix product of the demo's shapes runs 6x faster than fp32, and a fine-tuning step about 1.3x
    (benchmarks/RESULTS.md); AVX512-BF16 without AMX was not measured; without either, bf16 is emulated and
    slower than fp32."""
    import torch

    native = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return "bf16" if any(check is not None and check() for check in native) else "fp32"


PROFILES: dict[str, DemoSettings] = {
    "full": DemoSettings(
        bodies=120,
        views=4,
        render_size="192x256",
        heldout_fraction=0.25,
        renders_to_curate=4,
        curate_min_short_side=160,
        pretrain_steps=300,
        finetune_steps=1000,
        fp32_finetune_steps=750,
        pretrain_batch_size=16,
        finetune_batch_size=8,
        model_depth=6,
        head_channels=16,
        image_size=(128, 96),
        patch_size=8,
    ),
    "smoke": DemoSettings(
        bodies=6,
        views=2,
        render_size="96x128",
        heldout_fraction=0.34,
        renders_to_curate=2,
        curate_min_short_side=96,
        pretrain_steps=8,
        finetune_steps=8,
        pretrain_batch_size=4,
        finetune_batch_size=4,
        model_depth=2,
        head_channels=8,
        image_size=(64, 48),
        patch_size=8,  # as `full`: the test runs MAE, export, init and eval at the shipped patch size
        pose_head_width=16,  # not head_channels: the test goes through a head of its own width, as `full` does
    ),
}


@dataclass
class DemoPaths:
    out: Path

    @property
    def synth(self) -> Path:
        return self.out / "synth"

    @property
    def splits(self) -> Path:
        return self.out / "splits"

    @property
    def curate_inputs(self) -> Path:
        return self.out / "curate_inputs"

    @property
    def curate(self) -> Path:
        return self.out / "curate"

    @property
    def pretrain(self) -> Path:
        return self.out / "pretrain"

    def finetune(self, init: str) -> Path:
        return self.out / f"finetune-{init}"

    def eval(self, init: str, task: str) -> Path:
        return self.out / "eval" / f"{init}-{task}"


def run_demo(out: Path, profile: Profile = "full", labelstudio: bool = True) -> dict:
    """Run every stage; returns the summary (also written to OUT/summary.json)."""
    settings = PROFILES[profile].resolved()
    out = out.resolve()  # every stage gets absolute paths, whatever its working directory
    paths = DemoPaths(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo-settings.json").write_text(json.dumps({"profile": profile, **asdict(settings)}, indent=2))
    log = StageLog(out)

    log.banner(f"1/7 synth: {settings.bodies} parametric bodies x {settings.views} views at {settings.render_size}")
    run_stage(
        log,
        "synth",
        hv_command(
            "synth",
            "--out",
            str(paths.synth),
            "--bodies",
            str(settings.bodies),
            "--views",
            str(settings.views),
            "--size",
            settings.render_size,
            "--seed",
            "0",
            f"heldout_fraction={settings.heldout_fraction}",
        ),
    )
    run_stage(log, "synth-preview", hv_command("synth", "preview", str(paths.synth), "--out", str(out / "renders.png")))
    from demo.data import split_by_meta

    counts = split_by_meta(paths.synth / "shards", paths.splits)
    print(f"    splits: {counts}", flush=True)

    log.banner("2/7 curate: photos from installed packages, renders, duplicates and bad files")
    from demo.data import export_renders
    from demo.inputs import build_curation_inputs

    renders = export_renders(paths.splits / "train", out / "render_files", settings.renders_to_curate)
    inputs = build_curation_inputs(paths.curate_inputs, renders)
    (out / "curate_inputs.json").write_text(json.dumps([asdict(i) for i in inputs], indent=2))
    run_stage(
        log,
        "curate",
        hv_command(
            "curate",
            str(paths.curate_inputs),
            "--out",
            str(paths.curate),
            "--detector",
            "none",
            f"quality.min_short_side={settings.curate_min_short_side}",
        ),
    )

    log.banner(f"3/7 pretrain: MAE, tiny ViT, DeepSpeed ZeRO-2 on 2 CPU processes, {settings.pretrain_steps} steps")
    model_overrides = [
        f"model.depth={settings.model_depth}",
        f"model.backbone_options.patch_size={settings.patch_size}",
    ]
    h, w = settings.image_size
    run_stage(
        log,
        "pretrain",
        hv_command(
            "train",
            "pretrain",
            "--config",
            "configs/pretrain/tiny.yaml",
            "--out",
            str(paths.pretrain),
            "--cpus",
            "2",
            f"data.shards={paths.curate / 'shards'},{paths.splits / 'train'}",
            f"steps={settings.pretrain_steps}",
            f"batch_size={settings.pretrain_batch_size}",
            "zero_stage=2",
            f"ckpt_every={max(settings.pretrain_steps // 3, 1)}",
            f"log_every={max(settings.pretrain_steps // 50, 1)}",
            f"model.img_size=[{h},{w}]",
            *model_overrides,
        ),
    )
    run_stage(log, "export-weights", hv_command("train", "export-weights", str(paths.pretrain), "--part", "encoder"))

    log.banner(f"4/7 finetune: pose + seg + depth + normal heads, {settings.finetune_steps} steps, MAE init vs random")
    # The two arms run side by side, a core each (`run_stages`): the same work, in about half the wall time of
    # one after the other at two threads each.
    finetunes: dict[str, list[str]] = {}
    for init in ("pretrained", "random"):
        init_args = ["--init", str(paths.pretrain / "encoder.safetensors")] if init == "pretrained" else []
        finetunes[f"finetune-{init}"] = hv_command(
            "train",
            "finetune",
            "--task",
            "multi",
            "--config",
            "configs/finetune/multi_tiny.yaml",
            "--out",
            str(paths.finetune(init)),
            "--in-process",
            *init_args,
            f"data.shards={paths.splits / 'train'}",
            f"steps={settings.finetune_steps}",
            f"batch_size={settings.finetune_batch_size}",
            f"log_every={max(settings.finetune_steps // 50, 1)}",
            f"model.image_size=[{h},{w}]",
            f"model.head_channels={settings.head_channels}",
            *model_overrides,
            *settings.finetune_overrides(),
        )
    run_stages(log, finetunes)

    log.banner("5/7 eval: held-out subjects, both runs and the trivial baselines")
    # One interpreter per model (four evaluations of a few seconds each would otherwise pay for four imports),
    # the two models side by side.
    heldout = str(paths.splits / "heldout")
    evals = {
        f"eval-{init}": hv_commands(
            *(
                [
                    "eval",
                    task,
                    "--checkpoint",
                    str(paths.finetune(init)),
                    "--shards",
                    heldout,
                    "--out-dir",
                    str(paths.eval(init, task)),
                    f"flip_test={str(settings.flip_test).lower()}",
                ]
                for task in TASK_NAMES
            )
        )
        for init in ("pretrained", "random")
    }
    run_stages(log, evals)
    from demo.baselines import baseline_metrics

    baselines = baseline_metrics(paths.splits / "train", paths.splits / "heldout", paths.eval("pretrained", "pose"))
    (out / "eval" / "baselines.json").write_text(json.dumps(baselines, indent=2))
    from demo.summary import build_summary

    summary = build_summary(paths, baselines)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    log.banner("6/7 annotate: Label Studio with the curated images and the model's pre-annotations")
    annotation_note: dict
    if labelstudio:
        from demo.annotate import annotate_stage

        annotation_note = annotate_stage(paths, log)
    else:
        annotation_note = {"skipped": "run with --no-labelstudio: no Label Studio server was started"}
        print(f"    {annotation_note['skipped']}", flush=True)
    (out / "annotation.json").write_text(json.dumps(annotation_note, indent=2))

    log.banner("7/7 report")
    from demo.report import write_demo_report

    report = write_demo_report(paths, summary, annotation_note, log.timings)
    log.save()
    print(f"\nreport: {report}\nsummary: {out / 'summary.json'}", flush=True)
    for task, row in summary.items():
        better = "higher" if row["higher_is_better"] else "lower"
        baseline = "n/a" if row["baseline"] is None else f"{row['baseline']:.4f}"
        print(
            f"  {task:<7} {row['metric']:<8} ({better} is better)  pretrained {row['pretrained']:.4f}  "
            f"random init {row['random_init']:.4f}  baseline {baseline}"
        )
    return summary


def clean(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
