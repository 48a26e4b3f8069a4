"""`hv curate` given a bad output folder, a missing detector file or a broken config: exit 2 with one line that
names the culprit, and nothing created on the way."""

from __future__ import annotations

import os

import pytest

from data_engine.inputs import ListingStats, iter_uris
from humanvision_cli import main


def _hv_curate(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["curate", *args, "progress=false"])
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    return folder


def test_out_that_is_a_file_exits_2_naming_it(inputs, tmp_path, capsys):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    code, err = _hv_curate(capsys, str(inputs), "--out", str(out), "--detector", "none")
    assert code == 2
    assert err.count("\n") == 1 and str(out) in err and "is a file" in err and "Traceback" not in err
    assert out.read_text() == "keep me"


def test_out_that_cannot_be_written_exits_2_naming_it(inputs, tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permission bits: use a kernel filesystem that refuses everyone
        out = "/sys/hv-curate-out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        out = str(locked / "out")
    code, err = _hv_curate(capsys, str(inputs), "--out", out, "--detector", "none")
    assert code == 2
    assert err.count("\n") == 1 and out in err and "cannot write" in err and "Traceback" not in err
    assert not os.path.exists(out)


def test_missing_detector_file_fails_before_the_output_folder_is_created(inputs, tmp_path, capsys):
    out, weights = tmp_path / "new-out", tmp_path / "absent.onnx"
    code, err = _hv_curate(capsys, str(inputs), "--out", str(out), "--detector", "onnx", f"detector.weights={weights}")
    assert code == 2 and str(weights) in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("quality:\n  min_short_side: 512\n  min_blur: [1, 2\ndetector:\n  name: none\n", 4),
        ("quality:\n  min_short_side: 512\n bad: 1\n", 3),
        ("dedup:\n\tnear: true\n", 2),  # a tab
    ],
)
def test_config_yaml_syntax_error_keeps_its_file_and_line(inputs, tmp_path, capsys, text, line):
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    code, err = _hv_curate(capsys, str(inputs), "--out", str(out), "--config", str(config))
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert str(config) in err and f"line {line}," in err
    assert not out.exists()


def test_folders_count_the_files_they_skip_by_extension(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.jpg", "B.PNG", "sub/c.webp", "notes.md", "sub/.DS_Store", "sub/raw.cr2", "Thumbs.db"):
        (folder / name).write_bytes(b"x")
    listing = ListingStats()
    uris = list(iter_uris([str(folder)], [".jpg", ".png", ".webp"], listing=listing))
    assert len(uris) == 3 and listing.skipped_by_extension == 4  # every file under the folder is accounted for
    remote = ListingStats()
    assert len(list(iter_uris([f"file://{folder}"], [".jpg", ".png", ".webp"], listing=remote))) == 3
    assert remote.skipped_by_extension == 4
    named = ListingStats()  # a file named on the command line is an input whatever its extension
    assert list(iter_uris([str(folder / "notes.md")], [".jpg"], listing=named)) == [str(folder / "notes.md")]
    assert named.skipped_by_extension == 0
