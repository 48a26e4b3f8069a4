"""Random parametric humans from the `anny` body model (Apache-2.0, works offline).

    model = BodyModel()                                   # ~3 s from anny's cache (first build ~35 s)
    subject = model.sample(index=7, seed=0, config=BodyConfig())

Each body draws a phenotype (gender, age, muscle, weight, height, proportions) and a plausible pose
(joint-angle ranges per bone, mirrored left/right), a skin tone and optional clothing colours painted
into a texture through the model's UVs. Labels:
- body parts (goliath28) from each vertex's strongest skinning bone, refined by anny's hand, foot,
  head and tongue masks; painted clothing is labelled Upper_Clothing / Lower_Clothing;
- keypoints: anny's COCO regressor (COCO-17 + 6 foot points, the first 23 Goliath names) plus the
  finger joints from the hand rig (bone heads; fingertips are the farthest vertex along the last bone).
Not modelled: hair, teeth and lips have no geometry or mask in anny, so those classes never appear.

The model caches under ANNY_CACHE_DIR (default ~/.cache/anny) and its skinning kernels under
WARP_CACHE_PATH; point both at a persistent folder on workers.
"""

from __future__ import annotations

import colorsys

import numpy as np
import trimesh
from PIL import Image

from data_engine import schema
from synth.config import BodyConfig
from synth.render import SubjectGeometry
from synth.subject import Landmarks, Subject, normalising_transform, subject_seed

# anny is z up and faces -y; the package's world is y up and faces +z: (x, y, z) -> (x, z, -y).
ANNY_TO_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

# Bone-name prefix -> body region (side added from the ".L"/".R" suffix; anny's .L is the person's left).
_REGION_OF_BONE = (
    ("upperarm", "upper_arm"),
    ("shoulder", "upper_arm"),
    ("lowerarm", "lower_arm"),
    ("wrist", "hand"),
    ("finger", "hand"),
    ("metacarpal", "hand"),
    ("upperleg", "upper_leg"),
    ("lowerleg", "lower_leg"),
    ("foot", "foot"),
    ("toe", "foot"),
    ("pelvis", "pelvis"),
    ("neck", "head"),
    ("head", "head"),
    ("eye", "head"),
    ("jaw", "head"),
    ("tongue", "head"),
)
REGIONS = ("torso", "pelvis", "upper_arm", "lower_arm", "hand", "upper_leg", "lower_leg", "foot", "head")
_SIDED = {"upper_arm", "lower_arm", "hand", "upper_leg", "lower_leg", "foot"}
_REGION_CLASS = {
    "upper_arm": "Upper_Arm",
    "lower_arm": "Lower_Arm",
    "hand": "Hand",
    "upper_leg": "Upper_Leg",
    "lower_leg": "Lower_Leg",
    "foot": "Foot",
}
# anny's UV segmentation masks that override the bone regions.
_MASK_REGIONS = {"hand.L": ("hand", 0), "hand.R": ("hand", 1), "foot.L": ("foot", 0), "foot.R": ("foot", 1)}
_HEAD_MASKS = ("head", "eye_back.L", "eye_front.L", "eye_back.R", "eye_front.R", "mouth_cavity")

# Joint-angle ranges in degrees for the person's LEFT side, about anny's reference axes at each bone
# (x: flexion in the sagittal plane, y: in the frontal plane, z: twist about the vertical).
# Right-side bones use the mirror image (y and z negated).
POSE_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "upperarm01": ((-60, 35), (-45, 35), (-30, 30)),
    "lowerarm01": ((-110, 0), (-5, 5), (-20, 20)),
    "wrist": ((-30, 30), (-20, 20), (-20, 20)),
    "upperleg01": ((-60, 20), (-20, 6), (-15, 15)),
    "lowerleg01": ((0, 90), (-3, 3), (-5, 5)),
    "foot": ((-20, 20), (-5, 5), (-10, 10)),
    "spine04": ((-8, 15), (-8, 8), (-15, 15)),
    "spine02": ((-5, 15), (-8, 8), (-15, 15)),
    "neck01": ((-15, 20), (-12, 12), (-35, 35)),
}
_FINGERS = {1: "thumb", 2: "forefinger", 3: "middle_finger", 4: "ring_finger", 5: "pinky_finger"}
_SKIN_TONES = np.array(  # light to dark, sRGB
    [[255, 224, 196], [241, 194, 167], [224, 172, 130], [198, 134, 66], [141, 85, 36], [92, 51, 23]], dtype=np.float64
)


class BodyModel:
    """anny loaded once per worker, with everything that depends only on its topology precomputed."""

    def __init__(self, texture_size: int = 512) -> None:
        import anny
        import torch

        self._torch = torch
        self.model = anny.Anny()
        self.model.eval()
        self.bone_labels: list[str] = list(self.model.bone_labels)
        self.faces = self.model.faces.detach().cpu().numpy().astype(np.int64)
        with torch.no_grad():
            self.regressor = anny.KeypointsRegressor.coco(self.model)
        self.coco_names: list[str] = list(self.regressor.labels)
        weights = self.model.vertex_bone_weights.detach().cpu().numpy()
        indices = self.model.vertex_bone_indices.detach().cpu().numpy()
        self.vertex_bone = indices[np.arange(len(indices)), np.argmax(weights, axis=1)]
        self.face_region, self.face_side, self.tongue_faces = self._face_regions()
        self._split_uv()
        self.texture_size = texture_size
        self.texel_face = self._rasterise_uv(texture_size)

    # ------------------------------------------------------------------------------ topology, once

    def _face_regions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from anny.face_segmentation import get_face_segmentation_mask

        region_of_bone = np.zeros(len(self.bone_labels), dtype=np.int64)
        side_of_bone = np.full(len(self.bone_labels), -1, dtype=np.int64)  # 0 left, 1 right, -1 mid-line
        for b, label in enumerate(self.bone_labels):
            region = next((r for prefix, r in _REGION_OF_BONE if label.startswith(prefix)), "torso")
            region_of_bone[b] = REGIONS.index(region)
            side_of_bone[b] = 0 if label.endswith(".L") else 1 if label.endswith(".R") else -1
        corner_bone = self.vertex_bone[self.faces]
        # A face takes the bone two of its corners agree on, else its first corner's.
        face_bone = np.where(corner_bone[:, 1] == corner_bone[:, 2], corner_bone[:, 1], corner_bone[:, 0])
        region, side = region_of_bone[face_bone], side_of_bone[face_bone]
        for mask_name, (reg, sid) in _MASK_REGIONS.items():
            m = get_face_segmentation_mask(self.model, [mask_name]).cpu().numpy()
            region[m], side[m] = REGIONS.index(reg), sid
        head = get_face_segmentation_mask(self.model, list(_HEAD_MASKS)).cpu().numpy()
        region[head], side[head] = REGIONS.index("head"), -1
        tongue = get_face_segmentation_mask(self.model, ["tongue"]).cpu().numpy()
        return region, side, tongue

    def _split_uv(self) -> None:
        """Duplicate vertices at UV seams: trimesh/pyrender want one UV per vertex."""
        uv_index = self.model.face_texture_coordinate_indices.detach().cpu().numpy().astype(np.int64)
        pairs = np.stack([self.faces.reshape(-1), uv_index.reshape(-1)], axis=1)
        unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
        self.split_vertex = unique[:, 0]  # split vertex -> model vertex
        self.split_uv = self.model.texture_coordinates.detach().cpu().numpy()[unique[:, 1]]
        self.split_faces = inverse.reshape(-1, 3)

    def _rasterise_uv(self, size: int) -> np.ndarray:
        """(size, size) int32 face index per texel (-1 = unused), so painting a body is a table lookup."""
        import cv2

        texel = np.full((size, size), -1, dtype=np.int32)
        uv = self.split_uv[self.split_faces]  # (F, 3, 2)
        pixels = np.stack([uv[..., 0] * size, (1.0 - uv[..., 1]) * size], axis=-1)
        for f, tri in enumerate(np.rint(pixels * 16).astype(np.int32)):  # 4 bits of sub-pixel precision
            cv2.fillConvexPoly(texel, tri, int(f), lineType=cv2.LINE_8, shift=4)
        # Grow islands by a few texels so bilinear filtering at UV seams never reads an unpainted texel.
        for _ in range(4):
            empty = texel < 0
            if not empty.any():
                break
            grown = cv2.dilate((texel + 1).astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32) - 1
            texel[empty] = grown[empty]
        return texel

    # ---------------------------------------------------------------------------------- one body

    def sample(self, index: int, seed: int, config: BodyConfig) -> Subject:
        rng = np.random.default_rng(subject_seed("body", seed, index))
        phenotype = {label: float(rng.uniform(*getattr(config, label))) for label in self.model.phenotype_labels}
        pose = _sample_pose(rng, config.pose_scale)
        vertices, keypoints, bone_heads = self._pose(phenotype, pose)
        clothing = {
            "top": _random_colour(rng) if rng.random() < config.clothing_prob else None,
            "long_sleeves": bool(rng.random() < 0.4),
            "bottom": _random_colour(rng) if rng.random() < config.clothing_prob else None,
            "long_legs": bool(rng.random() < 0.6),
        }
        skin = _skin_tone(rng)
        face_labels, face_colours = self._labels_and_colours(clothing, skin)
        texture = self._texture(face_colours, rng)

        # Into the world frame: y up, feet on the ground, facing +z.
        world = vertices @ ANNY_TO_WORLD.T
        shift = normalising_transform(world)[:3, 3]
        world += shift
        keypoints = keypoints @ ANNY_TO_WORLD.T + shift
        bone_heads = bone_heads @ ANNY_TO_WORLD.T + shift
        body = trimesh.Trimesh(world, self.faces, process=False)
        normals = np.asarray(body.vertex_normals, dtype=np.float64)
        display = trimesh.Trimesh(world[self.split_vertex], self.split_faces, process=False)
        material = trimesh.visual.material.PBRMaterial(
            baseColorTexture=Image.fromarray(texture),
            baseColorFactor=[1.0, 1.0, 1.0, 1.0],  # floats: integers are read as 0-255
            metallicFactor=0.0,
            roughnessFactor=float(rng.uniform(0.5, 0.9)),
        )
        display.visual = trimesh.visual.TextureVisuals(uv=self.split_uv, material=material)
        display.vertex_normals = normals[self.split_vertex]  # smooth across UV seams
        landmarks = self._landmarks(world, keypoints, bone_heads)
        params = {
            "model": "anny",
            "index": index,
            "phenotype": {k: round(v, 6) for k, v in phenotype.items()},
            "pose_deg": {k: [round(a, 4) for a in v] for k, v in pose.items()},
            "skin_rgb": [round(float(c), 4) for c in skin],
            "clothing": clothing,
        }
        return Subject(
            id=f"body-{seed}-{index:06d}",
            kind="body",
            uri=f"anny://seed/{seed}/body/{index}",
            geometry=SubjectGeometry(
                display=[display], positions=world, normals=normals, faces=self.faces, face_labels=face_labels
            ),
            landmarks=landmarks,
            params=params,
        )

    def _pose(self, phenotype: dict[str, float], pose: dict[str, list[float]]):
        from scipy.spatial.transform import Rotation

        torch = self._torch
        dtype = self.model.template_vertices.dtype
        deltas = {}
        for bone, angles in pose.items():
            t = np.eye(4)
            t[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
            deltas[bone] = torch.as_tensor(t, dtype=dtype)[None]
        with torch.no_grad():
            out = self.model(
                pose_parameters=deltas,
                phenotype_kwargs={k: torch.tensor([v], dtype=dtype) for k, v in phenotype.items()},
            )
            keypoints = self.regressor(out)[0].cpu().numpy()
        vertices = out["vertices"][0].cpu().numpy().astype(np.float64)
        bone_heads = out["bone_poses"][0, :, :3, 3].cpu().numpy().astype(np.float64)
        return vertices, keypoints.astype(np.float64), bone_heads

    def _labels_and_colours(self, clothing: dict, skin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vocab = schema.vocabulary("goliath28")
        ids = {n: i for i, n in enumerate(vocab.names)}
        region = np.array(REGIONS)[self.face_region]
        labels = np.full(len(self.faces), ids["Torso"], dtype=np.uint8)
        for reg, cls in _REGION_CLASS.items():
            for side, prefix in ((0, "Left_"), (1, "Right_")):
                labels[(region == reg) & (self.face_side == side)] = ids[prefix + cls]
        labels[region == "head"] = ids["Face_Neck"]
        labels[self.tongue_faces] = ids["Tongue"]
        colours = np.tile(skin, (len(self.faces), 1))
        if clothing["top"] is not None:
            covered = np.isin(region, ["torso", "upper_arm"] + (["lower_arm"] if clothing["long_sleeves"] else []))
            labels[covered] = ids["Upper_Clothing"]
            colours[covered] = clothing["top"]
        if clothing["bottom"] is not None:
            covered = np.isin(region, ["pelvis", "upper_leg"] + (["lower_leg"] if clothing["long_legs"] else []))
            labels[covered] = ids["Lower_Clothing"]
            colours[covered] = clothing["bottom"]
        return labels, colours

    def _texture(self, face_colours: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(T, T, 3) uint8: each texel the colour of its face, times smooth low-frequency variation."""
        import cv2

        size = self.texture_size
        # The UV rasterisation is per split face, whose order equals the model faces'.
        texel = self.texel_face
        image = np.where(texel[..., None] >= 0, face_colours[np.maximum(texel, 0)], 0.5)
        noise = cv2.resize(rng.normal(0.0, 1.0, (16, 16)).astype(np.float32), (size, size), cv2.INTER_CUBIC)
        fine = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
        image = image * (1.0 + 0.06 * noise[..., None] + 0.02 * fine[..., None])
        return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)

    def _landmarks(self, world: np.ndarray, coco: np.ndarray, bone_heads: np.ndarray) -> Landmarks:
        names = list(self.coco_names)
        points = [p for p in coco]
        for side, suffix in (("left", ".L"), ("right", ".R")):
            for finger, goliath in _FINGERS.items():
                heads = [bone_heads[self.bone_labels.index(f"finger{finger}-{j}{suffix}")] for j in (1, 2, 3)]
                last = self.bone_labels.index(f"finger{finger}-3{suffix}")
                tip_vertices = world[self.vertex_bone == last]
                direction = heads[2] - heads[1]
                tip = tip_vertices[np.argmax(tip_vertices @ direction)]
                joints = {"third_joint": heads[0], "2": heads[1], "3": heads[2], "4": tip}
                for part, point in joints.items():
                    sep = "_" if part == "third_joint" else ""
                    names.append(f"{side}_{goliath}{sep}{part}")
                    points.append(point)
        index = schema.keypoint_index()
        missing = [n for n in names if n not in index]
        if missing:
            raise RuntimeError(f"anny keypoint names not in the Goliath set: {missing}")
        pts = np.stack(points)
        # Joints lie inside the body: a joint is seen when any of its nearest surface vertices is.
        d2 = ((pts[:, None, :] - world[None, ::3, :]) ** 2).sum(-1)
        nearest = np.argsort(d2, axis=1)[:, :12] * 3
        return Landmarks(names=names, points=pts, support=[world[n] for n in nearest], tolerance=0.01)


def _sample_pose(rng: np.random.Generator, scale: float) -> dict[str, list[float]]:
    pose: dict[str, list[float]] = {}
    for bone, ranges in POSE_RANGES.items():
        angles = [float(rng.uniform(lo, hi)) * scale for lo, hi in ranges]
        if bone.startswith("spine") or bone.startswith("neck"):
            pose[bone] = angles
            continue
        pose[f"{bone}.L"] = angles
        # The mirror image through the x = 0 plane keeps x rotations and negates y and z rotations; the
        # right side draws its own angles so that the two sides differ.
        right = [float(rng.uniform(lo, hi)) * scale for lo, hi in ranges]
        pose[f"{bone}.R"] = [right[0], -right[1], -right[2]]
    return pose


def _skin_tone(rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    i = int(np.floor(t))
    j = min(i + 1, len(_SKIN_TONES) - 1)
    rgb = (_SKIN_TONES[i] * (1 - (t - i)) + _SKIN_TONES[j] * (t - i)) / 255.0
    return rgb


def _random_colour(rng: np.random.Generator) -> list[float]:
    h, s, v = rng.uniform(0, 1), rng.uniform(0.1, 0.8), rng.uniform(0.15, 0.95)
    return [round(c, 4) for c in colorsys.hsv_to_rgb(h, s, v)]
