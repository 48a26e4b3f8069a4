"""`hv train ...`: architectures, MAE pretraining, weight export and Sapiens weight conversion.

    hv train archs [--json]
    hv train pretrain --config configs/pretrain/tiny.yaml --out RUN [--gpus N | --cpus N | --in-process] [key=value ...]
    hv train pretrain --config configs/pretrain/sapiens_1b.yaml --out RUN --hostfile hosts.txt   # multi-node
    hv train export-weights RUN [--out FILE] [--tag step_00001000] [--part full|encoder]
    hv train convert-sapiens CKPT --out FILE [--arch A] [--img-size H W] [--allow-unused]

`hv train finetune` is added by `train.finetune_cli` when that module exists; it launches the same way
(`train.launch.add_launch_args` / `launch_from_args`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from train.launch import add_launch_args

    train = subparsers.add_parser("train", help="pretrain (MAE) and fine-tune the ViT with DeepSpeed")
    sub = train.add_subparsers(dest="train_command", metavar="COMMAND", required=True)

    p = sub.add_parser("archs", help="list the ViT architectures: parameters and FLOPs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_archs)

    p = sub.add_parser("pretrain", help="MAE pretraining on curated shards through the deepspeed launcher")
    p.add_argument("--config", required=True, help="YAML file, e.g. configs/pretrain/tiny.yaml")
    p.add_argument("--out", required=True, help="run folder: config, checkpoints, metrics, TensorBoard")
    add_launch_args(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.shards='out/*.tar' steps=100")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("export-weights", help="consolidate a checkpoint into one fp32 safetensors file")
    p.add_argument("run", help="the run folder (holding checkpoints/)")
    p.add_argument("--out", help="output file (default RUN/weights.safetensors)")
    p.add_argument("--tag", help="checkpoint tag, e.g. step_00001000 (default: the newest)")
    p.add_argument("--part", choices=("full", "encoder"), default="full", help="encoder: the ViT backbone alone")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "convert-sapiens",
        help="convert Meta's released Sapiens v1 (.pth) or Sapiens2 (save_pretrained folder) weights",
    )
    p.add_argument(
        "checkpoint",
        help="a Sapiens v1 .pth (mmpretrain / mmpose / mmseg key names), or a Sapiens2 folder (config.json + "
        "safetensors, as transformers' save_pretrained writes it)",
    )
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--arch", help="check the backbone against this arch (default: detected from its shapes)")
    p.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), help="model input (default 1024 768)")
    p.add_argument("--patch-padding", type=int, help="override the patch padding of the checkpoint's kind")
    p.add_argument("--source-grid", type=int, nargs=2, metavar=("H16", "W16"), help="checkpoint's token grid")
    p.add_argument("--allow-unused", action="store_true", help="leave out tensors that have no place (listed)")
    p.set_defaults(func=_convert)

    if importlib.util.find_spec("train.finetune_cli") is not None:
        from train import finetune_cli

        finetune_cli.register(sub)


def _error(command: str, message: object) -> int:
    print(f"hv train {command}: error: {message}", file=sys.stderr)
    return 2


def _archs(args: argparse.Namespace) -> int:
    from train.models.mae import mae_flops, mae_params
    from train.models.vit import ARCHS, count_params, vit_flops

    rows = []
    for name, cfg in ARCHS.items():
        h, w = cfg.img_size
        rows.append(
            {
                "arch": name,
                "embed_dim": cfg.embed_dim,
                "depth": cfg.depth,
                "heads": cfg.num_heads,
                "img_size": [h, w],
                "params": count_params(cfg),
                "mae_params": mae_params(cfg),
                "gflops": vit_flops(cfg) / 1e9,
                "mae_gflops": mae_flops(cfg) / 1e9,
            }
        )
    if args.json:
        print(json.dumps(rows))
        return 0
    print(
        f"{'arch':<14}{'embed':>6}{'depth':>6}{'heads':>6}{'size':>11}{'params':>10}{'+MAE dec':>10}"
        f"{'GFLOPs/img':>12}{'MAE GFLOPs':>12}"
    )
    for r in rows:
        size = "x".join(map(str, r["img_size"]))
        print(
            f"{r['arch']:<14}{r['embed_dim']:>6}{r['depth']:>6}{r['heads']:>6}{size:>11}{r['params'] / 1e6:>9.1f}M"
            f"{r['mae_params'] / 1e6:>9.1f}M{r['gflops']:>12.1f}{r['mae_gflops']:>12.1f}"
        )
    print("params: backbone alone; +MAE dec: with the 512-d x 8 MAE decoder (the published Sapiens sizes).")
    print("GFLOPs: one forward pass of one image at the size shown, 2 FLOPs per multiply-add.")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from data_engine.outputs import OutputPathError, prepare_output_dir
    from data_engine.shards import expand
    from train.config import ConfigError, load_config, save_config, to_yaml
    from train.launch import launch_from_args
    from train.pretrain import PretrainConfig

    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
        expand(cfg.data.shard_patterns())  # fail here, before launching processes, on a pattern matching nothing
        prepare_output_dir(args.out, "run folder (--out)")
    except (ConfigError, FileNotFoundError, OutputPathError) as e:
        return _error("pretrain", e)
    config_path = os.path.join(args.out, "config.yaml")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            if f.read() != to_yaml(cfg):
                log.warning("%s differs from this launch's config; replacing it", config_path)
    save_config(cfg, config_path)
    try:
        return launch_from_args(args, "train.pretrain", ["--config", config_path, "--out", args.out])
    except (ValueError, FileNotFoundError) as e:
        return _error("pretrain", e)


def _export(args: argparse.Namespace) -> int:
    from data_engine.outputs import prepare_output_file
    from train.export import export_weights, summary

    try:
        if args.out:
            prepare_output_file(args.out, "--out")
        path = export_weights(args.run, args.out, args.tag, args.part)
    except (FileNotFoundError, ValueError) as e:  # OutputPathError and UnsafeCheckpointError are ValueErrors
        return _error("export-weights", e)
    print(summary(path))
    return 0


def _convert(args: argparse.Namespace) -> int:
    """A full fine-tuned checkpoint becomes a model file (`model_spec` in its header: Predictor, hv predict, hv eval
    --checkpoint, hv export and --init read it); a pretrained backbone stays a bare ViT file for --init."""
    from safetensors.torch import save_file

    from data_engine.outputs import prepare_output_file
    from train.models.convert_sapiens import convert_checkpoint, load_checkpoint_file
    from train.models.convert_sapiens2 import convert_sapiens2, is_sapiens2_checkpoint
    from train.models.weights import SPEC_KEY

    if is_sapiens2_checkpoint(args.checkpoint):  # the family is told by the source itself: a config.json folder
        if args.arch or args.img_size or args.patch_padding is not None or args.source_grid:
            return _error(
                "convert-sapiens",
                ValueError(
                    "a Sapiens2 folder takes its arch and size from config.json: "
                    "drop --arch / --img-size / --patch-padding / --source-grid"
                ),
            )
        try:
            prepare_output_file(args.out, "--out")
            print(convert_sapiens2(args.checkpoint, args.out, allow_unused=args.allow_unused))
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            return _error("convert-sapiens", e)
        return 0
    try:
        prepare_output_file(args.out, "--out")
        conv = convert_checkpoint(
            load_checkpoint_file(args.checkpoint),
            arch=args.arch,
            image_size=tuple(args.img_size or (1024, 768)),
            patch_padding=args.patch_padding,
            source_grid=tuple(args.source_grid) if args.source_grid else None,
            allow_unused=args.allow_unused,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        return _error("convert-sapiens", e)
    meta = {"format": "humanvision", "arch": conv.arch, "source": os.path.abspath(args.checkpoint)}
    if conv.spec is None:
        meta["part"] = "encoder"
    else:
        meta |= {"part": "full", SPEC_KEY: conv.spec.to_json()}
    save_file({k: v.contiguous() for k, v in conv.state.items()}, args.out, metadata=meta)
    report = {"out": args.out, "task": conv.task, "arch": conv.arch, "depth": conv.depth}
    report |= {"patch_padding": conv.patch_padding, "tensors": len(conv.state), "dropped": conv.dropped}
    if conv.unused:
        report["unused"] = conv.unused
    print(json.dumps(report))
    return 0
