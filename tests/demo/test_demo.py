"""The main job end to end (the smoke profile of `hv demo`), its report in a real browser, and the
reliability drill: kill the whole job at two points, re-run, and get what an uninterrupted run gets."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from data_engine.shards import iter_members

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# A throw-away key for the loopback server the demo starts; it must never show in outputs or logs.
TOKEN = "5eed" * 10


def demo_argv(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "humanvision_cli", "demo", "--out", str(out), "--profile", "smoke", *extra]


def run_demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LABEL_STUDIO_API_KEY": TOKEN}
    return subprocess.run(
        demo_argv(out, *extra), cwd=REPO, capture_output=True, text=True, timeout=900, check=False, env=env
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted smoke run with Label Studio; the server it leaves running is stopped afterwards."""
    out = tmp_path_factory.mktemp("demo") / "run"
    result = run_demo(out)
    annotation = out / "annotation.json"
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        yield out, result.stdout
    finally:
        if annotation.exists():
            pid = json.loads(annotation.read_text()).get("pid")
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGINT)


def test_summary_has_every_task_with_finite_numbers(demo_run) -> None:
    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"pose", "seg", "depth", "normal"}
    expected = {"pose": ("AP", True), "seg": ("mIoU", True), "depth": ("rmse", False), "normal": ("mean", False)}
    for task, row in summary.items():
        assert (row["metric"], row["higher_is_better"]) == expected[task]
        for key in ("pretrained", "random_init", "baseline"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (task, key, row[key])
    # The same numbers as the evaluation files they summarise (no copy drifts).
    seg = json.loads((out / "eval" / "pretrained-seg" / "metrics.json").read_text())
    assert summary["seg"]["pretrained"] == seg["mIoU"]
    assert 0 <= summary["seg"]["baseline"] <= 1 and summary["normal"]["baseline"] > 0
    # The second depth baseline: a ramp down the image, scored by the same metric as the constant.
    baselines = json.loads((out / "eval" / "baselines.json").read_text())
    ramp = baselines["depth"]["vertical_ramp"]
    assert 0 < ramp["rmse"] < baselines["depth"]["rmse"] == summary["depth"]["baseline"]


def test_every_stage_left_its_outputs(demo_run) -> None:
    out, stdout = demo_run
    assert (out / "synth" / "manifest.parquet").exists() and (out / "renders.png").exists()
    splits = {p.name for p in (out / "splits").iterdir()}
    assert splits == {"train", "heldout"}
    manifest = pq.read_table(out / "curate" / "manifest.parquet").to_pylist()
    inputs = json.loads((out / "curate_inputs.json").read_text())
    assert len(manifest) == len(inputs)  # one row per input, bad files included
    by_name = {Path(r["uri"]).name: r for r in manifest}
    # The astronaut and its exact, resized and cropped copies: one kept, the others point at it.
    group = [
        by_name[n] for n in ("astronaut.jpg", "astronaut copy.jpg", "astronaut_small_q70.jpg", "astronaut_cropped.jpg")
    ]
    (kept,) = [r for r in group if r["status"] == "accepted"]
    assert all(r["status"] == "duplicate" and r["duplicate_of"] == kept["key"] for r in group if r is not kept)
    assert by_name["grace_hopper.jpg"]["status"] == "accepted"
    assert by_name["empty.jpg"]["status"] == "rejected" and by_name["empty.jpg"]["reason"]
    assert (out / "pretrain" / "encoder.safetensors").exists()
    settings = json.loads((out / "demo-settings.json").read_text())
    assert settings["precision"] in ("bf16", "fp32")  # "auto", resolved for this CPU
    for init in ("pretrained", "random"):
        assert (out / f"finetune-{init}" / "model.safetensors").exists()
        config = yaml.safe_load((out / f"finetune-{init}" / "config.yaml").read_text())
        assert config["precision"] == settings["precision"]
        assert config["pose"]["loss_weight"] == settings["pose_loss_weight"] > 1
        assert config["depth"]["log_offset"] == settings["depth_log_offset"] > 0
        assert config["depth"]["grad_weight"] == settings["depth_grad_weight"] > 0
        assert (
            config["model"]["head_options"]["pose"]["width"]
            == settings["pose_head_width"]
            != config["model"]["head_channels"]
        )
    for init in ("pretrained", "random"):
        for task in ("pose", "seg", "depth", "normal"):
            metrics = json.loads((out / "eval" / f"{init}-{task}" / "metrics.json").read_text())
            assert metrics["model"]["flip_test"] is settings["flip_test"] is True, (init, task)
    for stage in ("synth", "curate", "pretrain", "finetune-pretrained", "eval-random", "annotate-predict"):
        assert (out / "logs" / f"{stage}.log").exists(), stage
    for n in range(1, 8):
        assert f"{n}/7" in stdout  # progress is visible, stage by stage


def test_label_studio_serves_the_curated_images_with_pre_annotations(demo_run) -> None:
    from annotation.client import Studio

    out, stdout = demo_run
    note = json.loads((out / "annotation.json").read_text())
    assert note["url"].startswith("http://127.0.0.1:") and note["url"] in stdout
    accepted = [
        r["key"] for r in pq.read_table(out / "curate" / "manifest.parquet").to_pylist() if r["status"] == "accepted"
    ]
    assert TOKEN not in stdout
    for path in out.rglob("*"):
        if path.is_file() and "labelstudio" not in path.parts:  # the server's own database holds its token
            assert TOKEN.encode() not in path.read_bytes(), path
    with Studio(note["url"], TOKEN) as studio:
        project = studio.require_project(note["project"])
        tasks = list(studio.iter_tasks(project["id"], with_annotations=True))
    assert sorted(t["data"]["key"] for t in tasks) == sorted(accepted)
    assert all(t["predictions"] for t in tasks)


def test_report_opens_in_chromium_without_console_errors(demo_run, tmp_path: Path) -> None:
    from demo.screenshot import screenshot

    out, _ = demo_run
    html = (out / "report.html").read_text()
    for heading in ("Results on held-out subjects", "Curation", "Training curves", "Predictions"):
        assert heading in html
    # Pose next to its baseline on a scale where the mean pose does not score 0: the models' and its PCK.
    assert "Pose keypoints within a fraction of the box (PCK)" in html
    assert "Depth RMSE (m) against a vertical ramp" in html
    assert html.count("PCK@0.05") >= 2  # the overview's table and the per-run metrics
    # Self-contained: nothing fetched from anywhere, no script.
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html) and "<script" not in html
    png = tmp_path / "report.png"
    messages = screenshot(out / "report.html", png)
    assert messages == []
    assert png.stat().st_size > 20_000  # a rendered page, not a blank one


def _kill_when(out: Path, banner: str, delay_s: float) -> None:
    """Start the demo, wait for a stage banner, let it run `delay_s` more, then SIGKILL the whole group."""
    log = out.parent / f"{out.name}-{banner.replace('/', '_')}.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            demo_argv(out, "--no-labelstudio"), cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 600
        while banner not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, f"the demo ended before {banner!r}: {log.read_text()[-2000:]}"
        time.sleep(delay_s)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _keys(folder: Path) -> list[str]:
    return sorted(m["__key__"] for path in sorted(folder.glob("*.tar")) for m in iter_members(str(path)))


def test_killed_twice_then_rerun_matches_the_uninterrupted_run(demo_run, tmp_path: Path) -> None:
    reference, _ = demo_run
    out = tmp_path / "killed"
    _kill_when(out, "1/7 synth", 6.0)  # mid-render
    _kill_when(out, "3/7 pretrain", 8.0)  # mid-training, after the launcher started its ranks
    result = run_demo(out, "--no-labelstudio")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    synth_keys = _keys(out / "synth" / "shards")
    assert synth_keys == _keys(reference / "synth" / "shards") and len(set(synth_keys)) == len(synth_keys)
    assert _keys(out / "curate" / "shards") == _keys(reference / "curate" / "shards")
    statuses = {
        Path(r["uri"]).name: r["status"] for r in pq.read_table(out / "curate" / "manifest.parquet").to_pylist()
    }
    assert statuses == {
        Path(r["uri"]).name: r["status"] for r in pq.read_table(reference / "curate" / "manifest.parquet").to_pylist()
    }

    def last_losses(run: Path) -> dict[int, float]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return {r["step"]: r["loss"] for r in rows}

    resumed, uninterrupted = last_losses(out / "pretrain"), last_losses(reference / "pretrain")
    final = max(uninterrupted)
    assert max(resumed) == final
    assert resumed[final] == pytest.approx(uninterrupted[final], rel=1e-4)  # resumed from its checkpoint, same data
    assert set(json.loads((out / "summary.json").read_text())) == {"pose", "seg", "depth", "normal"}
