"""`hv import coco ANNOTATIONS.json IMAGES_DIR --out OUT`: the command of data_engine.coco (imported when it runs,
so `hv --help` stays quick)."""

from __future__ import annotations

import argparse
import logging
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """`hv import coco ANNOTATIONS.json IMAGES_DIR --out OUT`."""
    imp = subparsers.add_parser("import", help="bring existing labelled sets into contract shards")
    kinds = imp.add_subparsers(dest="import_kind", metavar="FORMAT", required=True)
    coco = kinds.add_parser(
        "coco",
        help="a COCO or COCO-WholeBody keypoint file and its images",
        description="Map COCO / COCO-WholeBody keypoints by name into the 308 Goliath points; write shards "
        "under OUT/shards and one manifest row per image (accepted, or rejected with its reason) to "
        "OUT/manifest.parquet.",
    )
    coco.add_argument("annotations", metavar="ANNOTATIONS.json")
    coco.add_argument("images", metavar="IMAGES_DIR")
    coco.add_argument("--out", required=True, help="output folder (shards/ and manifest.parquet)")
    coco.add_argument("--shard-max-count", type=int, default=1000)
    coco.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from data_engine.coco import CocoError, import_coco

    try:
        report = import_coco(
            args.annotations, args.images, args.out, args.shard_max_count, log=logging.getLogger(__name__).info
        )
    except CocoError as e:
        print(f"hv import coco: {e}", file=sys.stderr)
        return 2
    return 0 if report.counts()["accepted"] else 1
