"""demo.data's regrouping of synthetic shards (by split, by any json field, image-only splits) and
demo.stages.hv_commands (several hv commands in one interpreter, stopping at the first failure) and
demo.stages.run_stages (commands side by side, a share of the cores each, every failure named)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_engine.shards import ShardWriter, expand, iter_members
from demo.data import copy_image_only, split_by_meta
from demo.stages import StageFailed, StageLog, hv_commands, run_stages


def _write(folder: Path, subjects: dict[str, str]) -> None:
    with ShardWriter(str(folder / "body"), max_count=3) as writer:
        for i, (subject, split) in enumerate(subjects.items()):
            meta = {
                "schema_version": 1, "width": 2, "height": 2, "source": {"uri": f"anny://{subject}"},
                "persons": [{"bbox": [0, 0, 1, 1]}], "split": split, "synth": {"subject": subject},
            }  # fmt: skip
            writer.write(
                {"__key__": f"{i:04x}", "png": b"png-bytes", "json": json.dumps(meta).encode(), "seg.png": b"labels"}
            )


def _read(folder: Path) -> dict[str, dict]:
    return {m["__key__"]: m for path in expand(str(folder)) for m in iter_members(path)}


def test_split_by_meta_by_split_then_by_a_route_with_an_image_only_split(tmp_path: Path) -> None:
    _write(tmp_path / "in", {"a": "train", "b": "heldout", "c": "train", "d": "train"})
    assert split_by_meta(tmp_path / "in", tmp_path / "out") == {"train": 3, "heldout": 1}
    assert set(_read(tmp_path / "out" / "heldout")["0001"]) >= {"png", "json", "seg.png"}  # bytes unchanged

    group = {"a": "labelled", "b": "heldout", "c": "pool", "d": "pool"}
    counts = split_by_meta(
        tmp_path / "in", tmp_path / "out", route=lambda m: group[m["synth"]["subject"]], image_only={"pool"}
    )
    assert counts == {"labelled": 1, "heldout": 1, "pool": 2}
    assert not (tmp_path / "out" / "train").exists()  # rebuilt from scratch
    labelled = _read(tmp_path / "out" / "labelled")["0000"]
    assert labelled["seg.png"] == b"labels"
    for member in _read(tmp_path / "out" / "pool").values():
        assert set(member) - {"__key__", "__url__"} == {"png", "json"} and member["png"] == b"png-bytes"
        meta = json.loads(member["json"])
        assert meta == {"schema_version": 1, "width": 2, "height": 2, "source": meta["source"], "persons": []}

    assert copy_image_only(tmp_path / "in", tmp_path / "photos", prefix="curated") == 4
    assert all(set(json.loads(m["json"])) <= {"schema_version", "width", "height", "source", "persons"}
               for m in _read(tmp_path / "photos").values())  # fmt: skip
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["curated-000000.tar"]


def test_hv_commands_run_in_order_and_stop_at_the_first_failure() -> None:
    ok = subprocess.run(hv_commands(["--version"], ["--version"]), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.count("hv (humanvision)") == 2
    bad = subprocess.run(
        hv_commands(["--version"], ["no-such-command"], ["--version"]), capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and bad.stdout.count("hv (humanvision)") == 1 and "no-such-command" in bad.stderr


# Each waits (up to 60 s) for the other's file: they finish only if they run at the same time.
_HANDSHAKE = """
import os, pathlib, sys, time
mine, theirs = map(pathlib.Path, sys.argv[1:3])
mine.write_text(os.environ["OMP_NUM_THREADS"] + " " + os.environ.get("MASTER_PORT", "none"))
deadline = time.monotonic() + 60
while not theirs.exists():
    if time.monotonic() > deadline:
        sys.exit("the other stage never ran")
    time.sleep(0.01)
print("met", theirs.name)
"""


def test_run_stages_runs_side_by_side_with_a_share_of_the_cores_and_names_every_failure(
    tmp_path: Path, monkeypatch
) -> None:
    log = StageLog(tmp_path)
    a, b = str(tmp_path / "a.txt"), str(tmp_path / "b.txt")
    # Left behind by an in-process training run in this process: the stages must not share its rendezvous.
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("RANK", "0")
    seconds = run_stages(
        log, {"left": [sys.executable, "-c", _HANDSHAKE, a, b], "right": [sys.executable, "-c", _HANDSHAKE, b, a]}
    )
    assert set(seconds) == set(log.timings) == {"left", "right"}
    assert Path(a).read_text() == Path(b).read_text() == f"{max(1, (os.cpu_count() or 1) // 2)} none"
    assert "met b.txt" in (tmp_path / "logs" / "left.log").read_text()
    assert "met a.txt" in (tmp_path / "logs" / "right.log").read_text()
    assert set(json.loads((tmp_path / "timings.json").read_text())) == {"left", "right"}

    # A failure stops the stages still running (here one that would wait ten minutes), and names both.
    fail = [sys.executable, "-c", "import sys; sys.exit(3)"]
    waits = [sys.executable, "-c", "import time; time.sleep(600)"]
    with pytest.raises(StageFailed) as info:
        run_stages(log, {"fails": fail, "waits": waits})
    message = str(info.value)
    assert "'fails' failed with exit code 3" in message and str(tmp_path / "logs" / "fails.log") in message
    assert message.endswith("stopped because of it: waits")
    assert "fails" in log.timings


def test_side_by_side_stages_show_progress_bars_as_whole_lines(tmp_path: Path, monkeypatch, capsys) -> None:
    import demo.stages

    monkeypatch.setattr(demo.stages, "_PROGRESS_EVERY_S", 0.0)  # every redraw becomes a line
    bar = [sys.executable, "-c", "import sys; sys.stdout.write('step 1\\rstep 2\\rdone\\n')"]
    run_stages(StageLog(tmp_path), {"bar": bar, "quiet": [sys.executable, "-c", "pass"]})
    shown = capsys.readouterr().out
    assert [line.strip() for line in shown.splitlines() if "[bar]" in line] == [
        "[bar] step 1",
        "[bar] step 2",
        "[bar] done",
    ]
    assert b"step 1\rstep 2\rdone" in (tmp_path / "logs" / "bar.log").read_bytes()  # the log keeps every redraw


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"), [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")]
)
def test_the_demo_trains_in_bf16_only_on_a_cpu_with_bf16_instructions(monkeypatch, amx, avx512_bf16, expected) -> None:
    import torch

    from demo.run import PROFILES, cpu_precision

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert cpu_precision() == expected
    assert f"precision={expected}" in PROFILES["full"].finetune_overrides()  # "auto" never reaches a config
    full = PROFILES["full"].resolved()
    # Without bf16 instructions fewer, dearer fp32 steps keep make demo inside its budget.
    assert (full.precision, full.finetune_steps) == (expected, 1000 if expected == "bf16" else 750)
    # A torch without these probes (they are private) gets fp32, the safe choice, not an AttributeError.
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert cpu_precision() == "fp32"
