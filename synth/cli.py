"""`hv synth`: synthetic ground truth (RGB, depth, normals, mask, part seg, keypoints) from scans and bodies.

hv synth scans/ --out runs/synth --views 8 --size 1024x768 --units mm
hv synth --bodies 50 --out runs/bodies --seed 1 --backgrounds ~/backgrounds camera.focal_mm=[35,70]
hv synth preview runs/synth --out sheet.png
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger(__name__)


PREVIEW = "preview"
# With neither scans nor --bodies, the contract is "random parametric humans": this many.
DEFAULT_BODIES = 10


class _InputsAnywhereParser(argparse.ArgumentParser):
    """Lets scans and `key=value` overrides come after the options (`hv synth a.obj --out o views=8`).

    argparse fills a `nargs="*"` positional from the first run of positionals only and calls the rest
    unrecognised; this parser hands those back to `inputs` instead (options stay strict).
    """

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if args and args[0] == PREVIEW and not os.path.exists(PREVIEW) and {"-h", "--help"} & set(args):
            _preview_parser().print_help()  # `preview` is a positional word here: give it its own help
            self.exit()
        namespace, extras = super().parse_known_args(args, namespace)
        stray = [a for a in extras if not a.startswith("-")]
        namespace.inputs = list(getattr(namespace, "inputs", None) or []) + stray
        return namespace, [a for a in extras if a.startswith("-")]


def _preview_parser() -> argparse.ArgumentParser:
    """The help of `hv synth preview` (its arguments are parsed by the synth parser)."""
    p = argparse.ArgumentParser(
        prog="hv synth preview", description="Draw a contact sheet of a few samples of rendered shards."
    )
    p.add_argument("dirs", nargs="+", metavar="RUN_DIR_OR_SHARDS", help="a run folder (its shards/) or shard paths")
    p.add_argument("--out", required=True, help="the sheet PNG to write")
    p.add_argument("--count", type=int, default=4, help="samples on the sheet")
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    parser_class = subparsers._parser_class
    subparsers._parser_class = _InputsAnywhereParser  # only for this one subcommand
    try:
        p = subparsers.add_parser(
            "synth",
            help="render synthetic ground truth from scans and parametric bodies",
            description="Render scans (OBJ/GLB/GLTF/PLY) and random anny bodies into WebDataset shards. "
            "`hv synth preview DIR --out sheet.png` draws a contact sheet of a few samples instead.",
        )
    finally:
        subparsers._parser_class = parser_class
    p.add_argument("inputs", nargs="*", metavar="SCAN_OR_DIR | key=value", help="scans, folders of scans, overrides")
    p.add_argument("--out", required=True, help="output folder (sample sheet PNG for `preview`)")
    p.add_argument("--views", type=int, help="views per scan or body")
    p.add_argument("--bodies", type=int, help="random parametric bodies to render")
    p.add_argument("--size", help="render size WxH, e.g. 1024x768")
    p.add_argument("--units", choices=("m", "dm", "cm", "mm"), help="units of the scan files (default m)")
    p.add_argument("--backgrounds", help="folder of background images (default: procedural)")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="YAML config, e.g. configs/synth/default.yaml")
    p.add_argument("--ray-address", help="join this Ray cluster ('auto' or host:port) instead of a local Ray")
    p.add_argument("--workers", type=int, help="render actors (default: one per CPU)")
    p.add_argument("--count", type=int, default=4, help="preview: samples on the sheet")
    p.set_defaults(func=_main)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r} must look like 1024x768") from None
    return w, h


def _main(args: argparse.Namespace) -> int:
    if args.inputs and args.inputs[0] == PREVIEW and not os.path.exists(PREVIEW):
        return _preview(args.inputs[1:], args.out, args.count)
    from synth.config import ConfigError, load_config

    overrides = [a for a in args.inputs if "=" in a and not os.path.exists(a)]
    scans = [a for a in args.inputs if a not in overrides]
    try:
        size = _parse_size(args.size) if args.size else (None, None)
        config = load_config(
            args.config,
            overrides,
            **{
                "out": args.out,
                "views": args.views,
                "width": size[0],
                "height": size[1],
                "seed": args.seed,
                "bodies.count": args.bodies,
                "scan.units": args.units,
                "background.dir": args.backgrounds,
                "ray_address": args.ray_address,
                "workers": args.workers,
            },
        )
    except (ConfigError, ValueError) as e:
        print(f"hv synth: {e}", file=sys.stderr)
        return 2
    if scans:
        config.scans = list(config.scans) + scans
    if not config.scans and config.bodies.count == 0:
        config.bodies.count = DEFAULT_BODIES
        log.info("hv synth: no scans given: rendering %d random bodies (set --bodies N)", DEFAULT_BODIES)
    if config.background.dir and not os.path.isdir(config.background.dir):
        print(f"hv synth: --backgrounds {config.background.dir}: no such folder", file=sys.stderr)
        return 2
    from data_engine.outputs import OutputPathError, prepare_output_dir

    try:
        prepare_output_dir(config.out, "output folder (--out)")
    except OutputPathError as e:
        print(f"hv synth: {e}", file=sys.stderr)
        return 2

    from data_engine.ray_runtime import RayConnectError
    from synth.engine import OutputMismatch, run_job

    try:
        summary = run_job(config, log=log.info)
    except (OutputMismatch, FileNotFoundError, RayConnectError) as e:
        print(f"hv synth: {e}", file=sys.stderr)
        return 2
    print(
        f"synth: {summary.done} subjects done ({summary.views} views), {summary.rejected} rejected, "
        f"{summary.failed} failed, {summary.skipped} finished earlier; manifest {config.out}/manifest.parquet"
    )
    return 1 if summary.failed else 0


def _preview(dirs: list[str], out: str, count: int) -> int:
    from data_engine.outputs import OutputPathError, prepare_output_file
    from synth.preview import contact_sheet

    if not dirs:
        print("hv synth preview: give a folder of shards (or shard paths)", file=sys.stderr)
        return 2
    try:
        prepare_output_file(out, "--out")
    except OutputPathError as e:
        print(f"hv synth preview: {e}", file=sys.stderr)
        return 2
    paths = [os.path.join(d, "shards") if os.path.isdir(os.path.join(d, "shards")) else d for d in dirs]
    try:
        drawn, report = contact_sheet(paths, out, count)
    except FileNotFoundError as e:
        print(f"hv synth preview: {e}", file=sys.stderr)
        return 2
    for bad in report.bad:
        print(f"hv synth preview: BAD {bad.shard} key={bad.key or '-'}: {bad.reason}", file=sys.stderr)
    if drawn == 0:
        print(f"hv synth preview: no readable samples in {', '.join(dirs)}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({drawn} samples)")
    return 0
