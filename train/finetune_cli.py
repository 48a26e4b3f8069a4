"""`hv train finetune`: fine-tune pose / seg / depth / normal heads (or all of them) on a ViT backbone.

    hv train finetune --task pose --config configs/finetune/pose_tiny.yaml --out runs/pose \\
        [--init RUN_OR_SAFETENSORS] [--cpus N | --gpus N | --in-process | --hostfile FILE] [key=value ...]

The config is loaded and checked here, before any process starts (an unknown key, a bad task or arch, shards
that match nothing, an init that does not exist: a one-line error and exit code 2); the resolved config is
saved as RUN/config.yaml and every rank (started by the `deepspeed` launcher, `train.launch`) reads it.
"""

from __future__ import annotations

import argparse
import os
import sys


def register(train_subparsers: argparse._SubParsersAction) -> None:
    from train.launch import add_launch_args

    p = train_subparsers.add_parser(
        "finetune", help="fine-tune for pose, body-part segmentation, depth and normals (DeepSpeed)"
    )
    p.add_argument("--task", choices=("pose", "seg", "depth", "normal", "multi"), help="overrides the config's task")
    p.add_argument("--config", required=True, help="YAML file, e.g. configs/finetune/pose_tiny.yaml")
    p.add_argument("--out", required=True, help="run folder: config, checkpoints, metrics, model.safetensors")
    p.add_argument("--init", help="a pretraining or fine-tuning run folder, or a .safetensors file")
    add_launch_args(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.shards='out/synth/*.tar' steps=200")
    p.set_defaults(func=_finetune)


def _error(message: object) -> int:
    print(f"hv train finetune: error: {message}", file=sys.stderr)
    return 2


def _finetune(args: argparse.Namespace) -> int:
    from data_engine.outputs import prepare_output_dir
    from data_engine.shards import expand
    from train.config import ConfigError, save_config
    from train.finetune_config import load_finetune_config
    from train.launch import launch_from_args
    from train.models.weights import resolve_weights_file

    try:
        cfg = load_finetune_config(args.config, args.overrides, task=args.task, init=args.init)
        if not cfg.data.shard_patterns():
            raise ConfigError("data.shards is empty: pass data.shards=GLOB (files, folders or globs, comma-separated)")
        expand(cfg.data.shard_patterns())  # a pattern matching nothing fails now, not on every rank later
        if cfg.data.background_patterns():
            expand(cfg.data.background_patterns())
        if cfg.init:
            _check_init(cfg.init, resolve_weights_file)
        prepare_output_dir(args.out, "run folder (--out)")
    except (ConfigError, FileNotFoundError, ValueError) as e:  # an OutputPathError is a ValueError
        return _error(e)
    config_path = os.path.join(args.out, "config.yaml")
    save_config(cfg, config_path)
    try:
        return launch_from_args(args, "train.finetune", ["--config", config_path, "--out", args.out])
    except (ValueError, FileNotFoundError) as e:
        return _error(e)


def _check_init(init: str, resolve) -> None:
    """An init must be a weights file, or a run folder with an export or a checkpoint."""
    try:
        resolve(init)
    except FileNotFoundError:
        if not os.path.isfile(os.path.join(init, "checkpoints", "latest")):
            raise
