"""Output folders that are files or cannot be written: every command that writes says so in one line naming the
path and exits 2 before doing any work (`data_engine.outputs`)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

import humanvision_cli
from data_engine.outputs import OutputPathError, prepare_output_dir, prepare_output_file
from data_engine.sample import Sample
from data_engine.shards import ShardWriter

ROOT = Path(__file__).resolve().parents[2]


def hv(*argv: str) -> int:
    args = humanvision_cli.build_parser().parse_args(list(argv))
    return int(args.func(args) or 0)


def unwritable_folder(tmp_path: Path) -> str:
    """A folder this process cannot create files in: a read-only folder, or (root ignores modes) one under /sys."""
    if os.geteuid() == 0:
        return "/sys/hv-test-out"
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return str(folder / "out")


@pytest.fixture
def shard(tmp_path: Path) -> str:
    image = np.full((64, 48, 3), 90, np.uint8)
    with ShardWriter(str(tmp_path / "data" / "s")) as writer:
        writer.write(Sample(key="aa", image=image, meta={"split": "train"}))
    return str(tmp_path / "data")


def commands(out: str, shard: str, tmp_path: Path) -> dict[str, list[str]]:
    gt = tmp_path / "gt"
    gt.mkdir(exist_ok=True)
    return {
        "synth": ["synth", "--bodies", "1", "--out", out],
        "pretrain": [
            "train", "pretrain", "--config", str(ROOT / "configs/pretrain/tiny.yaml"), "--out", out, "--in-process",
            f"data.shards={shard}",
        ],
        "finetune": [
            "train", "finetune", "--config", str(ROOT / "configs/finetune/pose_tiny.yaml"), "--out", out,
            "--in-process", f"data.shards={shard}",
        ],
        "eval-files": ["eval", "depth", "--gt", str(gt), "--pred", str(gt), "--out", os.path.join(out, "m.json")],
        "eval-model": ["eval", "depth", "--checkpoint", str(tmp_path / "none"), "--shards", shard, "--out-dir", out],
        "eval-report": ["eval", "report", str(gt), "--out", os.path.join(out, "r.html")],
        "predict": ["predict", "--checkpoint", str(tmp_path / "none"), shard, "--out", out],
        "export": ["export", "--checkpoint", str(tmp_path / "none"), "--format", "onnx", "--out", f"{out}/m.onnx"],
    }  # fmt: skip


@pytest.mark.parametrize(
    "command", ["synth", "pretrain", "finetune", "eval-files", "eval-model", "eval-report", "predict", "export"]
)
@pytest.mark.parametrize("problem", ["file", "unwritable"])
def test_unusable_output_is_one_line_and_exit_2(tmp_path: Path, shard: str, capsys, command: str, problem: str):
    if problem == "file":
        out = tmp_path / "taken"
        out.write_text("a file, not a folder")
        out = str(out)
    else:
        out = unwritable_folder(tmp_path)
    assert hv(*commands(out, shard, tmp_path)[command]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert out in err and ("is a file" in err or "file is in the way" in err or "not writable" in err), err
    assert "Traceback" not in err
    assert os.path.isfile(out) if problem == "file" else not os.path.exists(out)


def test_helper_creates_checks_and_names(tmp_path: Path) -> None:
    assert prepare_output_dir(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []  # no probe left
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        prepare_output_dir(str(tmp_path / "f"))
    with pytest.raises(OutputPathError, match="a file is in the way"):
        prepare_output_dir(str(tmp_path / "f" / "sub"))
    with pytest.raises(OutputPathError, match="is a folder, not a file"):
        prepare_output_file(str(tmp_path / "a"))
    with pytest.raises(OutputPathError, match=r"m\.json.*its folder"):
        prepare_output_file(str(tmp_path / "f" / "m.json"))
    assert prepare_output_file(str(tmp_path / "new" / "m.json")) and (tmp_path / "new").is_dir()
    assert prepare_output_dir("s3://bucket/out") == "s3://bucket/out"  # the file system's to check
