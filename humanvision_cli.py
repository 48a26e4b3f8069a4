"""`hv`: the one command-line entry of humanvision, with a subcommand group per package.

Each package that has commands provides `<package>/cli.py` with `register(subparsers)`; the handlers
import their heavy dependencies (ray, torch, pyrender, ...) only when they run, so `hv --help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# Modules that register subcommands, in the order of `hv --help`. A package without commands yet has no
# `cli` module and is skipped.
CLI_MODULES = ("data_engine.cli", "synth.cli", "annotation.cli", "train.cli", "eval.cli", "demo.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hv", description="humanvision: a factory for human-centric vision models")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in CLI_MODULES:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("hv: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # `hv schema --format json | head`: the reader left; not an error of ours
        sys.stderr.close()
        code = 0
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
