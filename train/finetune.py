"""Fine-tuning for pose, body-part segmentation, depth and normals on one ViT backbone (Sapiens' four tasks).

    hv train finetune --task pose --config configs/finetune/pose_tiny.yaml --out runs/pose \\
        --init runs/pretrain data.shards='out/synth/*.tar' steps=200
    hv train finetune --task multi --config configs/finetune/multi_tiny.yaml --out runs/multi --cpus 2 zero_stage=2
    hv train finetune --task seg --config configs/finetune/seg_sapiens_0.3b.yaml --out RUN --gpus 8   # one node
    # several nodes: the deepspeed launcher with a hostfile runs this module on every rank:
    deepspeed --hostfile hosts --master_addr node0 --master_port 29500 --module train.finetune \\
        --config configs/finetune/seg_sapiens_1b.yaml --out RUN --task seg

The model is `FinetuneModel`: the backbone's `forward_features` (B, C, H/16, W/16) feeds one head per task
(`train.models`: the model, its heads and its checkpoint format; the tasks in `train.models.tasks`). The config
is `train.finetune_config.FinetuneConfig`. Batches come from `train.data_finetune` and may mix pose crops with
whole-image views; each head runs only on the rows that carry its targets. Training is `train.engine.fit`
(DeepSpeed, checkpoints, resume, metrics.jsonl, layer-wise LR decay through `backbone.layer_id`); at the end
rank 0 writes
`RUN/model.safetensors`, the consolidated fp32 weights with its `ModelSpec` and the resolved config inside,
which `train.predictor.Predictor`, eval, export and annotation load (`train.models.weights.load_finetuned`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import torch
from torch import nn

from train.config import ConfigError, save_config
from train.data_finetune import make_batches_fn
from train.data_finetune import write_report as _write_report
from train.finetune_config import FinetuneConfig, TaskMode, load_finetune_config
from train.models.multitask import FinetuneModel, build_model
from train.models.tasks import TASKS
from train.models.weights import load_init

# ------------------------------------------------------------------------------------------------ the loss


log = logging.getLogger("train.finetune")  # by name: ranks run this module as __main__


def task_losses(
    model: nn.Module, batch: dict[str, torch.Tensor], cfg: FinetuneConfig, class_weight: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
    """The weighted sum of the task losses on one batch, and per-task figures for the metrics.

    Every task of the run gets a `loss_{task}` and `rows_{task}` entry, 0 when the batch has none of its rows:
    the engine averages the figures over ranks key by key, so every rank must report the same keys. The losses
    stay device tensors (the engine sums them where they live and reads them once per logged step), and each
    head's output is cast to fp32 first: a bf16 model's losses are computed in fp32.
    """
    tasks = cfg.active_tasks
    routes = {t: batch[f"{t}_index"] for t in tasks if f"{t}_index" in batch}
    # A head with no row in this batch still runs on row 0, its output times 0: every parameter then gets a
    # (zero) gradient through an ordinary module call, which ZeRO's gradient partitioning (and, at stage 3,
    # its parameter gathering) expects. One extra row through a head costs little next to the backbone.
    absent = [t for t in tasks if t not in routes]
    first_row = torch.zeros(1, dtype=torch.long, device=batch["image"].device)
    outputs = model(batch["image"], {**routes, **{t: first_row for t in absent}})
    inputs = cfg.loss_inputs(class_weight)
    total = batch["image"].new_zeros((), dtype=torch.float32)
    logs: dict[str, float | torch.Tensor] = {}
    for task in tasks:
        logs[f"rows_{task}"] = float(len(routes[task])) if task in routes else 0.0  # a shape: no device read
        pred = outputs[task].float()
        if task in absent:
            total = total + pred.sum() * 0.0
            logs[f"loss_{task}"] = 0.0
            continue
        loss = TASKS[task].loss(pred, batch, inputs)
        logs[f"loss_{task}"] = loss.detach()
        total = total + cfg.loss_weight(task) * loss
    return total, logs


# ---------------------------------------------------------------------------------------------- the batches


# ------------------------------------------------------------------------------------------------- the run


def run(cfg: FinetuneConfig, out_dir: str):
    """Train and export; returns the engine's FitResult. Every rank calls this (the launcher starts them)."""
    from data_engine import schema
    from train.engine import fit

    if not cfg.data.shard_patterns():
        raise ConfigError("data.shards is empty: name the training shards (data.shards='out/*.tar,more/')")
    os.makedirs(out_dir, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        save_config(cfg, os.path.join(out_dir, "config.yaml"))
    class_weight = None
    if "seg" in cfg.active_tasks and cfg.seg.class_weights:
        class_weight = torch.from_numpy(schema.vocabulary(cfg.seg.vocabulary).weights())

    def build() -> FinetuneModel:
        model = build_model(cfg.model_spec(), cfg.model.drop_path, cfg.model.grad_checkpointing)
        if cfg.init:
            report = load_init(model, cfg.init)
            if rank == 0:
                log.info("%s", report.summary())
        return model

    def loss_fn(engine: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        weight = None if class_weight is None else class_weight.to(batch["image"].device)
        return task_losses(engine, batch, cfg, weight)

    # ZeRO-3 without init: the engine builds the model inside deepspeed.zero.Init (never whole in memory).
    # With init the weights are loaded into a whole model first, which DeepSpeed then partitions.
    model = build if cfg.zero_stage == 3 and not cfg.init else build()
    report_path = os.path.join(out_dir, "data_report.json")
    reports: list = []
    result = fit(model, loss_fn, make_batches_fn(cfg, report_path, reports), cfg, out_dir)
    if rank == 0 and reports:
        _write_report(report_path, reports[-1])
        log.info("data: %s (details: %s)", reports[-1].summary(), report_path)
    if result.checkpoint is not None:
        import torch.distributed as dist

        from train.export import export_weights

        if rank == 0:  # the format of `hv train export-weights`: fp32 weights, the resolved config in the header
            tag = os.path.basename(result.checkpoint)
            export_weights(out_dir, os.path.join(out_dir, "model.safetensors"), tag=tag, part="full")
        if dist.is_initialized():
            dist.barrier()
    return result


# ------------------------------------------------------------------------------------ launcher entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Per-rank entry (`python -m train.finetune` / `deepspeed --module train.finetune`)."""
    from data_engine.logs import configure_from_env

    configure_from_env()  # the -v / -q of the `hv` command that launched this rank
    parser = argparse.ArgumentParser(prog="train.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--task", choices=[m.value for m in TaskMode])
    parser.add_argument("--init")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    cfg = load_finetune_config(args.config, args.overrides, task=args.task, init=args.init)
    result = run(cfg, args.out)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[finetune] done: step {result.step}, loss {result.last_loss}, checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
