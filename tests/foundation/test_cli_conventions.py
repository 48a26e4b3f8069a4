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
    ("argv", "ours", "library"),
    [
        (["schema"], logging.INFO, logging.WARNING),
        (["-v", "schema"], logging.DEBUG, logging.WARNING),
        (["schema", "-vv"], logging.DEBUG, logging.DEBUG),
        (["schema", "-q"], logging.WARNING, logging.WARNING),
        (["-qq", "schema"], logging.ERROR, logging.ERROR),
        (["-qqq", "schema"], logging.CRITICAL, logging.CRITICAL),
    ],
)
def test_verbosity_sets_our_and_the_libraries_levels(argv, ours, library, capsys):
    try:
        assert _run(argv) == 0
        assert logging.getLogger("train").level == ours and logging.getLogger("synth.cli").getEffectiveLevel() == ours
        assert logging.getLogger().level == library  # Ray, DeepSpeed, httpx: quiet unless -vv
    finally:
        humanvision_cli.configure_logging(0, 0)


def test_progress_shows_by_default_and_q_silences_it(capsys):
    from data_engine.logs import configure_logging

    try:
        configure_logging(0, 0)
        logging.getLogger("train.finetune").info("step 10")
        logging.getLogger("annotation.cli").warning("skipped one")
        logging.getLogger("ray.data").info("library chatter")
        err = capsys.readouterr().err
        assert "step 10\n" in err and "hv: warning: annotation.cli: skipped one" in err and "chatter" not in err
        configure_logging(0, 1)
        logging.getLogger("train.finetune").info("step 20")
        logging.getLogger("annotation.cli").warning("skipped two")
        err = capsys.readouterr().err
        assert "step 20" not in err and "skipped two" in err
    finally:
        humanvision_cli.configure_logging(0, 0)


def test_processes_started_by_hv_inherit_its_level():
    """A DeepSpeed rank or another child reads the level `hv -q` chose from the environment."""
    import os
    import subprocess
    import sys

    code = (
        "import logging; from data_engine.logs import configure_from_env; configure_from_env(); "
        "logging.getLogger('train.engine').info('progress'); logging.getLogger('train.engine').warning('problem')"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "HV_LOG_LEVEL": "WARNING", "PYTHONPATH": root}
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "progress" not in quiet.stderr and "problem" in quiet.stderr
    env.pop("HV_LOG_LEVEL")
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "progress" in default.stderr


def test_synth_preview_has_its_own_help(capsys):
    assert _run(["synth", "preview", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hv synth preview") and "contact sheet" in out and "--bodies" not in out
