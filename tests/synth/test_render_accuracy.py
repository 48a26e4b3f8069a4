"""The renderer's float output against analytic scenes (a sphere and a box, metres, camera 3 m away)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy import ndimage

from synth import annotate
from synth.camera import PinholeCamera, intrinsics, look_at
from synth.geometry import LightSpec, SubjectGeometry
from synth.render import Renderer
from synth.subject import Landmarks

W, H, F = 320, 240, 400.0
EYE = np.array([0.0, 0.0, 3.0])


@pytest.fixture(scope="module")
def renderer():
    with Renderer(W, H) as r:
        yield r


def camera() -> PinholeCamera:
    return PinholeCamera(W, H, intrinsics(W, H, F), look_at(EYE, np.zeros(3)))


def pixel_rays() -> np.ndarray:
    """(H, W, 3) OpenCV camera-space ray directions through pixel centres (z = 1)."""
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    return np.stack([(xs - W / 2) / F, (ys - H / 2) / F, np.ones_like(xs)], -1)


def geometry(mesh: trimesh.Trimesh) -> SubjectGeometry:
    return SubjectGeometry(
        display=[mesh],
        positions=np.asarray(mesh.vertices, np.float64),
        normals=np.asarray(mesh.vertex_normals, np.float64),
        faces=np.asarray(mesh.faces),
    )


def render(renderer: Renderer, mesh: trimesh.Trimesh):
    loaded = renderer.load(geometry(mesh))
    try:
        lights = [LightSpec("directional", (1.0, 1.0, 1.0), 3.0, np.eye(4))]
        return renderer.render(loaded, camera(), lights, np.zeros((H, W, 3), np.uint8))
    finally:
        renderer.unload(loaded)


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_sphere_depth_normals_mask_match_analytic(renderer):
    radius = 0.5
    out = render(renderer, trimesh.creation.icosphere(subdivisions=6, radius=radius))
    # Camera space (OpenCV): the sphere's centre sits at z = 3 straight ahead.
    d = pixel_rays()
    centre = np.array([0.0, 0.0, 3.0])
    a, b, c = (d * d).sum(-1), -2 * d @ centre, centre @ centre - radius**2
    disc = b * b - 4 * a * c
    hit = disc > 0
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    assert iou(hit, out.mask) >= 0.999
    both = hit & out.mask
    assert np.abs(out.depth[both] - t[both]).mean() <= 1e-4  # rays have z = 1, so t is camera z
    assert np.all(out.depth[~out.mask] == 0) and np.all(out.normal[~out.mask] == 0)
    true_normal = (d * t[..., None] - centre) / radius
    interior = ndimage.binary_erosion(both, iterations=2)
    assert angle_deg(out.normal[interior], true_normal[interior]).mean() <= 0.05
    # Normals face the camera (negative z in OpenCV axes) and are unit length in float precision.
    assert np.all(out.normal[interior][:, 2] < 0)
    assert np.abs(np.linalg.norm(out.normal[interior], axis=-1) - 1).max() < 1e-5


def test_box_depth_normals_mask_match_analytic(renderer):
    extents = np.array([0.8, 1.0, 0.6])
    box = trimesh.creation.box(extents=extents)
    rotation = trimesh.transformations.euler_matrix(0.4, 0.7, 0.1)
    box.apply_transform(rotation)
    box.unmerge_vertices()  # flat faces: each face its own vertices, so vertex normals are face normals
    out = render(renderer, box)
    # Ray-box intersection (slab method) in the box frame; world = camera frame shifted and flipped.
    w2c = camera().world_to_camera
    c2w = np.linalg.inv(w2c)
    to_box = np.linalg.inv(rotation) @ c2w
    d_cam = pixel_rays().reshape(-1, 3)
    origin = to_box[:3, 3]
    d = d_cam @ to_box[:3, :3].T
    with np.errstate(divide="ignore"):
        t1 = (-extents / 2 - origin) / d
        t2 = (extents / 2 - origin) / d
    t_near = np.minimum(t1, t2).max(1)
    t_far = np.maximum(t1, t2).min(1)
    hit = (t_near < t_far) & (t_far > 0)
    axis = np.minimum(t1, t2).argmax(1)
    normal_box = np.zeros_like(d)
    normal_box[np.arange(len(d)), axis] = -np.sign(d[np.arange(len(d)), axis])
    normal_cam = normal_box @ (np.linalg.inv(to_box)[:3, :3]).T
    hit, t_near = hit.reshape(H, W), t_near.reshape(H, W)
    face = np.where(hit, axis.reshape(H, W) + 1, 0)
    assert iou(hit, out.mask) >= 0.999
    both = hit & out.mask
    assert np.abs(out.depth[both] - t_near[both]).mean() <= 1e-4
    # Interior: away from the silhouette and from the edges where the visible face changes.
    edges = (ndimage.maximum_filter(face, 3) != ndimage.minimum_filter(face, 3)) | ~both
    interior = ~ndimage.binary_dilation(edges, iterations=1)
    assert interior.sum() > 1000
    assert angle_deg(out.normal[interior], normal_cam.reshape(H, W, 3)[interior]).mean() <= 0.05


def test_landmarks_project_and_occlusion_follows_depth(renderer):
    radius = 0.5
    out = render(renderer, trimesh.creation.icosphere(subdivisions=6, radius=radius))
    direction = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
    front = direction * radius  # world: the camera sits at +z, so +z is the sphere's front
    back = -direction * radius
    outside = np.array([5.0, 0.0, 0.0])  # far to the right of the image
    landmarks = Landmarks(
        names=["nose", "left_wrist", "right_wrist"],
        points=np.stack([front, back, outside]),
        support=[front[None], back[None], outside[None]],
        tolerance=0.01,
    )
    kp = annotate.keypoints(landmarks, camera(), out.depth)
    assert kp.shape == (308, 3)
    # The analytic projection, written out: OpenCV camera = world shifted by 3 and y, z flipped.
    cam = np.array([front[0], -front[1], 3.0 - front[2]])
    expected = np.array([F * cam[0] / cam[2] + W / 2, F * cam[1] / cam[2] + H / 2])
    nose = kp[0]
    assert np.abs(nose[:2] - expected).max() <= 0.5
    assert nose[2] == annotate.VISIBLE
    assert kp[62, 2] == annotate.OCCLUDED  # left_wrist is Goliath index 62, behind the sphere
    assert kp[41, 2] == annotate.UNLABELLED  # right_wrist (41) projects outside the image
    assert np.all(kp[[i for i in range(308) if i not in (0, 62, 41)]] == 0)
    # The rendered depth at the landmark's pixel is the landmark's own depth.
    col, row = np.floor(expected).astype(int)
    assert abs(out.depth[row, col] - cam[2]) < 5e-3


def test_rgb_is_antialiased_and_composited_over_background(renderer):
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    mesh.visual.vertex_colors = [255, 255, 255, 255]
    loaded = renderer.load(geometry(mesh))
    background = np.zeros((H, W, 3), np.uint8)
    background[..., 1] = 200
    lights = [LightSpec("directional", (1.0, 1.0, 1.0), 4.0, np.eye(4))]
    try:
        out = renderer.render(loaded, camera(), lights, background, ambient=0.3)
    finally:
        renderer.unload(loaded)
    assert np.array_equal(out.rgb[0, 0], [0, 200, 0])  # background untouched far from the person
    centre = out.rgb[H // 2, W // 2].astype(int)
    assert centre[0] > 100 and abs(centre[0] - centre[2]) < 10  # white, lit sphere
    # Antialiasing: silhouette pixels blend sphere and background (neither pure).
    edge = ndimage.binary_dilation(out.mask) & ~ndimage.binary_erosion(out.mask)
    red = out.rgb[edge][:, 0].astype(int)
    assert ((red > 20) & (red < centre[0] - 20)).sum() > 10


def test_renderer_rejects_mismatched_inputs(renderer):
    loaded = renderer.load(geometry(trimesh.creation.icosphere(subdivisions=1)))
    try:
        with pytest.raises(ValueError, match="background"):
            renderer.render(loaded, camera(), [], np.zeros((10, 10, 3), np.uint8))
        small = PinholeCamera(64, 48, intrinsics(64, 48, 50.0), look_at(EYE, np.zeros(3)))
        with pytest.raises(ValueError, match="64x48"):
            renderer.render(loaded, small, [], np.zeros((H, W, 3), np.uint8))
    finally:
        renderer.unload(loaded)
    with pytest.raises(ValueError, match="positive"):
        Renderer(0, 10)


def test_repose_moves_the_geometry_and_keeps_the_materials(renderer):
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.4)
    moved = sphere.copy()
    moved.apply_translation([0.5, 0.0, 0.0])
    lights = [LightSpec("directional", (1.0, 1.0, 1.0), 3.0, np.eye(4))]
    background = np.zeros((H, W, 3), np.uint8)
    loaded = renderer.load(geometry(sphere))
    try:
        material = loaded.scene_nodes[0].mesh.primitives[0].material
        renderer.repose(loaded, geometry(moved))
        after = renderer.render(loaded, camera(), lights, background)
        assert loaded.scene_nodes[0].mesh.primitives[0].material is material  # textures stay uploaded
        with pytest.raises(ValueError, match="repose needs"):
            renderer.repose(loaded, geometry(trimesh.creation.box()))
    finally:
        renderer.unload(loaded)
    fresh = render(renderer, moved)  # the moved mesh loaded from scratch: both passes must agree with it
    assert after.mask.sum() > 1000 and np.array_equal(after.mask, fresh.mask)
    assert np.allclose(after.depth, fresh.depth) and np.allclose(after.normal, fresh.normal, atol=1e-5)
    assert np.abs(after.rgb.astype(int) - fresh.rgb.astype(int)).max() <= 1
