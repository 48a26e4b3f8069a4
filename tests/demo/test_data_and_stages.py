"""demo.data's regrouping of synthetic shards (by split, by any json field, image-only splits) and
demo.stages.hv_commands (several hv commands in one interpreter, stopping at the first failure)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from data_engine.shards import ShardWriter, expand, iter_members
from demo.data import copy_image_only, split_by_meta
from demo.stages import hv_commands


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
