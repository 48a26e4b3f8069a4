"""benchmarks/pretraining_value.py: the smoke profile run as a user runs it writes Table 7 in miniature (every task
x arm with a number per seed, the baselines beside them), from subject groups that never meet, with an image-only
pretraining pool; a re-run skips every stage; bad arguments stop with one clear line."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from data_engine.shards import expand, iter_members

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "pretraining_value.py"
TASKS = ("pose", "seg", "depth", "normal")
ARMS = ("mae", "random")


def ptv():
    return importlib.import_module("benchmarks.pretraining_value")


def run_script(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ptv") / "run"
    # A few minutes on 2 idle cores; 1800 s leaves room for a machine shared at nice 19 (and a DeepSpeed op that
    # a cold torch_extensions cache compiles first: several minutes there).
    done = run_script("--profile", "smoke", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


@pytest.mark.slow
def test_every_task_and_arm_has_a_number_per_seed_and_a_baseline(smoke) -> None:
    out, stdout = smoke
    results = json.loads((out / "pretraining_value.json").read_text())
    seeds = results["seeds"]
    assert len(seeds) == ptv().PROFILES["smoke"].seeds >= 2 and results["eval_split"] == "heldout"
    assert set(results["tasks"]) == set(TASKS)
    table = (out / "pretraining_value.md").read_text()
    assert table in stdout  # printed as written
    for task, row in results["tasks"].items():
        assert set(row["arms"]) == set(ARMS)
        for arm in ARMS:
            a = row["arms"][arm]
            assert list(a["per_seed"]) == [str(s) for s in seeds]
            values = list(a["per_seed"].values())
            assert all(isinstance(v, float) and math.isfinite(v) for v in values), (task, arm, values)
            assert a["min"] == min(values) and a["max"] == max(values) and a["min"] <= a["mean"] <= a["max"]
            assert a["std"] is not None and a["std"] >= 0
            # The numbers are the evaluation files' (no copy drifts).
            metrics = json.loads((out / "eval-heldout" / f"{arm}-seed{seeds[-1]}" / task / "metrics.json").read_text())
            assert a["per_seed"][str(seeds[-1])] == metrics[row["metric"]]
            name = {"mae": "MAE init", "random": "random init"}[arm]
            assert f"| {task} | {row['metric']} " in table and f"| {name} |" in table
        assert math.isfinite(row["baseline"]["value"]) and f"baseline: {row['baseline']['method']}" in table
    stages = ("synth", "curate", "split", "pretrain", "finetune-mae-seed0", "finetune-random-seed1")
    for stage in (*stages, "eval-heldout-mae-seed1", "baselines-heldout"):
        assert stage in results["timings_s"] and f"] {stage}: " in stdout  # each stage's time, printed


def _subjects_of(folder: Path) -> dict[str, str]:
    """key -> subject, read from the synth shards themselves."""
    return {
        m["__key__"]: json.loads(m["json"])["synth"]["subject"]
        for path in expand(str(folder))
        for m in iter_members(path)
    }


@pytest.mark.slow
def test_groups_are_disjoint_and_the_pool_is_images_only(smoke) -> None:
    out, _ = smoke
    record = json.loads((out / "splits" / "subjects.json").read_text())
    groups = {g: set(v) for g, v in record["groups"].items()}
    assert all(groups[g] for g in ("heldout", "val", "labelled", "pool"))
    assert not groups["pool"] & groups["labelled"]
    assert not groups["heldout"] & (groups["pool"] | groups["labelled"] | groups["val"])
    assert not groups["val"] & (groups["pool"] | groups["labelled"])
    # The shards, not only the record: every sample sits with its own subject's group.
    subject = _subjects_of(out / "synth" / "shards")
    for g in ("heldout", "val", "labelled"):
        assert {subject[k] for k in _subjects_of(out / "splits" / g)} == groups[g]
    pool_keys = record["keys"]["pool"]
    assert pool_keys and {subject[k] for k in pool_keys} == groups["pool"]
    # MAE reads only images: no label member, no subject, split, camera or person box in the json.
    allowed = {"schema_version", "source", "width", "height", "persons"}
    for folder in ("pool", "photos"):
        for path in expand(str(out / "splits" / folder)):
            for m in iter_members(path):
                assert set(m) - {"__key__", "__url__"} in ({"jpg", "json"}, {"png", "json"}), sorted(m)
                meta = json.loads(m["json"])
                assert set(meta) <= allowed and meta["persons"] == [], meta
    pretrain_config = (out / "pretrain" / "config.yaml").read_text()
    assert str(out / "splits" / "pool") in pretrain_config and "labelled" not in pretrain_config
    images = record["images"]
    assert images["pool"] + images["photos"] >= 10 * images["labelled"] > 0 and images["photos"] > 0
    assert images["pool"] == len(pool_keys)


@pytest.mark.slow
def test_a_rerun_skips_every_stage_and_val_scores_the_same_models(smoke) -> None:
    out, _ = smoke
    before = (out / "pretraining_value.json").read_text()
    done = run_script("--profile", "smoke", "--out", str(out), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = [line for line in done.stdout.splitlines() if line.rstrip().endswith(" ...")]
    assert ran == [], ran
    assert json.loads(before)["tasks"] == json.loads((out / "pretraining_value.json").read_text())["tasks"]

    # Tuning numbers: the same models on the validation subjects, beside the held-out table, not over it.
    done = run_script("--profile", "smoke", "--out", str(out), "--eval-split", "val", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = [line.split()[-2] for line in done.stdout.splitlines() if line.rstrip().endswith(" ...")]
    assert all(name.startswith(("eval-val-", "baselines-val")) for name in ran) and len(ran) == 5, ran
    val = json.loads((out / "pretraining_value-val.json").read_text())
    assert val["eval_split"] == "val" and set(val["tasks"]) == set(TASKS)
    assert json.loads((out / "pretraining_value.json").read_text())["eval_split"] == "heldout"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0"], "--seeds: must be >= 1, got 0"),
        (["--seeds", "three"], "--seeds: must be a whole number >= 1"),
        (["--eval-split", "test"], "--eval-split: invalid choice"),
    ],
)
def test_bad_arguments_stop_with_one_clear_line(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = run_script("--profile", "smoke", "--out", str(out), *args, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_an_unwritable_out_stops_before_any_stage(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run_script("--profile", "smoke", "--out", str(blocker / "run"), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("pretraining_value: error: --out") and str(blocker) in line, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_subject_groups_are_disjoint_and_fixed_and_a_small_pool_is_refused() -> None:
    m = ptv()
    s = m.PROFILES["cpu"]
    synth_split = {f"body-0-{i:06d}": ("heldout" if i % 7 == 0 else "train") for i in range(140)}
    groups = m.assign_subjects(synth_split, s)
    assert groups == m.assign_subjects(dict(reversed(synth_split.items())), s)  # order of discovery is irrelevant
    assert (len(groups["val"]), len(groups["labelled"])) == (s.val_subjects, s.labelled_subjects)
    seen = [k for g in m.GROUPS for k in groups[g]]
    assert sorted(seen) == sorted(synth_split) and len(set(seen)) == len(seen)
    assert set(groups["heldout"]) == {k for k, v in synth_split.items() if v == "heldout"}
    m.check_groups(groups, s.views, photos=3, s=s)
    with pytest.raises(m.SettingsError, match="under 10 x the"):
        m.check_groups(m.assign_subjects(synth_split, replace(s, labelled_subjects=30)), s.views, 3, s)
    with pytest.raises(m.SettingsError, match="no heldout"):
        m.check_groups(m.assign_subjects(dict.fromkeys(synth_split, "train"), s), s.views, 3, s)


def test_every_profile_plans_a_pool_ten_times_the_labelled_set() -> None:
    m = ptv()
    for name, s in m.PROFILES.items():
        groups = m.planned_groups(s)
        m.check_groups(groups, s.views, photos=0, s=s)  # raises otherwise
        assert s.seeds >= (3 if name != "smoke" else 2), name


def test_spread_is_the_sample_std() -> None:
    m = ptv()
    assert m.spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert m.spread([0.5])["std"] is None
