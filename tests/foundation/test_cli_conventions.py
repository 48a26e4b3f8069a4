"""`hv --version`, and -v / -q on `hv` and every subcommand, through `logging`."""

from __future__ import annotations

import logging

import pytest

import humanvision_cli
from humanvision_cli import _subparsers, build_parser, main


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as done:
        main(argv)
    return int(done.value.code or 0)


def test_version_prints_the_package_version(capsys):
    assert _run(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("hv (humanvision) ") and out.split()[-1] == humanvision_cli.version()


def test_every_subcommand_takes_v_and_q():
    parser = build_parser()
    subs = list(_subparsers(parser))
    assert len(subs) > 10  # curate, synth, the eval and train commands, import coco, ...
    for sub in subs:
        flags = {s for a in sub._actions for s in a.option_strings}
        assert {"-v", "-q"} <= flags, sub.prog


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["schema"], logging.WARNING),
        (["-v", "schema"], logging.INFO),
        (["schema", "-vv"], logging.DEBUG),
        (["schema", "-q"], logging.ERROR),
        (["-qqq", "schema"], logging.CRITICAL),
    ],
)
def test_verbosity_sets_the_root_log_level(argv, level, capsys):
    try:
        assert _run(argv) == 0
        assert logging.getLogger().level == level
    finally:
        humanvision_cli.configure_logging(0, 0)


def test_synth_preview_has_its_own_help(capsys):
    assert _run(["synth", "preview", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hv synth preview") and "contact sheet" in out and "--bodies" not in out
