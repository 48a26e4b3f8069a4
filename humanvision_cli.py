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


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("humanvision")
    except metadata.PackageNotFoundError:  # run from a checkout without installing it
        return "unknown (not installed)"


class _PrintVersion(argparse.Action):
    """`--version`, looked up only when asked (importlib.metadata costs ~0.3 s at every `hv` start otherwise)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"hv (humanvision) {version()}")
        parser.exit()


def _add_verbosity(parser: argparse.ArgumentParser, top: bool) -> None:
    """-v / -q, counted, on `hv` and on every subcommand (`hv -v curate` and `hv curate -v` mean the same).

    A subcommand's copy defaults to SUPPRESS so it does not overwrite what was given before the command.
    """
    default = 0 if top else argparse.SUPPRESS
    group = parser.add_argument_group("logging")
    for flags, dest, text in (
        (("-v", "--verbose"), "verbose", "more log messages (-v debug, -vv libraries' debug too)"),
        (("-q",), "quiet", "fewer log messages (-q warnings only, -qq errors only)"),
    ):
        try:
            group.add_argument(*flags, dest=dest, action="count", default=default, help=text)
        except argparse.ArgumentError:  # a command with its own meaning for the flag keeps it
            continue


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield sub
                yield from _subparsers(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hv", description="humanvision: a factory for human-centric vision models")
    parser.add_argument("--version", action=_PrintVersion, help="print the version and exit")
    _add_verbosity(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in CLI_MODULES:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(subparsers)
    for sub in _subparsers(parser):
        _add_verbosity(sub, top=False)
    return parser


def configure_logging(verbose: int, quiet: int) -> int:
    """Our packages log progress at INFO by default; each -v / -q moves one step (see `data_engine.logs`)."""
    from data_engine.logs import configure_logging as configure

    return configure(verbose, quiet)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", 0), getattr(args, "quiet", 0))
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
