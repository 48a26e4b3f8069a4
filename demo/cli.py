"""`hv demo`: the whole factory end to end on bundled data.

hv demo --out runs/demo                     # what `make demo` runs (about 12 minutes on 2 idle cores)
hv demo --out /tmp/demo --profile smoke --no-labelstudio   # a minute or two: the test's size
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the whole factory end to end on bundled data")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (re-use it to resume)")
    p.add_argument("--profile", choices=("full", "smoke"), default="full", help="sizes: full (make demo) or smoke")
    p.add_argument("--no-labelstudio", action="store_true", help="skip the Label Studio stage")
    p.add_argument("--fresh", action="store_true", help="delete OUT first instead of resuming")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import os
    import sys

    from demo.run import clean, run_demo
    from demo.stages import StageFailed

    # The stages run as subprocesses that import OpenGL, Ray and DeepSpeed: quiet, self-contained, CPU.
    for key, value in (
        ("PYOPENGL_PLATFORM", "egl"),
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("DS_ACCELERATOR", "cpu"),
    ):
        os.environ.setdefault(key, value)
    if args.fresh:
        clean(args.out)
    try:
        run_demo(args.out, profile=args.profile, labelstudio=not args.no_labelstudio)
    except StageFailed as e:
        print(f"hv demo: {e}", file=sys.stderr)
        return 1
    return 0
