"""Typed training configs: dataclasses are the schema, YAML files set values, `key=value` overrides win.

    cfg = load_config(PretrainConfig, "configs/pretrain/tiny.yaml", ["steps=20", "data.shards=out/*.tar"])
    save_config(cfg, "RUN/config.yaml")        # the resolved config, beside the outputs

An unknown key, a value of the wrong type or a malformed override raises ConfigError naming it, before
anything starts. `load_config`, `save_config`, `to_yaml` and `ConfigError` are every stage's, from
`data_engine.config`, re-exported here. `TrainConfig` holds what the engine reads; each task (pretraining
here, fine-tuning in `train.finetune`) subclasses it with its model and data sections.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from data_engine.config import ConfigError as ConfigError
from data_engine.config import load_config as load_config
from data_engine.config import save_config as save_config
from data_engine.config import to_yaml as to_yaml


class Precision(str, Enum):
    auto = "auto"  # bf16 on GPU, fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"


class Schedule(str, Enum):
    cosine = "cosine"  # linear warmup, then half a cosine down to min_lr (MAE, Sapiens pretraining)
    poly = "poly"  # linear warmup, then (1 - t)^power down to min_lr (Sapiens seg/depth fine-tuning)
    constant = "constant"  # linear warmup, then flat
    multistep = "multistep"  # linear warmup, then x gamma at each milestone (Sapiens/mmpose pose fine-tuning)


@dataclass
class OptimConfig:
    # Peak LR. None: base_lr * global_batch / 256, MAE's linear scaling rule (Sapiens: 1.5e-4 x 4096/256).
    lr: float | None = None
    base_lr: float = 1.5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.05  # never applied to norms, biases, position embeddings or tokens
    layer_decay: float = 1.0  # layer-wise LR decay: layer i of n gets lr * decay^(n - 1 - i); 1.0 = off
    schedule: Schedule = Schedule.cosine
    warmup_steps: int = 0
    warmup_start_factor: float = 1e-3  # the first warmup step runs at this fraction of the peak LR
    min_lr: float = 0.0
    poly_power: float = 1.0
    # multistep: the LR is multiplied by `gamma` once each milestone is reached. Milestones are fractions of the
    # whole run (warmup included, as mmpose counts epochs from 0), so `steps=` overrides keep them in place;
    # the default is Sapiens pose's epochs 170 and 200 of 210. Other schedules ignore both keys.
    milestones: list[float] = field(default_factory=lambda: [170 / 210, 200 / 210])
    gamma: float = 0.1
    clip_grad: float = 1.0  # global grad-norm clip; 0 = off


@dataclass
class TrainConfig:
    steps: int = 100  # optimizer steps
    batch_size: int = 8  # per process and micro-step; global batch = batch_size * grad_accum * processes
    grad_accum: int = 1
    zero_stage: int = 0  # 0 = plain data parallel, 1/2/3 = ZeRO (3 also partitions the weights)
    precision: Precision = Precision.auto
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    log_every: int = 10
    ckpt_every: int = 1000  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept; older ones are deleted (0 = keep all)
    resume: str = "auto"  # "auto": newest checkpoint under RUN/checkpoints if any; "none"; or a checkpoint folder
    progress: bool = True  # a progress bar on rank 0
    tensorboard: bool = True
    # DeepSpeed's own JSON keys, passed through: a file, then a block on top. The typed fields above own
    # train_micro_batch_size_per_gpu, gradient_accumulation_steps, gradient_clipping, zero_optimization.stage
    # and bf16.enabled, and win over the file for those.
    deepspeed_config: str | None = None
    deepspeed: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size, "grad_accum": self.grad_accum}
        positive["log_every"] = self.log_every
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.ckpt_every < 0 or self.keep_checkpoints < 0:
            raise ConfigError("ckpt_every and keep_checkpoints must be >= 0")
        o = self.optim
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(o.betas)}")
        if not 0 < o.layer_decay <= 1:
            raise ConfigError(f"optim.layer_decay must be in (0, 1], got {o.layer_decay}")
        if o.warmup_steps < 0 or o.warmup_steps > self.steps:
            raise ConfigError(f"optim.warmup_steps must be in [0, steps={self.steps}], got {o.warmup_steps}")
        if o.schedule == Schedule.multistep:
            validate_milestones(o, self.steps)
        if self.deepspeed_config is not None:
            self.deepspeed_config = resolve_repo_path(self.deepspeed_config, "deepspeed_config")


# The checkout that holds configs/: the shipped YAMLs name their DeepSpeed JSON relative to it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_repo_path(path: str, name: str) -> str:
    """An existing file as given (absolute, or relative to the working directory), else relative to the
    checkout (so `configs/deepspeed/zero1.json` in a shipped config works from any folder); absolute."""
    for candidate in (path, os.path.join(REPO_ROOT, path)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise ConfigError(f"{name} {path!r} does not exist (looked in {os.getcwd()} and {REPO_ROOT})")


def validate_milestones(optim: OptimConfig, steps: int) -> None:
    """multistep: milestones strictly increasing fractions in (0, 1), each after the warmup; 0 < gamma <= 1."""
    ms = list(optim.milestones)
    if not all(0 < m < 1 for m in ms) or any(a >= b for a, b in itertools.pairwise(ms)):
        raise ConfigError(f"optim.milestones must be increasing fractions of the run in (0, 1), got {ms}")
    if ms and round(ms[0] * steps) < optim.warmup_steps:
        raise ConfigError(
            f"optim.milestones[0] = {ms[0]} is step {round(ms[0] * steps)}, inside the {optim.warmup_steps} "
            f"warmup steps of a {steps}-step run"
        )
    if not 0 < optim.gamma <= 1:
        raise ConfigError(f"optim.gamma must be in (0, 1], got {optim.gamma}")
