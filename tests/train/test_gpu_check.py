"""`make gpu-check` / benchmarks/gpu_check.py: without a GPU it stops with one line and exit 2; `--device cpu` runs
every part of the GPU path (real DeepSpeed engines, real shards, the real loader) tiny and writes a full report."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
TINY = ["--device", "cpu", "--archs", "tiny", "--size", "64", "--steps", "1", "--warmup", "1", "--batch", "2"]
TINY += ["--peak-tflops", "0.5", "--loader-workers", "1", "--loader-shards", "4", "--loader-per-shard", "2"]
TINY += ["--loader-batches", "2"]
no_gpu_here = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def gpu_check():
    return importlib.import_module("benchmarks.gpu_check")


def run_script(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@no_gpu_here
def test_without_a_gpu_it_exits_2_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "report"
    done = run_script(["--out", str(out)])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU visible to torch"), done.stderr
    assert "--device cpu" in lines[0]  # says how to run the tiny check instead
    assert not out.exists()


@no_gpu_here
def test_make_gpu_check_runs_the_script_on_cuda_and_fails_cleanly_without_a_gpu(tmp_path):
    out = tmp_path / "report"
    # -o setup: the venv is this one; the test must not install anything.
    make = ["make", "-s", "-o", "setup", "gpu-check", f"PY={sys.executable}", f"GPU_CHECK_ARGS=--out {out}"]
    dry = subprocess.run([*make, "-n"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.stdout.split()[:2] == ["DS_ACCELERATOR=cuda", sys.executable], dry.stdout
    assert "benchmarks/gpu_check.py --out" in dry.stdout
    done = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})  # fmt: skip
    assert done.returncode != 0
    assert "gpu_check: no CUDA GPU visible" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--archs", "sapiens_9b"], "arch 'sapiens_9b' is not one of tiny, small, sapiens_0.3b"),
        (["--archs", ","], "--archs is empty"),
        (["--finetune-arch", "vit_h"], "arch 'vit_h'"),
        (["--tasks", "pose,flow"], "--tasks flow"),
        (["--size", "100"], "--size 100 must be a positive multiple of 64"),
        (["--steps", "0"], "--steps must be positive, got 0"),
        (["--batch", "-1"], "--batch must be positive, got -1"),
        (["--peak-tflops", "0"], "--peak-tflops must be positive"),
        (["--loader-workers", "-2"], "--loader-workers must be >= 0"),
    ],
)
def test_bad_arguments_stop_with_one_line_naming_them(args, message, capsys):
    assert gpu_check().main(["--device", "cpu", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check: error: ") and message in err[0], err


def test_an_out_path_that_is_a_file_is_refused(tmp_path, capsys):
    taken = tmp_path / "report.json"
    taken.write_text("{}")
    assert gpu_check().main(["--device", "cpu", "--out", str(taken)]) == 2
    assert f"--out {str(taken)!r} exists and is not a folder" in capsys.readouterr().err
    assert taken.read_text() == "{}"


def test_a_case_out_of_memory_or_broken_is_recorded_and_the_next_case_runs(capsys):
    from benchmarks.gpu_cases.train_steps import run_case

    cpu = torch.device("cpu")

    def out_of_memory() -> dict:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 24.00 GiB\nmore detail")

    def broken() -> dict:
        raise ValueError("heatmap_mse: pred (2, 17, 16, 12) and target (2, 17, 8, 6) differ")

    base = {"arch": "sapiens_1b", "img_size": [1024, 1024], "batch": 8}
    oom = run_case(dict(base), out_of_memory, cpu)
    assert oom["status"] == "oom" and oom["batch"] == 8
    assert oom["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 24.00 GiB"
    error = run_case(dict(base), broken, cpu)
    assert error["status"] == "error" and error["error"].startswith("ValueError: heatmap_mse: pred")
    ok = run_case(dict(base), lambda: {"step_time_s": 0.5}, cpu)
    assert ok["status"] == "ok" and ok["step_time_s"] == 0.5
    gpu_check().print_row("mae", oom)  # the table says so on the case's own row
    (row,) = capsys.readouterr().out.splitlines()
    assert row.split()[:4] == ["mae", "sapiens_1b", "1024x1024", "b8"] and " OOM: OutOfMemoryError: CUDA" in row


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_sdpa_kernel_probe_names_a_kernel_that_runs(dtype):
    from benchmarks.gpu_cases.train_steps import sdpa_kernel_for

    kernel = sdpa_kernel_for(2, 3, 16, 64, dtype, torch.device("cpu"))
    assert kernel in gpu_check().KNOWN_KERNELS


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    done = run_script([*TINY, "--out", str(out)], timeout=900)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return done, report


@pytest.mark.slow
def test_cpu_mode_runs_every_case_and_prints_the_table(cpu_run):
    done, _ = cpu_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not a GPU measurement" in done.stderr
    sections = ("mae", "finetune", "loader")  # DeepSpeed prints lines of its own in between
    rows = [line.split()[0] for line in done.stdout.splitlines() if line.split() and line.split()[0] in sections]
    assert rows == ["mae", "finetune", "finetune", "finetune", "finetune", "loader"], done.stdout
    assert "0 case(s) did not complete" in done.stdout


@pytest.mark.slow
def test_cpu_mode_report_has_every_section_with_sane_figures(cpu_run):
    from train.config import load_config
    from train.models.mae import DecoderConfig, mae_flops
    from train.models.vit import arch_config
    from train.pretrain import PretrainConfig

    _, report = cpu_run
    assert report is not None
    assert report["complete"] is True and report["gpu_measurement"] is False and report["device"].startswith("cpu")
    assert report["peak_flops"] == 0.5e12 and report["peak_flops_source"] == "--peak-tflops"
    kernels = gpu_check().KNOWN_KERNELS

    (mae,) = report["mae"]
    assert mae["status"] == "ok" and mae["arch"] == "tiny" and mae["img_size"] == [64, 64] and mae["batch"] == 2
    assert mae["precision"] == "bf16" and mae["dtype"] == "bfloat16" and mae["grad_checkpointing"] is True
    m = load_config(PretrainConfig, "configs/pretrain/tiny.yaml", ["data.shards=x", "model.img_size=[64,64]"]).model
    flops = mae_flops(arch_config("tiny", [64, 64], depth=m.depth), DecoderConfig(m.decoder_dim, m.decoder_depth,
                      m.decoder_heads), m.mask_ratio)  # fmt: skip
    assert mae["model_flops_per_image"] == flops and mae["train_flops_per_image"] == 3 * flops
    for key in ("step_time_s", "images_per_s", "peak_memory_bytes", "mfu"):
        assert math.isfinite(mae[key]) and mae[key] > 0, key
    assert mae["images_per_s"] == pytest.approx(2 / mae["step_time_s"])
    assert mae["mfu"] == pytest.approx(3 * flops * mae["images_per_s"] / 0.5e12)
    assert set(mae["attention"]) == {"encoder", "decoder"} and set(mae["attention"].values()) <= set(kernels)

    assert [r["task"] for r in report["finetune"]] == ["pose", "seg", "depth", "normal"]
    for r in report["finetune"]:
        assert r["status"] == "ok" and r["image_size"] == [64, 48] and r["batch"] == 2 and r["dtype"] == "bfloat16"
        assert math.isfinite(r["step_time_s"]) and r["step_time_s"] > 0 and r["peak_memory_bytes"] > 0
        assert r["attention"]["backbone"] in kernels

    loader = report["loader"]
    assert loader["status"] == "ok" and loader["workers"] == 1 and loader["samples"] == 8 and loader["shard_bytes"] > 0
    assert loader["source_size"] == [64, 48] and loader["batch_shape"] == [2, 3, 64, 64]
    assert math.isfinite(loader["samples_per_s"]) and loader["samples_per_s"] > 0
    assert loader["vs_mae"]["tiny"] == pytest.approx(loader["samples_per_s"] / mae["images_per_s"])
    assert loader["keeps_up"] == (loader["vs_mae"]["tiny"] >= 1)
    assert report["wall_s"] > 0
