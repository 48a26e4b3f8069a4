"""Meta's released Sapiens v1 weights (mmpretrain / mmpose / mmseg key names) -> this project's model file.

    hv train convert-sapiens sapiens_1b_goliath_best_goliath_AP_639.pth --out sapiens_1b_pose.safetensors
    loaded = load_finetuned("sapiens_1b_pose.safetensors")    # ModelSpec in the header: Predictor, hv predict, ...
    hv train convert-sapiens sapiens_0.3b_epoch_1600_clean.pth --out sapiens_0.3b.safetensors   # backbone: --init

`convert_checkpoint` finds the task from the head keys (`head.*`: mmpose HeatmapHead, pose; `decode_head.*`:
mmseg, whose final conv's channels say depth (1), normal (3) or seg (28 goliath28, 20 lip20)), the arch from the
backbone's embed dim and block count, and the patch padding from the checkpoint's kind (`PATCH_PADDING`, read from
the configs). Heads become `train.models.sapiens_v1.SapiensV1Head` (style "sapiens_v1"). The backbone mapping
(per block i; prefixes `backbone.`, `module.` and a `state_dict`/`model` wrapper are removed):

| Sapiens (mmpretrain)                         | ours                                  |
|----------------------------------------------|---------------------------------------|
| patch_embed.projection.{weight,bias}         | patch_embed.proj.{weight,bias}        |
| pos_embed (1, [1 +] h*w, C), cls slot first  | pos_embed (1, h*w, C), resampled      |
| cls_token                                    | dropped (no cls token here)           |
| layers.i.ln1 / ln2                           | blocks.i.norm1 / norm2                |
| layers.i.attn.qkv / attn.proj                | blocks.i.attn.qkv / attn.proj         |
| layers.i.ffn.layers.0.0 / ffn.layers.1       | blocks.i.mlp.fc1 / mlp.fc2            |
| ln1 (final norm; `pre_norm` is not used)     | norm                                  |

Every other tensor (LayerScale `attn.gamma1` / `ffn.gamma2`, which this ViT does not have, an MAE decoder, an
auxiliary head) fails the conversion with its name listed, unless the caller allows unused tensors: a model that
silently lost a layer would predict differently from the released one. The configs' input normalisation (mean
123.675/116.28/103.53, std 58.395/57.12/57.375 on 0-255 RGB) is ours (ImageNet's on 0-1), so images need nothing.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch

from train.models.layers import resize_pos_embed
from train.models.spec import ModelSpec

_BLOCK_MAP = {
    "ln1": "norm1",
    "ln2": "norm2",
    "attn.qkv": "attn.qkv",
    "attn.proj": "attn.proj",
    "ffn.layers.0.0": "mlp.fc1",
    "ffn.layers.1": "mlp.fc2",
}
_BLOCK_RE = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")
_PREFIXES = ("module.", "backbone.")


def unwrap(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (mmengine saves {'meta', 'state_dict', ...})."""
    for key in ("state_dict", "model", "module"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            return unwrap(checkpoint[key])
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def convert_state_dict(
    checkpoint: dict, grid: tuple[int, int], source_grid: tuple[int, int] | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our ViT state dict, ignored source keys). `grid` is the target token grid (H/16, W/16);
    `source_grid` the checkpoint's (inferred when its position embedding is square, as in pretraining)."""
    src = {_strip(k): v for k, v in unwrap(checkpoint).items()}
    if not any(k.startswith("layers.") for k in src):
        raise ValueError("not a Sapiens/mmpretrain ViT checkpoint: no 'layers.N.*' keys")
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in src.items():
        value = value.float()
        m = _BLOCK_RE.match(key)
        if m and m.group(2) in _BLOCK_MAP:
            out[f"blocks.{m.group(1)}.{_BLOCK_MAP[m.group(2)]}.{m.group(3)}"] = value
        elif key.startswith("patch_embed.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key in ("ln1.weight", "ln1.bias"):
            out["norm." + key.split(".")[1]] = value
        elif key == "pos_embed":
            out["pos_embed"] = _convert_pos_embed(value, grid, source_grid)
        else:
            ignored.append(key)
    return out, ignored


def _convert_pos_embed(pos: torch.Tensor, grid: tuple[int, int], source_grid: tuple[int, int] | None) -> torch.Tensor:
    n = pos.shape[1]
    if source_grid is not None:
        tokens = source_grid[0] * source_grid[1]
        if n not in (tokens, tokens + 1):
            raise ValueError(f"pos_embed has {n} tokens, source grid {source_grid} needs {tokens} (+1 cls)")
    else:
        side = math.isqrt(n - 1)
        if side * side == n - 1:
            tokens, source_grid = n - 1, (side, side)
        elif math.isqrt(n) ** 2 == n:
            tokens, source_grid = n, (math.isqrt(n), math.isqrt(n))
        else:
            raise ValueError(f"pos_embed has {n} tokens, not a square grid: pass the source grid (H/16, W/16)")
    patch_pos = pos[:, n - tokens :]  # the cls slot, if any, comes first
    return resize_pos_embed(patch_pos, source_grid, grid)


# ------------------------------------------------------------------------------------- reading the file


def load_checkpoint_file(path: str) -> dict:
    """The checkpoint dict of a Sapiens .pth, wrappers kept for `unwrap`. Nothing in it is unpickled freely: a
    weights-only load, else (mmengine's `meta` holds numpy arrays and records) a load in which every object but
    tensors is an inert placeholder. A Sapiens Lite TorchScript / torch.export file is refused with what to use
    instead; an unreadable (truncated) file raises ValueError naming it."""
    import zipfile

    from train.export import UnsafeCheckpointError, safe_torch_load

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    compiled = _compiled_kind(path) if zipfile.is_zipfile(path) else None
    if compiled:
        raise ValueError(
            f"{path} is a Sapiens Lite {compiled} file: a compiled model (often bf16), not a weights checkpoint, and "
            "its layer names are not kept. Convert the original .pth checkpoint of the same model instead "
            "(sapiens_host/ on huggingface.co/facebook/sapiens, not sapiens_lite_host/)."
        )
    try:
        try:
            obj = safe_torch_load(path)
        except UnsafeCheckpointError:
            # mmengine checkpoints carry a `meta` / `message_hub` of numpy and mmengine objects besides the weights:
            # read the tensors with every other object replaced by an inert placeholder (no code of the file runs).
            obj = _load_tensors_only(path)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: cannot read it as a torch checkpoint ({first}); a download cut short leaves such a file: "
            "compare its size with the published one and download it again"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict of tensors")
    return obj


class _Inert:
    """What any non-tensor object of a checkpoint unpickles to: it takes every argument and does nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs) -> _Inert:
        return _Inert()

    def __setstate__(self, state) -> None:
        pass

    def __setitem__(self, key, value) -> None:  # SETITEM(S) on a placeholder dict subclass
        pass

    def append(self, value) -> None:  # APPEND(S) on a placeholder list subclass
        pass

    def extend(self, values) -> None:
        pass


def _tensor_globals() -> dict[tuple[str, str], object]:
    """The only callables a tensors-only read may use: torch's tensor rebuilders, Parameter and OrderedDict."""
    import collections

    import torch._utils as tu

    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state"):
        if hasattr(tu, name):
            allowed[("torch._utils", name)] = getattr(tu, name)
    for dtype in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool"):
        allowed[("torch", dtype)] = getattr(torch, dtype)
    return allowed


def _load_tensors_only(path: str) -> dict:
    """torch.load through an unpickler whose globals are `_tensor_globals` or `_Inert`: tensors come back whole,
    every other object (numpy arrays, mmengine records, anything a crafted file names) as a placeholder."""
    import pickle
    import types

    allowed = _tensor_globals()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            return allowed.get((module, name), _Inert)

    inert_pickle = types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load, __name__="inert_pickle")
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=inert_pickle)
    return obj if isinstance(obj, dict) else {}


def _compiled_kind(path: str) -> str | None:
    """'TorchScript' or 'torch.export' for such zip archives, None for a torch.save one."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any("serialized_exported_program" in n or n.endswith("archive_format") for n in names):
        return "torch.export (.pt2)"
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "TorchScript"
    return None


# ---------------------------------------------------------------------------------- whole checkpoints

# Released (vocabulary or keypoint count) -> our names; a count not here is refused with this list.
KEYPOINT_SETS = {308: "all", 17: "coco17"}
VOCABULARIES = {28: "goliath28", 20: "lip20"}
# The released configs' patch_cfg padding per checkpoint kind (pose/configs/sapiens_pose/**,
# seg/configs/sapiens_{seg,depth,normal}/**): goliath seg and depth train without it, the others with 2.
PATCH_PADDING = {"pose": 2, "normal": 2, "depth": 0, "seg/goliath28": 0, "seg/lip20": 2, "backbone": 0}
# The configs' heatmap sigma (UDPHeatmap sigma=6 at 256 x 192 heatmaps): sets Predictor's decoding blur.
POSE_SIGMA = 6.0
# The configs' data_preprocessor mean/std (0-255 RGB; bgr_to_rgb=True): ours, train.transforms.IMAGE_MEAN / STD.
SAPIENS_MEAN = (123.675, 116.28, 103.53)
SAPIENS_STD = (58.395, 57.12, 57.375)
RELEASED_GRID = (64, 48)  # the fine-tuned models' token grid (1024 x 768 inputs)
_DROPPED = {"cls_token"}  # the fine-tuned models do not use it (with_cls_token=False)


class ConversionError(ValueError):
    """A checkpoint that cannot be converted as it is; the message lists what does not fit."""


@dataclass
class Conversion:
    state: dict[str, torch.Tensor]  # a FinetuneModel's state dict, or a bare ViT's for a backbone-only file
    spec: ModelSpec | None  # None: backbone only (an --init file)
    arch: str
    depth: int | None  # the arch's block count overridden (None: the arch's own)
    patch_padding: int
    unused: list[str]  # source keys left out (only with allow_unused)
    dropped: list[str]  # source keys that are not needed (the cls token)

    @property
    def task(self) -> str:
        return self.spec.tasks[0] if self.spec else "backbone"


def convert_checkpoint(
    checkpoint: dict,
    arch: str | None = None,
    image_size: tuple[int, int] = (1024, 768),
    patch_padding: int | None = None,
    source_grid: tuple[int, int] | None = None,
    allow_unused: bool = False,
) -> Conversion:
    """A released Sapiens v1 checkpoint (pretrained backbone, or pose / seg / depth / normal fine-tuned) -> our
    model's weights and its ModelSpec. The task comes from the head keys, the arch from the backbone's shapes
    (`arch` given must agree), every tensor is placed or the conversion fails listing the ones that are not."""
    from train.models.multitask import build_model
    from train.models.vit import ViT, arch_config

    src = {_strip_module(k): v for k, v in unwrap(checkpoint).items()}
    backbone = {_strip(k): v for k, v in src.items() if not k.startswith(_HEAD_PREFIXES + _OTHER_PREFIXES)}
    heads = {k: v for k, v in src.items() if k.startswith(_HEAD_PREFIXES)}
    others = {k: v for k, v in src.items() if k.startswith(_OTHER_PREFIXES)}
    unplaced = _check_preprocessor(others)
    arch, depth = _match_arch(backbone, arch)
    task, head_state, head_options, out_channels, head_unplaced = _convert_head(heads)
    unplaced += head_unplaced
    kind = task if task != "seg" else f"seg/{VOCABULARIES[out_channels]}"
    padding = PATCH_PADDING[kind] if patch_padding is None else patch_padding
    grid = (image_size[0] // 16, image_size[1] // 16)
    pos = backbone.get("pos_embed")
    for candidate in (grid, RELEASED_GRID):  # fine-tuned at this size, or at the released 1024 x 768: not square
        if source_grid is None and pos is not None and pos.shape[1] - candidate[0] * candidate[1] in (0, 1):
            source_grid = candidate
    vit_state, ignored = convert_state_dict(backbone, grid, source_grid)
    dropped = [k for k in ignored if k in _DROPPED]
    unplaced += [("backbone." if "backbone." + k in src else "") + k for k in ignored if k not in _DROPPED]
    if unplaced and not allow_unused:
        shown = "\n  ".join(unplaced[:20]) + (f"\n  ... and {len(unplaced) - 20} more" if len(unplaced) > 20 else "")
        raise ConversionError(
            f"{len(unplaced)} tensor(s) have no place in the converted model:\n  {shown}\n"
            "Nothing was written. If they do not change the model's output, pass --allow-unused to leave them out."
        )
    from train.models.weights import check_fits

    if task == "backbone":
        cfg = arch_config(arch, image_size, patch_padding=padding, **({"depth": depth} if depth else {}))
        with torch.device("meta"):  # names and shapes only: no memory, no init time at 2B
            check_fits(ViT(cfg), vit_state, "converted backbone")
        return Conversion(vit_state, None, arch, depth, padding, unplaced, dropped)
    spec = ModelSpec(
        arch=arch,
        image_size=image_size,
        tasks=(task,),  # type: ignore[arg-type]
        depth=depth,
        keypoint_set=KEYPOINT_SETS.get(out_channels, "all") if task == "pose" else "all",
        vocabulary=VOCABULARIES.get(out_channels, "goliath28") if task == "seg" else "goliath28",
        pose_sigma=POSE_SIGMA,
        backbone_options={"patch_padding": padding} if padding else {},
        head_options={task: head_options},
    )
    state = {f"backbone.{k}": v for k, v in vit_state.items()} | {f"heads.{task}.{k}": v for k, v in head_state.items()}
    with torch.device("meta"):
        check_fits(build_model(spec), state, "converted")
    return Conversion(state, spec, arch, depth, padding, unplaced, dropped)


_HEAD_PREFIXES = ("head.", "decode_head.")
_OTHER_PREFIXES = ("data_preprocessor.", "auxiliary_head.", "neck.")


def _strip_module(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


def _check_preprocessor(others: dict[str, torch.Tensor]) -> list[str]:
    """Keys outside the backbone and head that cannot be placed. The preprocessor's mean/std are checked against
    ours (they are the same in every released config) rather than carried."""
    unplaced = []
    for key, value in others.items():
        expected = {"data_preprocessor.mean": SAPIENS_MEAN, "data_preprocessor.std": SAPIENS_STD}.get(key)
        if expected is None:
            unplaced.append(key)
        elif not torch.allclose(value.float().flatten(), torch.tensor(expected), atol=1e-3):
            raise ConversionError(
                f"{key} is {value.flatten().tolist()}, not the Sapiens/ImageNet {list(expected)} this package "
                "normalises images with (train.transforms.IMAGE_MEAN / IMAGE_STD): the model would see other inputs"
            )
    return unplaced


def _match_arch(backbone: dict[str, torch.Tensor], arch: str | None) -> tuple[str, int | None]:
    """(arch, depth override) from the backbone's embed dim and block count; a given arch must agree."""
    from train.models.vit import ARCHS

    proj = backbone.get("patch_embed.projection.weight")
    if proj is None:
        raise ConversionError("not a Sapiens/mmpretrain ViT checkpoint: no 'patch_embed.projection.weight'")
    embed = int(proj.shape[0])
    blocks = sorted({int(m.group(1)) for k in backbone if (m := _BLOCK_RE.match(k))})
    depth = len(blocks)
    if blocks != list(range(depth)):
        raise ConversionError(f"the checkpoint's blocks are not numbered 0..N-1: {blocks[:8]}...")
    found = f"embed dim {embed} (patch_embed.projection.weight {tuple(proj.shape)}) and {depth} blocks"
    found += f" (layers.0-{depth - 1})"
    if arch is not None:
        if arch not in ARCHS:
            raise ConversionError(f"--arch {arch!r} is not one of {', '.join(ARCHS)}")
        cfg = ARCHS[arch]
        if (cfg.embed_dim, cfg.depth) != (embed, depth):
            guess = [a for a, c in ARCHS.items() if (c.embed_dim, c.depth) == (embed, depth)]
            hint = f"; that is {guess[0]} (or leave --arch out)" if guess else "; leave --arch out to detect it"
            raise ConversionError(
                f"--arch {arch} has embed dim {cfg.embed_dim} and {cfg.depth} blocks; the checkpoint has {found}{hint}"
            )
        return arch, None
    exact = [a for a, c in ARCHS.items() if (c.embed_dim, c.depth) == (embed, depth)]
    if exact:
        return exact[0], None
    # A shortened model of a known width (small tests, truncated releases): the arch with that width, depth overridden.
    wide = [a for a, c in ARCHS.items() if c.embed_dim == embed and embed % c.num_heads == 0]
    if wide:
        return wide[0], depth
    known = ", ".join(f"{a} ({c.embed_dim}/{c.depth})" for a, c in ARCHS.items())
    raise ConversionError(f"no arch has the checkpoint's {found}; known (embed dim/blocks): {known}")


_HEAD_LAYER_RE = re.compile(r"^(deconv_layers|conv_layers)\.(\d+)\.(weight|bias)$")


def _convert_head(
    heads: dict[str, torch.Tensor],
) -> tuple[str, dict[str, torch.Tensor], dict, int, list[str]]:
    """(task, head state in SapiensV1Head names, its head_options, output channels, unplaced source keys) from the
    `head.` (mmpose HeatmapHead) or `decode_head.` (mmseg VitHead / VitDepthHead / VitNormalHead) tensors."""
    if not heads:
        return "backbone", {}, {}, 0, []
    prefixes = sorted({k.split(".", 1)[0] + "." for k in heads})
    if len(prefixes) > 1:
        raise ConversionError(f"the checkpoint has both {' and '.join(prefixes)} tensors: one head is expected")
    prefix = prefixes[0]
    final = "final_layer" if prefix == "head." else "conv_seg"
    weight = heads.get(f"{prefix}{final}.weight")
    if weight is None:
        raise ConversionError(f"the {prefix}* tensors have no {prefix}{final}.weight: not a released Sapiens head")
    out = int(weight.shape[0])
    if prefix == "head.":
        task = "pose"
        if out not in KEYPOINT_SETS:
            raise ConversionError(
                f"a pose head with {out} keypoints: known counts are "
                + ", ".join(f"{n} ({name})" for n, name in KEYPOINT_SETS.items())
            )
    else:
        task = {1: "depth", 3: "normal"}.get(out, "seg")
        if task == "seg" and out not in VOCABULARIES:
            raise ConversionError(
                f"a decode head with {out} output channels: 1 is depth, 3 normal, "
                + ", ".join(f"{n} seg ({name})" for n, name in VOCABULARIES.items())
            )
    state: dict[str, torch.Tensor] = {}
    unplaced: list[str] = []
    layers: dict[str, dict[int, int]] = {"deconv_layers": {}, "conv_layers": {}}  # index -> kernel
    widths: dict[str, dict[int, int]] = {"deconv_layers": {}, "conv_layers": {}}
    for key, value in heads.items():
        name = key[len(prefix) :]
        m = _HEAD_LAYER_RE.match(name)
        if name in (f"{final}.weight", f"{final}.bias"):
            state["final_layer." + name.rsplit(".", 1)[1]] = value.float()
        elif m and int(m.group(2)) % 3 == 0 and value.ndim in (1, 4):
            state[name] = value.float()
            if m.group(3) == "weight":
                i = int(m.group(2)) // 3
                layers[m.group(1)][i] = int(value.shape[-1])
                # ConvTranspose2d weights are (in, out, k, k), Conv2d ones (out, in, k, k).
                widths[m.group(1)][i] = int(value.shape[1] if m.group(1) == "deconv_layers" else value.shape[0])
        else:
            unplaced.append(key)
    options: dict = {"style": "sapiens_v1"}
    for group, short in (("deconv_layers", "deconv"), ("conv_layers", "conv")):
        idx = sorted(layers[group])
        if idx != list(range(len(idx))):
            raise ConversionError(f"{prefix}{group}: layers {idx} are not the Sapiens (layer, norm, act) pattern")
        options[f"{short}_channels"] = [widths[group][i] for i in idx]
        options[f"{short}_kernels"] = [layers[group][i] for i in idx]
    if prefix == "decode_head.":
        options["dropout"] = 0.1  # mmseg's BaseDecodeHead default, which the configs keep (training only)
    return task, state, options, out, unplaced
