"""Random parametric humans from the `anny` body model (Apache-2.0, works offline).

    model = BodyModel()                                   # ~3 s from anny's cache (first build ~35 s)
    subject = model.sample(index=7, seed=0, config=BodyConfig(), poses=4)

Each body draws a phenotype (gender, age, muscle, weight, height, proportions), a skin tone and optional
clothing colours painted into a texture through the model's UVs, then `poses` poses from the pose families
of `synth/poses.py`, all posed in one batched anny call. Everything that depends only on anny's topology
(part regions, UV raster, landmark names, the vertex-face incidence for normals) is built once per worker.
Labels:
- body parts (goliath28) from each vertex's strongest skinning bone, refined by anny's hand, foot,
  head and tongue masks; painted clothing is labelled Upper_Clothing / Lower_Clothing;
- keypoints: anny's COCO regressor (COCO-17 + 6 foot points, the first 23 Goliath names) plus the
  finger joints from the hand rig (bone heads; fingertips are the farthest vertex along the last bone).
- hair (with probability `hair_prob`) is painted on the scalp, not modelled: the crown above a hairline and the
  back of the head down to a random length, labelled Hair. Without it a uniformly clothed body's front and
  back differ only in the shape of the face and the feet.
Not modelled: teeth and lips have no geometry or mask in anny, so those classes never appear.

The model caches under ANNY_CACHE_DIR (default ~/.cache/anny) and its skinning kernels under
WARP_CACHE_PATH; point both at a persistent folder on workers.
"""

from __future__ import annotations

import colorsys

import numpy as np
import scipy.sparse
import trimesh
from PIL import Image

from data_engine import schema
from synth.config import BodyConfig
from synth.geometry import SubjectGeometry
from synth.poses import BodyPose, sample_pose
from synth.subject import Landmarks, Posed, Subject, normalising_transform, subject_seed

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

_FINGERS = {1: "thumb", 2: "forefinger", 3: "middle_finger", 4: "ring_finger", 5: "pinky_finger"}
_SKIN_TONES = np.array(  # light to dark, sRGB
    [[255, 224, 196], [241, 194, 167], [224, 172, 130], [198, 134, 66], [141, 85, 36], [92, 51, 23]], dtype=np.float64
)

# Painted hair (`BodyModel._hair_faces`): black, dark and light brown, blond, red, grey (sRGB); the hairline's
# height above the eyes and the range of lengths below them at the back, in the rest template's metres.
_HAIR_COLOURS = np.array(
    [[28, 24, 22], [60, 42, 30], [110, 78, 50], [196, 160, 100], [140, 62, 30], [170, 168, 165]], dtype=np.float64
)
_HAIRLINE_M = 0.05
_HAIR_LENGTH_M = (0.02, 0.15)


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
        self.scalp_height, self.behind_ears = self._scalp()
        self.landmark_names = self._landmark_names()
        # Vertex normals are sums of the adjacent faces' area-weighted normals: one sparse product per pose.
        v_count, f_count = int(self.model.template_vertices.shape[-2]), len(self.faces)
        rows, cols = self.faces.reshape(-1), np.repeat(np.arange(f_count), 3)
        self._vertex_faces = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(v_count, f_count))
        self._finger_bones = {
            (f, j, sfx): self.bone_labels.index(f"finger{f}-{j}{sfx}")
            for f in _FINGERS
            for j in (1, 2, 3)
            for sfx in (".L", ".R")
        }
        self._fingertip_vertices = {
            (f, sfx): np.flatnonzero(self.vertex_bone == self._finger_bones[f, 3, sfx])
            for f in _FINGERS
            for sfx in (".L", ".R")
        }
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

    def _scalp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per face, in the rest template: height above the eyes (m; nan off the head) and whether it lies behind
        the ears. Hair is painted from these (`_hair_faces`), so each body only picks a length."""
        from anny.face_segmentation import get_face_segmentation_mask

        template = self.model.template_vertices.detach().cpu().numpy().reshape(-1, 3)
        centres = template[self.faces].mean(axis=1)  # anny's frame: z up, the face towards -y
        eyes = get_face_segmentation_mask(self.model, ["eye_front.L", "eye_front.R"]).cpu().numpy()
        head = self.face_region == REGIONS.index("head")
        height = np.where(head, centres[:, 2] - centres[eyes, 2].mean(), np.nan)
        # The ears sit about halfway between the nose and the back of the skull.
        ears_y = 0.5 * (centres[head, 1].min() + centres[head, 1].max())
        return height, centres[:, 1] > ears_y

    def _hair_faces(self, length: float) -> np.ndarray:
        """Mesh faces under hair `length` m long at the back (below the eyes' height): the crown and temples above
        a hairline over the forehead, and behind the ears down to that length. Paint, not a hairstyle's
        geometry: the front of the head shows skin and its back hair, as on most people."""
        with np.errstate(invalid="ignore"):  # nan heights: not on the head
            crown = self.scalp_height > _HAIRLINE_M
            back = self.behind_ears & (self.scalp_height > -length)
        return crown | back

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

    def sample(self, index: int, seed: int, config: BodyConfig, poses: int = 1) -> Subject:
        """Body `index` of `seed` in `poses` poses: one person (shape, skin, clothes), posed in one batch.

        Pose k is drawn from its own seed, so asking for more poses never changes the first ones.
        """
        rng = np.random.default_rng(subject_seed("body", seed, index))
        phenotype = {label: float(rng.uniform(*getattr(config, label))) for label in self.model.phenotype_labels}
        drawn = [
            sample_pose(np.random.default_rng(subject_seed("pose", seed, index, k)), config.pose_scale, config.families)
            for k in range(poses)
        ]
        clothing = {
            "top": _random_colour(rng) if rng.random() < config.clothing_prob else None,
            "long_sleeves": bool(rng.random() < 0.4),
            "bottom": _random_colour(rng) if rng.random() < config.clothing_prob else None,
            "long_legs": bool(rng.random() < 0.6),
        }
        skin = _skin_tone(rng)
        hair = _random_hair(rng) if rng.random() < config.hair_prob else None
        face_labels, face_colours = self._labels_and_colours(clothing, skin, hair)
        material = trimesh.visual.material.PBRMaterial(
            baseColorTexture=Image.fromarray(self._texture(face_colours, rng)),
            baseColorFactor=[1.0, 1.0, 1.0, 1.0],  # floats: integers are read as 0-255
            metallicFactor=0.0,
            roughnessFactor=float(rng.uniform(0.5, 0.9)),
        )
        vertices, keypoints, bone_heads = self._pose(phenotype, drawn)
        posed: list[Posed] = []
        support: list[np.ndarray] | None = None  # surface vertices per landmark, chosen once per body
        for pose, v, k, b in zip(drawn, vertices, keypoints, bone_heads, strict=True):
            # Into the world frame: y up, feet (or whatever is lowest) on the ground, centred.
            rotation = pose.rotation() @ ANNY_TO_WORLD
            world = v @ rotation.T
            shift = normalising_transform(world)[:3, 3]
            world += shift
            normals = self._vertex_normals(world)
            display = trimesh.Trimesh(world[self.split_vertex], self.split_faces, process=False)
            display.visual = trimesh.visual.TextureVisuals(uv=self.split_uv, material=material)
            display.vertex_normals = normals[self.split_vertex]  # smooth across UV seams
            points = np.concatenate([k @ rotation.T + shift, self._finger_points(world, b @ rotation.T + shift)])
            if support is None:
                support = self._support(world, points)
            geometry = SubjectGeometry(
                display=[display], positions=world, normals=normals, faces=self.faces, face_labels=face_labels
            )
            landmarks = Landmarks(
                names=self.landmark_names, points=points, support=[world[n] for n in support], tolerance=0.01
            )
            posed.append(Posed(geometry=geometry, landmarks=landmarks, params=pose.as_json()))
        params = {
            "model": "anny",
            "index": index,
            "phenotype": {k: round(v, 6) for k, v in phenotype.items()},
            "skin_rgb": [round(float(c), 4) for c in skin],
            "clothing": clothing,
            "hair": hair,
        }
        return Subject(
            id=f"body-{seed}-{index:06d}",
            kind="body",
            uri=f"anny://seed/{seed}/body/{index}",
            poses=posed,
            params=params,
        )

    def _pose(self, phenotype: dict[str, float], poses: list[BodyPose]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All poses of one phenotype in one anny call: ((P, V, 3) vertices, (P, 23, 3) COCO points, (P, B, 3) bone
        heads), in anny's frame. The phenotype's blend shapes are evaluated once and shared by the batch."""
        from scipy.spatial.transform import Rotation

        torch = self._torch
        dtype = self.model.template_vertices.dtype
        bones = sorted({bone for pose in poses for bone in pose.joints} | {"spine04"})  # never an empty dict
        deltas = {}
        for bone in bones:
            t = np.tile(np.eye(4), (len(poses), 1, 1))
            angles = [pose.joints.get(bone, [0.0, 0.0, 0.0]) for pose in poses]
            t[:, :3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
            deltas[bone] = torch.as_tensor(t, dtype=dtype)
        with torch.no_grad():
            out = self.model(
                pose_parameters=deltas,
                phenotype_kwargs={k: torch.tensor([v], dtype=dtype) for k, v in phenotype.items()},
            )
            keypoints = self.regressor(out).cpu().numpy()
        vertices = out["vertices"].cpu().numpy().astype(np.float64)
        bone_heads = out["bone_poses"][:, :, :3, 3].cpu().numpy().astype(np.float64)
        return vertices, keypoints.astype(np.float64), bone_heads

    def _labels_and_colours(
        self, clothing: dict, skin: np.ndarray, hair: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
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
        if hair is not None:
            covered = self._hair_faces(hair["length_m"])
            labels[covered] = ids["Hair"]
            colours[covered] = hair["rgb"]
        return labels, colours

    def _texture(self, face_colours: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(T, T, 3) uint8: each texel the colour of its face, times smooth low-frequency variation."""
        import cv2

        size = self.texture_size
        # The UV rasterisation is per split face, whose order equals the model faces'.
        # float32 throughout: a body's texture is built once per body, and float64 doubled its cost.
        colours = np.vstack([face_colours, [0.5, 0.5, 0.5]]).astype(np.float32) * 255.0  # last row: unused texels
        image = colours[self.texel_face]  # -1 indexes the last row
        noise = cv2.resize(rng.standard_normal((16, 16), dtype=np.float32), (size, size), cv2.INTER_CUBIC)
        fine = rng.standard_normal((size, size), dtype=np.float32)
        image *= (1.0 + 0.06 * noise + 0.02 * fine)[..., None]
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    def _landmark_names(self) -> list[str]:
        """COCO-23 from the regressor, then per hand and finger the Goliath joints `_finger_points` gives."""
        names = list(self.coco_names)
        for side in ("left", "right"):
            for goliath in _FINGERS.values():
                names += [
                    f"{side}_{goliath}_third_joint",
                    f"{side}_{goliath}2",
                    f"{side}_{goliath}3",
                    f"{side}_{goliath}4",
                ]
        index = schema.keypoint_index()
        missing = [n for n in names if n not in index]
        if missing:
            raise RuntimeError(f"anny keypoint names not in the Goliath set: {missing}")
        return names

    def _finger_points(self, world: np.ndarray, bone_heads: np.ndarray) -> np.ndarray:
        """(40, 3): finger joints are bone heads; a fingertip is the last bone's vertex farthest along it."""
        points = []
        for suffix in (".L", ".R"):
            for finger in _FINGERS:
                heads = [bone_heads[self._finger_bones[finger, j, suffix]] for j in (1, 2, 3)]
                tip_vertices = world[self._fingertip_vertices[finger, suffix]]
                tip = tip_vertices[np.argmax(tip_vertices @ (heads[2] - heads[1]))]
                points += [heads[0], heads[1], heads[2], tip]
        return np.stack(points)

    def _vertex_normals(self, vertices: np.ndarray) -> np.ndarray:
        """(V, 3) unit normals of the posed mesh (V, 3), weighted by face area."""
        corners = vertices[self.faces]
        face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        normals = self._vertex_faces @ face_normals
        return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)

    @staticmethod
    def _support(world: np.ndarray, points: np.ndarray) -> list[np.ndarray]:
        """Per landmark, 12 nearby surface vertices (every third one): joints lie inside the body, so a joint
        is seen when any of them is."""
        surface = world[::3]
        # |p - w|^2 = |p|^2 - 2 p.w + |w|^2, as one matrix product instead of a (K, V, 3) difference array.
        d2 = (points**2).sum(1)[:, None] - 2.0 * points @ surface.T + (surface**2).sum(1)[None, :]
        return list(np.argpartition(d2, 12, axis=1)[:, :12] * 3)


def _random_hair(rng: np.random.Generator) -> dict:
    """A natural hair colour (jittered in brightness) and a length at the back of the head."""
    base = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] / 255.0
    rgb = np.clip(base * rng.uniform(0.8, 1.2), 0.0, 1.0)
    return {"rgb": [round(float(c), 4) for c in rgb], "length_m": round(float(rng.uniform(*_HAIR_LENGTH_M)), 4)}


def _skin_tone(rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    i = int(np.floor(t))
    j = min(i + 1, len(_SKIN_TONES) - 1)
    rgb = (_SKIN_TONES[i] * (1 - (t - i)) + _SKIN_TONES[j] * (t - i)) / 255.0
    return rgb


def _random_colour(rng: np.random.Generator) -> list[float]:
    h, s, v = rng.uniform(0, 1), rng.uniform(0.1, 0.8), rng.uniform(0.15, 0.95)
    return [round(c, 4) for c in colorsys.hsv_to_rgb(h, s, v)]
