"""OUT/report.html: what the demo did and what came out, as one self-contained page (eval.report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from eval.report import Curves, MetricTable, Note, Picture, Preformatted, Section, read_metrics_log, write_report

_PICTURES_PER_TASK = 3


def _curation_section(curate: Path, inputs_file: Path) -> Section:
    section = Section("2. Curation: what was kept and why")
    stats = json.loads((curate / "stats.json").read_text())
    counts = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    nested = {k: v for k, v in stats.items() if isinstance(v, dict)}
    section.items.append(MetricTable("Counts", {**counts, **nested}))
    table = pq.read_table(curate / "manifest.parquet").select(["uri", "status", "reason", "duplicate_of"])
    expected = {row["name"]: row["kind"] for row in json.loads(inputs_file.read_text())}
    lines = [f"{'input':<28} {'made as':<10} {'status':<10} reason / duplicate of"]
    for row in sorted(table.to_pylist(), key=lambda r: (r["status"], r["uri"])):
        name = Path(row["uri"]).name
        detail = row["reason"] or (f"duplicate of {row['duplicate_of']}" if row["duplicate_of"] else "")
        lines.append(f"{name:<28} {expected.get(name, '?'):<10} {row['status']:<10} {detail}")
    section.items.append(Preformatted("Every input, one manifest row each", "\n".join(lines)))
    return section


def _curves(title: str, run: Path) -> list[Any]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return [Note(f"{title}: no metrics.jsonl in {run}", level="warning")]
    records, problems = read_metrics_log(str(path))
    keep = ("step", "loss", "lr", "images_per_s", "loss_pose", "loss_seg", "loss_depth", "loss_normal")
    items: list[Any] = [Curves(title, [{k: r[k] for k in keep if k in r} for r in records])]
    if problems:
        items.append(Note(f"{len(problems)} lines of {path} were not JSON objects and were skipped", level="warning"))
    return items


def _pictures(folder: Path, title: str) -> list[Picture]:
    pictures = sorted((folder / "pictures").glob("*.png"))[:_PICTURES_PER_TASK]
    return [Picture(f"{title}: {p.stem}", p.read_bytes()) for p in pictures]


def write_demo_report(
    paths: Any, summary: dict[str, dict[str, Any]], annotation: dict[str, Any], timings: dict[str, float]
) -> Path:
    out: Path = paths.out
    overview = Section("1. Results on held-out subjects")
    overview.items.append(
        Note(
            "Each task's headline metric for the backbone fine-tuned from the demo's MAE pretraining, the same "
            "fine-tuning from a random initialisation, and a trivial baseline (mean pose, majority class, constant "
            "depth, mean normal), all scored by the same code on the same held-out subjects."
        )
    )
    overview.items.append(MetricTable("Headline metrics", {"tasks": summary}))
    baselines = json.loads((out / "eval" / "baselines.json").read_text())
    overview.items.append(
        MetricTable("How the baselines predict", {"baseline": {t: b["method"] for t, b in baselines.items()}})
    )
    pose_pck = {
        "MAE init": json.loads((paths.eval("pretrained", "pose") / "metrics.json").read_text()).get("pck"),
        "random init": json.loads((paths.eval("random", "pose") / "metrics.json").read_text()).get("pck"),
        "baseline (mean pose)": baselines["pose"].get("pck"),
    }
    if all(pose_pck.values()):
        overview.items.append(
            Note(
                "Pose AP scales each keypoint's tolerance by the person's mask area: on these small people it asks "
                "for a few pixels, and the mean pose can score 0. PCK counts the keypoints within 5%, 10% and 20% "
                "of the larger side of each person's box."
            )
        )
        overview.items.append(MetricTable("Pose keypoints within a fraction of the box (PCK)", {"pck": pose_pck}))
    ramp = baselines["depth"].get("vertical_ramp")
    if ramp:
        depth_rmse = {
            "MAE init": summary["depth"]["pretrained"],
            "random init": summary["depth"]["random_init"],
            "baseline (constant)": summary["depth"]["baseline"],
            "vertical ramp (depth = image row)": ramp["rmse"],
        }
        overview.items.append(
            Note(
                "The renders' cameras mostly look down at the person, so depth grows down the image: a ramp that "
                "knows nothing of the body scores well above the constant. A depth model has learnt the body "
                "only where it beats the ramp."
            )
        )
        overview.items.append(MetricTable("Depth RMSE (m) against a vertical ramp", {"depth rmse": depth_rmse}))
    overview.items.append(MetricTable("Stage wall times (s)", dict(timings)))

    synth = Section("Synthetic renders (RGB | depth | normals | seg | keypoints)")
    sheet = out / "renders.png"
    if sheet.exists():
        synth.items.append(Picture("Contact sheet of renders", sheet.read_bytes(), "hv synth preview"))

    training = Section("3-4. Training curves")
    training.items += _curves("MAE pretraining (ZeRO-2, 2 CPU processes)", paths.pretrain)
    training.items += _curves("Fine-tuning from the MAE backbone", paths.finetune("pretrained"))
    training.items += _curves("Fine-tuning from random initialisation", paths.finetune("random"))

    predictions = Section("5. Predictions next to ground truth (MAE-initialised model, held-out subjects)")
    full_metrics: dict[str, Any] = {}
    for task in summary:
        predictions.items += _pictures(paths.eval("pretrained", task), task)
        for init in ("pretrained", "random"):
            metrics = json.loads((paths.eval(init, task) / "metrics.json").read_text())
            scalars = {**metrics, **metrics.get("pck", {})}  # pose's PCK as columns of its own
            full_metrics[f"{task} ({init})"] = {
                k: v for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
    tables = Section("Every metric")
    tables.items.append(MetricTable("Held-out metrics per run", {"runs": full_metrics}))

    annotate = Section("6. Annotation")
    if "skipped" in annotation:
        annotate.items.append(Note(f"Label Studio was not started: {annotation['skipped']}"))
    else:
        annotate.items.append(
            Note(
                f"Label Studio is serving project {annotation['project']!r} at {annotation['url']} "
                f"(user {annotation['username']}), with the curated images as tasks and the fine-tuned model's "
                f"keypoints as pre-annotations. Stop it with `{annotation['stop']}`."
            )
        )

    sections = [
        overview,
        synth,
        _curation_section(paths.curate, out / "curate_inputs.json"),
        training,
        predictions,
        tables,
        annotate,
    ]
    path = out / "report.html"
    write_report(str(path), "humanvision demo: the factory end to end", sections)
    return path
