"""Fine-tuning benchmarks: each figure is a ratio against a baseline measured in this process on the same data.

    .venv/bin/python benchmarks/finetune.py [--size 128 96] [--repeats 5]

1. multi-task step: one backbone pass for a batch mixing pose crops and dense views (`FinetuneModel` routes rows
   to heads) vs the same rows trained task by task (one backbone pass per task). Ratio = separate / shared.
2. data rows: decode + augmentation + targets (`iter_items`) vs decoding alone (`iter_samples`), same shards.
   Ratio = the cost of making a training row relative to reading it. Then decoding every member vs only what a
   pose run reads (image and pose.json, `LabelSpec.label_members`): ratio = what skipping the dense maps saves.
3. heatmap decoding: argmax + DARK sub-pixel refinement (`decode_heatmaps`) vs a bare argmax, 308 keypoints.
4. precision: the demo's four-task step (tiny ViT, 6 blocks, 8 px patches, pose head 64 wide), forward + backward,
   at one thread (as each of the demo's two fine-tunings runs), with the model in bf16 (as DeepSpeed's bf16 mode
   holds it) vs fp32. Ratio = fp32 / bf16: above 1 where the CPU has bf16 instructions (AMX, AVX512-BF16),
   which is when `make demo` fine-tunes in bf16 (`demo.run.cpu_precision`).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile

import numpy as np
import torch

# benchmarks/ holds a train.py that would shadow the `train` package: import from the repository root instead,
# and the synthetic people from the fine-tuning tests.
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:] = [ROOT, os.path.join(ROOT, "tests", "finetune")] + [p for p in sys.path if os.path.abspath(p) != HERE]
os.chdir(ROOT)

from benchmarks.timing import best_of  # noqa: E402  (once the repository root is on the path)


def bench_multitask(size: tuple[int, int], repeats: int) -> None:
    from ft_synthetic import person_sample

    from train.data_finetune import ItemReport, collate, data_params, sample_items
    from train.finetune import task_losses
    from train.finetune_config import load_finetune_config
    from train.models.multitask import build_model
    from train.models.tasks import TASKS

    cfg = load_finetune_config(
        "configs/finetune/multi_tiny.yaml", [f"model.image_size=[{size[0]},{size[1]}]", "model.depth=4"]
    )
    torch.manual_seed(0)
    model = build_model(cfg.model_spec())
    spec, pose, dense = data_params(cfg)
    items = [
        it for i in range(8) for it in sample_items(person_sample(i, *size), spec, pose, dense, None, ItemReport())
    ]
    shared = {k: torch.from_numpy(v) for k, v in collate(items).items()}
    per_task = []
    for task in cfg.active_tasks:
        rows = shared[f"{task}_index"]
        batch = {"image": shared["image"][rows], f"{task}_index": torch.arange(len(rows))}
        for name in TASKS[task].targets:
            batch[name] = shared[name]
        per_task.append(batch)

    def step(batches) -> None:
        model.zero_grad(set_to_none=True)
        for batch in batches:
            loss, _ = task_losses(model, batch, cfg, None)
            loss.backward()

    step([shared])  # warm-up
    t_shared = best_of(lambda: step([shared]), repeats)
    t_separate = best_of(lambda: step(per_task), repeats)
    print(
        f"multi-task step, {len(items)} rows at {size[0]}x{size[1]} (tiny, 4 blocks): shared backbone "
        f"{t_shared * 1e3:.0f} ms, task by task {t_separate * 1e3:.0f} ms -> ratio {t_separate / t_shared:.2f}x"
    )


def bench_data(size: tuple[int, int], repeats: int) -> None:
    from ft_synthetic import person_sample, write_shards

    from data_engine.sample import decode
    from data_engine.shards import iter_samples
    from train.data_finetune import LabelSpec, iter_items
    from train.models.tasks import TASK_NAMES
    from train.transforms.dense import DenseParams
    from train.transforms.pose import TopDownParams

    with tempfile.TemporaryDirectory() as folder:
        write_shards(os.path.join(folder, "people"), [person_sample(i, 256, 192) for i in range(32)], max_count=16)
        spec = LabelSpec(tasks=TASK_NAMES, keypoint_set="coco17")
        pose, dense = TopDownParams(input_size=size), DenseParams(input_size=size)

        def decode_only() -> int:
            return sum(1 for _ in iter_samples(folder))

        def rows() -> int:
            return sum(1 for _ in iter_items(folder, spec, pose, dense, seed=0, epochs=1))

        def decode_for_pose() -> int:
            labels = LabelSpec(tasks=("pose",)).label_members()
            return sum(1 for _ in iter_samples(folder, decoder=functools.partial(decode, labels=labels)))

        n = rows()
        t_decode = best_of(decode_only, repeats)
        t_rows = best_of(rows, repeats)
        t_pose = best_of(decode_for_pose, repeats)
    print(
        f"decode for a pose run (image + pose.json) {t_pose * 1e3:.0f} ms, every member {t_decode * 1e3:.0f} ms "
        f"-> ratio {t_decode / t_pose:.2f}x"
    )
    print(
        f"data: 32 samples 256x192 (all labels) -> {n} rows at {size[0]}x{size[1]}: "
        f"decode alone {t_decode * 1e3:.0f} ms "
        f"({32 / t_decode:.0f} samples/s), decode + augment + targets {t_rows * 1e3:.0f} ms ({n / t_rows:.0f} rows/s) "
        f"-> ratio {t_rows / t_decode:.2f}x"
    )


def bench_decode(repeats: int) -> None:
    from train.transforms.pose import decode_heatmaps, udp_heatmaps

    rng = np.random.default_rng(0)
    maps = np.stack(
        [
            udp_heatmaps(rng.uniform(8, 180, (308, 2)), np.ones(308, bool), (256, 192), (64, 48), 2.0)[0]
            for _ in range(8)
        ]
    )

    def argmax_only() -> None:
        flat = maps.reshape(8, 308, -1)
        idx = flat.argmax(-1)
        np.stack([idx % 48, idx // 48], -1)

    t_argmax = best_of(argmax_only, repeats * 4)
    t_dark = best_of(lambda: decode_heatmaps(maps), repeats * 4)
    t_blur = best_of(lambda: decode_heatmaps(maps, blur_kernel=5), repeats)
    print(
        f"heatmap decode, 8 x 308 maps of 64x48: argmax {t_argmax * 1e3:.1f} ms, "
        f"+ DARK refinement {t_dark * 1e3:.1f} ms "
        f"-> ratio {t_dark / t_argmax:.2f}x; with 5x5 blur {t_blur * 1e3:.1f} ms -> ratio {t_blur / t_argmax:.2f}x"
    )


def bench_precision(size: tuple[int, int], repeats: int) -> None:
    from demo.run import cpu_precision
    from train.models.multitask import build_model
    from train.models.spec import ModelSpec

    spec = ModelSpec(
        arch="tiny", image_size=size, tasks=("pose", "seg", "depth", "normal"), keypoint_set="coco17", depth=6,
        head_channels=16, backbone_options={"patch_size": 8}, head_options={"pose": {"width": 64}},
    )  # fmt: skip
    # The demo's batch of 8: 4 pose crops and 4 whole-image views through the three dense heads.
    routes = {"pose": torch.arange(4), "seg": torch.arange(4, 8), "depth": torch.arange(4, 8)}
    routes["normal"] = torch.arange(4, 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = {}
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            model = build_model(spec).to(dtype)
            image = torch.randn(8, 3, *size, dtype=dtype)

            def step(model=model, image=image) -> None:
                model.zero_grad(set_to_none=True)
                outputs = model(image, routes)
                sum(out.float().square().mean() for out in outputs.values()).backward()

            step()  # warm-up (oneDNN picks its kernels)
            times[dtype] = best_of(step, repeats)
    finally:
        torch.set_num_threads(threads)
    fp32, bf16 = times[torch.float32], times[torch.bfloat16]
    print(
        f"four-task step of the demo's model at one thread: fp32 {fp32 * 1e3:.0f} ms, bf16 {bf16 * 1e3:.0f} ms "
        f"-> ratio {fp32 / bf16:.2f}x (this CPU: the demo fine-tunes in {cpu_precision()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(128, 96), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    size = (args.size[0], args.size[1])
    bench_multitask(size, args.repeats)
    bench_data(size, args.repeats)
    bench_decode(args.repeats)
    bench_precision(size, args.repeats)


if __name__ == "__main__":
    main()
