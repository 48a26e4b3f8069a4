"""`hv eval ...`, `hv predict` and `hv export`: metrics, pictures, reports and deployable models.

    hv eval pose --gt gt.json --pred results.json [--keypoints all] [--out metrics.json]
    hv eval seg --gt gt_seg/ --pred pred_seg/ [--vocab goliath28]
    hv eval depth --gt gt_depth/ --pred pred_depth/
    hv eval normal --gt gt_normal/ --pred pred_normal/
    hv eval pose --checkpoint runs/pose/model.safetensors --shards 'val/*.tar' --out-dir runs/pose/eval flip_test=true
    hv eval report runs/pose-tiny eval/pose.json --out report.html
    hv predict --checkpoint runs/multi/model.safetensors photos/ 'val/*.tar' --out preds/ [--boxes boxes.json]
    hv export --checkpoint runs/multi/model.safetensors --format onnx --out model.onnx [--size 1024x768]

Each metric command prints one JSON object on stdout (and writes it with `--out`); bad input exits 2
with one line on stderr naming the file at fault.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import Any

from data_engine import schema

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("eval", help="metrics from files or a checkpoint; HTML reports")
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="ACTION", required=True)

    from eval.tasks import EVAL_TASKS

    for name, row in EVAL_TASKS.items():
        task = ev_sub.add_parser(name, help=row.help)
        task.add_argument("--gt", help=row.gt_help)
        task.add_argument("--pred", help=row.pred_help)
        for option in row.file_options:
            flag, kwargs = _FILE_OPTIONS[option]
            task.add_argument(flag, **kwargs)
        _add_model_mode(task)
        task.set_defaults(func=_eval_task, eval_task=name)

    report = ev_sub.add_parser("report", help="a self-contained HTML page from runs and metric files")
    report.add_argument("inputs", nargs="+", metavar="RUN_OR_METRICS", help="run folders, metrics.json(l) files")
    report.add_argument("--out", required=True, help="the HTML file to write")
    report.add_argument("--title", default="humanvision evaluation report")
    report.set_defaults(func=_eval_report)

    predict = subparsers.add_parser("predict", help="run a fine-tuned model on images or shards and draw it")
    predict.add_argument(
        "--checkpoint", required=True, help="model.safetensors of hv train finetune, or its run folder"
    )
    predict.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGES_OR_SHARDS",
        help="image files, folders, .tar shards or quoted globs; key=value items are config overrides",
    )
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--boxes", default=None, help="JSON {image name or key: [[x0, y0, x1, y1(, score)], ...]}")
    predict.add_argument("--config", default=None, help="YAML predict config (configs/eval/predict.yaml)")
    predict.set_defaults(func=_predict)
    # Inputs and key=value overrides may sit on either side of --out/--boxes, as users type them.
    predict.__class__ = _IntermixedParser

    export = subparsers.add_parser("export", help="export a fine-tuned model to ONNX or TorchScript, checked vs eager")
    export.add_argument("--checkpoint", required=True, help="model.safetensors of hv train finetune, or its run folder")
    export.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    export.add_argument("--out", required=True, help="the file to write (FILE.json beside it describes it)")
    export.add_argument("--size", default=None, metavar="HxW", help="input size (default: the training size)")
    export.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference to eager allowed")
    export.add_argument(
        "--with-decode", action="store_true", help="add a pose_keypoints output: heatmap argmax in input pixels"
    )
    export.set_defaults(func=_export)


class _IntermixedParser(argparse.ArgumentParser):
    """A subcommand parser that accepts positionals between options (`IMG --out DIR key=value`): plain argparse
    gives all positionals of one `nargs="+"` argument in one run, and `hv` calls parse_args, not the
    intermixed variant, so the subparser does it itself."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inside:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


# Options of a task's file metric (`EvalTaskDef.file_options`), passed to it after --gt and --pred.
_FILE_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "keypoints": ("--keypoints", {"default": None, "help": "keypoint subset (default: inferred from the GT file)"}),
    "vocab": ("--vocab", {"choices": schema.VOCABULARY_NAMES, "default": "goliath28"}),
}


def _add_model_mode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="also write the JSON object to this file")
    model = p.add_argument_group("from a model (instead of --gt/--pred)")
    model.add_argument("--checkpoint", help="model.safetensors of hv train finetune, or its run folder")
    model.add_argument(
        "--shards", action="append", metavar="GLOB", help="held-out shards: a file, folder or quoted glob (repeatable)"
    )
    model.add_argument("--out-dir", default=None, help="write metrics.json, config.yaml and pictures/ here")
    model.add_argument("--config", default=None, help="YAML eval config (configs/eval/eval.yaml)")
    model.add_argument("overrides", nargs="*", metavar="key=value", help="eval config overrides")
    p.__class__ = _IntermixedParser


def _file_mode(args: argparse.Namespace) -> bool | None:
    """True for --gt/--pred, False for --checkpoint/--shards; None (after printing why) for a bad mix."""
    files = args.gt is not None or args.pred is not None
    model = args.checkpoint is not None or args.shards is not None
    if files and model:
        print("hv eval: give either --gt/--pred or --checkpoint/--shards, not both", file=sys.stderr)
        return None
    if model:
        if args.checkpoint is None or not args.shards:
            print("hv eval: --checkpoint and --shards go together", file=sys.stderr)
            return None
        return False
    if args.gt is None or args.pred is None:
        print("hv eval: give --gt and --pred (files), or --checkpoint and --shards (a model)", file=sys.stderr)
        return None
    if args.overrides or args.config or args.out_dir:
        print("hv eval: --config, --out-dir and key=value apply to --checkpoint runs only", file=sys.stderr)
        return None
    return True


def _unusable_output(command: str, folder: str | None = None, file: str | None = None) -> bool:
    """Check the output folder / file before any work (creating the folder); print one line and say True when
    one cannot be written."""
    from data_engine.outputs import OutputPathError, prepare_output_dir, prepare_output_file

    try:
        if folder:
            prepare_output_dir(folder)
        if file:
            prepare_output_file(file)
    except OutputPathError as e:
        print(f"{command}: {e}", file=sys.stderr)
        return True
    return False


def _eval_model(task: str, args: argparse.Namespace) -> int:
    from data_engine.config import ConfigError, load_config
    from eval.config import EvalConfig
    from eval.metrics import MetricInputError
    from eval.model_eval import evaluate_checkpoint
    from train.models.weights import CheckpointError

    if _unusable_output(f"hv eval {task}", args.out_dir, args.out):
        return 2
    try:
        cfg = load_config(EvalConfig, args.config, args.overrides, what="eval config")
        result = evaluate_checkpoint(task, args.checkpoint, args.shards, cfg, args.out_dir)  # type: ignore[arg-type]
    except (ConfigError, CheckpointError, MetricInputError) as e:
        print(f"hv eval {task}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a SampleError under bad_samples=raise names the shard and key
        from data_engine.sample import SampleError

        if isinstance(e, SampleError):
            print(f"hv eval {task}: {e}", file=sys.stderr)
            return 2
        raise
    return _emit(result, args.out)


def _emit(result: dict[str, Any], out: str | None) -> int:
    text = json.dumps(result, indent=None, sort_keys=False)
    if out:
        folder = os.path.dirname(os.path.abspath(out))
        os.makedirs(folder, exist_ok=True)
        tmp = f"{out}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, out)
    print(text)
    return 0


def _run_metric(fn, *args: Any, out: str | None) -> int:
    from eval.metrics import MetricInputError

    try:
        result = fn(*args)
    except MetricInputError as e:
        print(f"hv eval: {e}", file=sys.stderr)
        return 2
    return _emit(result, out)


def _metric_from_files(task: str, args: argparse.Namespace) -> tuple[Any, tuple[Any, ...]]:
    """The file-based metric function of `task` and its arguments after --gt and --pred."""
    from eval.tasks import EVAL_TASKS

    row = EVAL_TASKS[task]  # type: ignore[index]
    return row.metric_function(), tuple(getattr(args, name) for name in row.file_options)


def _eval_task(args: argparse.Namespace) -> int:
    """`hv eval TASK`: metrics from --gt/--pred files, or from --checkpoint on --shards."""
    mode = _file_mode(args)
    if mode is None:
        return 2
    if not mode:
        return _eval_model(args.eval_task, args)
    fn, extra = _metric_from_files(args.eval_task, args)
    if _unusable_output(f"hv eval {args.eval_task}", file=args.out):
        return 2
    return _run_metric(fn, args.gt, args.pred, *extra, out=args.out)


def _eval_report(args: argparse.Namespace) -> int:
    from eval.report import ReportInputError, report_from_paths

    if _unusable_output("hv eval report", file=args.out):
        return 2
    try:
        report_from_paths(args.inputs, args.out, title=args.title)
    except ReportInputError as e:
        print(f"hv eval report: {e}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


def _export(args: argparse.Namespace) -> int:
    from eval.export import ExportError, ExportFormat, export_checkpoint, parse_size
    from train.models.weights import CheckpointError

    if _unusable_output("hv export", file=args.out):
        return 2
    try:
        size = parse_size(args.size) if args.size else None
        result = export_checkpoint(
            args.checkpoint, args.out, ExportFormat(args.format), size, args.tolerance, args.with_decode
        )
    except (ValueError, CheckpointError, ExportError) as e:
        print(f"hv export: {e}", file=sys.stderr)
        return 2 if not isinstance(e, ExportError) else 1
    worst = max(result.max_abs_diff.values())
    print(
        f"{result.path}: {args.format}, tasks {', '.join(result.tasks)}, input {result.input_size[0]}x"
        f"{result.input_size[1]}, max |exported - eager| = {worst:.2e}; described in {result.metadata_path}"
    )
    return 0


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """(inputs, key=value overrides): an item is an override when it reads key=value and is not a path."""
    inputs, overrides = [], []
    for item in items:
        (overrides if _OVERRIDE.match(item) and not os.path.exists(item) else inputs).append(item)
    return inputs, overrides


def _predict(args: argparse.Namespace) -> int:
    from data_engine.config import ConfigError, load_config
    from eval.config import PredictConfig
    from eval.predict import PredictInputError, predict
    from train.models.weights import CheckpointError

    inputs, overrides = split_overrides(args.inputs)
    if _unusable_output("hv predict", folder=args.out):
        return 2
    try:
        cfg = load_config(PredictConfig, args.config, overrides, what="predict config")
        if not inputs:
            raise PredictInputError("no input images or shards given")
        index = predict(args.checkpoint, inputs, args.out, cfg, args.boxes)
    except (ConfigError, CheckpointError, PredictInputError) as e:
        print(f"hv predict: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from data_engine.detect import DetectorError

        if isinstance(e, DetectorError):
            print(f"hv predict: {e}", file=sys.stderr)
            return 2
        raise
    failed = index["failed"]
    print(f"{len(index['predicted'])} predicted, {len(failed)} failed -> {args.out} (index.json lists each)")
    for bad in failed[:10]:
        log.warning("failed: %s: %s", bad["source"], bad["reason"])
    return 1 if failed else 0  # every input that could be was written; a failed one still fails the command
