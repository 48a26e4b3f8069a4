"""MAE pretraining on curated shards: the config, the model, the loss, and the per-rank entry point.

Users start it through the CLI, which validates the config, saves it to RUN/config.yaml and launches:

    hv train pretrain --config configs/pretrain/tiny.yaml --out runs/mae --cpus 2 data.shards='out/*.tar'
    hv train pretrain --config configs/pretrain/sapiens_0.3b.yaml --out runs/mae03 --gpus 8 data.shards=...

Each launched process runs `python -m train.pretrain --config RUN/config.yaml --out RUN` (what the
`deepspeed` launcher starts; it also passes --local_rank, which the environment already carries).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from train.config import ConfigError, TrainConfig, load_config
from train.data_pretrain import PretrainDataConfig, normalise, pretrain_batches


@dataclass
class MAEModelConfig:
    arch: str = "tiny"  # a backbone arch (train.models.backbones): the ViT's (train.models.vit.ARCHS) or sapiens2_*
    img_size: list[int] = field(default_factory=lambda: [1024, 1024])  # H, W; Sapiens pretrains at 1024 x 1024
    depth: int | None = None  # override the arch's depth (small test models)
    mask_ratio: float = 0.75
    norm_pix: bool = True  # the loss target is each patch normalised by its own mean and variance
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    grad_checkpointing: bool = False
    init_weights: str | None = None  # a safetensors file (export-weights or convert-sapiens) to start from
    # The arch's family options (a Sapiens2 config's backbone fields, the ViT's patch_padding), as a ModelSpec's.
    backbone_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PretrainConfig(TrainConfig):
    model: MAEModelConfig = field(default_factory=MAEModelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)

    def validate(self) -> None:
        super().validate()
        from train.models.backbones import arch_names

        m = self.model
        if m.arch not in arch_names():
            raise ConfigError(f"model.arch={m.arch!r} is unknown; choose one of {', '.join(arch_names())}")
        if len(m.img_size) != 2 or any(v <= 0 or v % 16 for v in m.img_size):
            raise ConfigError(f"model.img_size must be [H, W], each a positive multiple of 16, got {list(m.img_size)}")
        if not 0 < m.mask_ratio < 1:
            raise ConfigError(f"model.mask_ratio must be in (0, 1), got {m.mask_ratio}")
        if m.init_weights is not None and not os.path.isfile(m.init_weights):
            raise ConfigError(f"model.init_weights {m.init_weights!r} does not exist")
        d = self.data
        if not d.shard_patterns():
            raise ConfigError("data.shards is empty: pass data.shards=GLOB (files, folders or globs, comma-separated)")
        if len(d.crop_scale) != 2 or not 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1:
            raise ConfigError(f"data.crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {list(d.crop_scale)}")
        if len(d.crop_ratio) != 2 or not 0 < d.crop_ratio[0] <= d.crop_ratio[1]:
            raise ConfigError(f"data.crop_ratio must be [lo, hi] with 0 < lo <= hi, got {list(d.crop_ratio)}")


def build_mae(m: MAEModelConfig):
    """The MAE of a model config, with `init_weights` loaded (encoder keys strictly, decoder if present)."""
    from train.models.backbones import build_backbone
    from train.models.mae import MAE, DecoderConfig

    encoder = build_backbone(
        m.arch, tuple(m.img_size), m.depth, grad_checkpointing=m.grad_checkpointing, **m.backbone_options
    )
    model = MAE(encoder, DecoderConfig(m.decoder_dim, m.decoder_depth, m.decoder_heads), m.mask_ratio, m.norm_pix)
    if m.init_weights:
        from train.export import load_into

        load_into(model, m.init_weights)
    return model


def mae_loss(engine, batch: dict) -> tuple:
    """MAE loss of one batch of uint8 images (B, 3, H, W); logs nothing beyond the loss."""
    # fp32 in: the encoder casts to its dtype, and the MAE target is made from these fp32 pixels.
    loss, _, _ = engine(normalise(batch["images"]))
    return loss, {}


def run(cfg: PretrainConfig, out_dir: str):
    """Train in this process (one rank of a launched job, or a world of one)."""
    from train.engine import fit
    from train.models.mae import DecoderConfig, mae_flops
    from train.models.vit import ARCHS, arch_config

    def make_batches(rank: int, world: int, seed: int, start: int):
        return pretrain_batches(
            cfg.data,
            tuple(cfg.model.img_size),
            cfg.batch_size,
            rank,
            world,
            seed,
            start,
            bad_dir=os.path.join(out_dir, "bad_samples"),
        )

    m = cfg.model
    flops = None  # MFU is reported for the ViT, whose FLOPs are counted (train.models.vit.vit_flops)
    if m.arch in ARCHS:
        vit_cfg = arch_config(m.arch, m.img_size, **({"depth": m.depth} if m.depth else {}), **m.backbone_options)
        flops = mae_flops(vit_cfg, DecoderConfig(m.decoder_dim, m.decoder_depth, m.decoder_heads), m.mask_ratio)
    result = fit(lambda: build_mae(cfg.model), mae_loss, make_batches, cfg, out_dir, flops_per_sample=flops)
    if int(os.environ.get("RANK", "0")) == 0:
        bad = count_bad_samples(out_dir)
        note = f", {bad} bad samples skipped (see {out_dir}/bad_samples/)" if bad else ""
        print(f"[pretrain] step {result.step}, loss {result.last_loss}, checkpoint {result.checkpoint}{note}")
    return result


def count_bad_samples(out_dir: str) -> int:
    total = 0
    for path in glob.glob(os.path.join(out_dir, "bad_samples", "*.jsonl")):
        with open(path) as f:
            total += sum(1 for _ in f)
    return total


def main(argv: list[str] | None = None) -> int:
    from data_engine.logs import configure_from_env

    configure_from_env()  # the -v / -q of the `hv` command that launched this rank
    parser = argparse.ArgumentParser(description="one rank of MAE pretraining (start it with `hv train pretrain`)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher; unused")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"train.pretrain: {e}", file=sys.stderr)
        return 2
    run(cfg, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
