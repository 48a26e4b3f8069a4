"""`hv curate`: the curation DAG on Ray Data (details in data_engine/curate.py).

    hv curate photos/ 'more/**/*.jpg' list.parquet --out runs/curated --detector none
    hv curate photos/ --out runs/curated --config configs/curate/default.yaml quality.min_short_side=512
    hv curate photos/ --out s3://bucket/curated     # credentials: AWS_ACCESS_KEY_ID/..., AWS_PROFILE or a role
    hv curate s3://bucket/raw/ --out /mnt/shared/curated --ray-address auto --detector onnx \\
        detector.weights=/mnt/models/person.onnx detector.concurrency=8 detector.num_gpus=1

Arguments of the form `dotted.key=value` are config overrides; everything else is an INPUT (write an input
path containing `=` as `./name=x.jpg`). Re-running the same command resumes or, when done, only reports.
Exit codes: 0 done, 2 bad arguments or config, 1 the job failed.
"""

from __future__ import annotations

import argparse
import re
import sys

_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def _add_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--out",
        required=required,
        metavar="DIR",
        help="output folder or URI, e.g. s3://bucket/curated (created; re-use it to resume)",
    )
    p.add_argument("--detector", choices=("none", "hog", "onnx"), default=None, help="person detector (default hog)")
    p.add_argument("--config", default=None, metavar="FILE", help="YAML config (see configs/curate/)")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="join this Ray cluster instead of a local one")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "curate",
        help="curate images into shards + manifest (Ray Data DAG: decode, quality, person detection, dedup)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # REMAINDER, then a second parse in the handler: `hv` parses with parse_args, which cannot take
    # positionals on both sides of an option (`hv curate in/ --out DIR key=value`).
    p.add_argument(
        "items",
        nargs=argparse.REMAINDER,
        metavar="INPUT_OR_KEY=VALUE",
        help="folders, globs, list files, URIs; key=value",
    )
    _add_options(p, required=False)
    p.set_defaults(func=_curate)


def parse_items(args: argparse.Namespace) -> argparse.Namespace:
    """Options given after the first INPUT are still in `args.items`: parse them (intermixed) and merge."""
    inner = argparse.ArgumentParser(prog="hv curate")
    inner.add_argument("items", nargs="*")
    _add_options(inner, required=False)
    late = inner.parse_intermixed_args(args.items)
    for name in ("out", "detector", "config", "ray_address"):
        if getattr(late, name) is None:
            setattr(late, name, getattr(args, name))
    if not late.out:
        inner.error("the following arguments are required: --out")
    if not late.items:
        inner.error("give at least one INPUT (a folder, glob, list file or URI)")
    return late


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """(inputs, overrides): `key=value` tokens are overrides, the rest inputs."""
    inputs = [i for i in items if not _OVERRIDE.match(i)]
    overrides = [i for i in items if _OVERRIDE.match(i)]
    return inputs, overrides


def _curate(args: argparse.Namespace) -> int:
    from data_engine.config import ConfigError
    from data_engine.curate_config import load_config
    from data_engine.inputs import InputError

    args = parse_items(args)
    inputs, overrides = split_items(args.items)
    flags = {
        "out": args.out,
        "ray_address": args.ray_address,
        "detector": {"name": args.detector} if args.detector else None,
        "inputs": inputs or None,
    }
    try:
        cfg = load_config(args.config, overrides, **flags)
    except ConfigError as e:
        print(f"hv curate: {e}", file=sys.stderr)
        return 2

    from data_engine.curate import CurateError, run_curate
    from data_engine.detect import DetectorError
    from data_engine.ray_runtime import RayConnectError

    try:
        run_curate(cfg)
    except (ConfigError, InputError, DetectorError, RayConnectError) as e:
        print(f"hv curate: {e}", file=sys.stderr)
        return 2
    except CurateError as e:
        print(f"hv curate: {e}", file=sys.stderr)
        return 1
    return 0
