"""Small generated ground truth and predictions for the eval tests (no files downloaded, no fixtures hidden)."""

from __future__ import annotations

import os

import numpy as np

from data_engine import schema
from data_engine.sample import encode_depth, encode_normal, encode_seg


def coco_pose_set(
    rng: np.random.Generator, subset: str, images: int = 4, persons: int = 2, noise: float = 4.0
) -> tuple[dict, list[dict]]:
    """A COCO keypoint GT object and results list: persons of random size, predictions = GT + noise."""
    k = len(schema.subset(subset))
    gt = {
        "images": [{"id": i + 1, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(images)],
        "annotations": [],
        "categories": [{"id": 1, "name": "person", "keypoints": schema.subset_names(subset)}],
    }
    preds = []
    ann_id = 1
    for image_id in range(1, images + 1):
        for _ in range(persons):
            w, h = rng.uniform(40, 300, size=2)
            x0, y0 = rng.uniform(0, 300, size=2)
            xy = np.stack([x0 + rng.uniform(0, w, k), y0 + rng.uniform(0, h, k)], axis=1)
            vis = rng.choice([0, 1, 2], size=k, p=[0.2, 0.2, 0.6])
            gt_kps = np.concatenate([xy, vis[:, None]], axis=1)
            gt_kps[vis == 0, :2] = 0
            gt["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "keypoints": gt_kps.reshape(-1).tolist(),
                    "num_keypoints": int((vis > 0).sum()),
                    "bbox": [float(x0), float(y0), float(w), float(h)],
                    "area": float(w * h * 0.7),
                    "iscrowd": 0,
                }
            )
            ann_id += 1
            pred_xy = xy + rng.normal(0, noise * rng.uniform(0.2, 3.0), size=xy.shape)
            pred = np.concatenate([pred_xy, np.full((k, 1), 1.0)], axis=1)
            preds.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "keypoints": pred.reshape(-1).tolist(),
                    "score": float(rng.uniform(0.1, 1)),
                }
            )
    return gt, preds


def write_pngs(folder: str, maps: dict[str, bytes]) -> str:
    os.makedirs(folder, exist_ok=True)
    for name, data in maps.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return folder


def random_seg_pair(rng: np.random.Generator, shape: tuple[int, int], classes: int) -> tuple[np.ndarray, np.ndarray]:
    gt = rng.integers(0, classes, size=shape).astype(np.uint8)
    gt[rng.random(shape) < 0.1] = schema.IGNORE_INDEX
    pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, classes, size=shape)).astype(np.uint8)
    pred[pred == schema.IGNORE_INDEX] = 0  # a model's argmax never predicts ignore
    return gt, pred


def random_depth_pair(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """GT in metres with a background of 0; prediction a noisy affine copy (scale 0.3, shift 0.5)."""
    gt = rng.uniform(1.0, 4.0, size=shape).astype(np.float32)
    gt[rng.random(shape) < 0.3] = 0
    pred = (0.3 * gt + 0.5 + rng.normal(0, 0.05, size=shape)).clip(0, 60).astype(np.float32)
    return gt, pred


def random_normals(rng: np.random.Generator, shape: tuple[int, int], background: float = 0.3) -> np.ndarray:
    n = rng.normal(size=(*shape, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[rng.random(shape) < background] = 0
    return n.astype(np.float32)


def write_dense_set(root: str, rng: np.random.Generator, count: int = 3, shape=(24, 32)) -> dict[str, tuple[str, str]]:
    """gt/pred folders for seg, depth and normal under root; returns task -> (gt_dir, pred_dir)."""
    out = {}
    segs = {f"{i:03d}.png": random_seg_pair(rng, shape, 28) for i in range(count)}
    out["seg"] = (
        write_pngs(f"{root}/seg/gt", {n: encode_seg(g) for n, (g, _) in segs.items()}),
        write_pngs(f"{root}/seg/pred", {n: encode_seg(p) for n, (_, p) in segs.items()}),
    )
    depths = {f"{i:03d}.png": random_depth_pair(rng, shape) for i in range(count)}
    out["depth"] = (
        write_pngs(f"{root}/depth/gt", {n: encode_depth(g) for n, (g, _) in depths.items()}),
        write_pngs(f"{root}/depth/pred", {n: encode_depth(p) for n, (_, p) in depths.items()}),
    )
    normals = {f"{i:03d}.png": (random_normals(rng, shape), random_normals(rng, shape, 0.0)) for i in range(count)}
    out["normal"] = (
        write_pngs(f"{root}/normal/gt", {n: encode_normal(g) for n, (g, _) in normals.items()}),
        write_pngs(f"{root}/normal/pred", {n: encode_normal(p) for n, (_, p) in normals.items()}),
    )
    return out


def write_finetuned_checkpoint(
    path: str, task: str = "multi", image_size: tuple[int, int] = (32, 32), keypoint_set: str = "coco17", seed: int = 0
) -> str:
    """A tiny fine-tuned model file as `hv train finetune` leaves it: fp32 safetensors with the resolved config
    in the header. Random weights (seeded): evaluation and export only need a real model, not a good one."""
    import torch
    from safetensors.torch import save_file

    from train.config import load_config, to_yaml
    from train.finetune_config import FinetuneConfig
    from train.models.multitask import build_model

    cfg = load_config(
        FinetuneConfig,
        None,
        [
            f"task={task}",
            "model.arch=tiny",
            f"model.image_size=[{image_size[0]},{image_size[1]}]",
            "model.head_channels=16",
            f"pose.keypoint_set={keypoint_set}",
        ],
    )
    torch.manual_seed(seed)
    model = build_model(cfg.model_spec())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, path, metadata={"config": to_yaml(cfg), "format": "finetune"})
    return path


def labelled_sample(rng: np.random.Generator, key: str, size: tuple[int, int] = (40, 32), keypoint_set: str = "all"):
    """A Sample with every label: one person (box + keypoints of `keypoint_set`), seg, depth, normal, mask."""
    from data_engine.sample import PersonPose, Pose, Sample

    h, w = size
    image = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
    mask = np.zeros((h, w), bool)
    mask[h // 8 : h - h // 8, w // 6 : w - w // 6] = True
    k = len(schema.subset(keypoint_set))
    kps = np.zeros((k, 3), np.float32)
    kps[:, 0] = rng.uniform(w / 6, w - w / 6, k)
    kps[:, 1] = rng.uniform(h / 8, h - h / 8, k)
    kps[:, 2] = rng.choice([0, 1, 2], k, p=[0.1, 0.2, 0.7])
    kps[kps[:, 2] == 0, :2] = 0
    seg = np.where(mask, rng.integers(1, 28, (h, w)), 0).astype(np.uint8)
    depth = np.where(mask, rng.uniform(1.0, 3.0, (h, w)), 0).astype(np.float32)
    normal = random_normals(rng, (h, w), background=0.0)
    normal[~mask] = 0
    pose = Pose(keypoint_set, [PersonPose(bbox=(w / 6, h / 8, w - w / 6, h - h / 8), keypoints=kps)])
    return Sample(key=key, image=image, pose=pose, seg=seg, depth=depth, normal=normal, mask=mask)
