"""Benchmark: the full synth render set against pyrender's plain RGB + depth render of the same view.

    python benchmarks/synth.py                      # 1024x768 and 4096x3072, ~100k-face textured mesh
    python benchmarks/synth.py --sizes 1024x768 --reps 5
    python benchmarks/synth.py --bodies 8 --body-size 192x256 --views 4     # parametric bodies only

Full set = antialiased RGB composited over a background + depth + normals + mask + part labels (our
float32 geometry pass). Baseline = `OffscreenRenderer.render(scene)` (RGB + depth), what any user of
pyrender writes. Both run in this process, on the same mesh, camera and lights, interleaved, so the
ratio holds on a noisy machine. Also printed: the cost of encoding one sample's PNG members.

Bodies: views/s of the whole per-body job (`RenderWorker.run`: pose and label an anny body, render every
view's full set, encode and write the samples) against pyrender's plain render of the same posed meshes
from the same cameras (meshes already loaded: the bare render cost). Body by body, interleaved, in process
CPU time; the model and the GL context are built once before timing, as a worker does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def textured_mesh(target_faces: int = 100_000, texture: int = 2048):
    """A person-sized capsule with spherical UVs and a noisy 2048^2 texture (~`target_faces` faces)."""
    import trimesh
    from PIL import Image

    count = int(np.sqrt(target_faces / 2))
    mesh = trimesh.creation.capsule(height=1.3, radius=0.2, count=[count, count])
    v = mesh.vertices
    uv = np.stack([np.arctan2(v[:, 1], v[:, 0]) / (2 * np.pi) + 0.5, (v[:, 2] - v[:, 2].min()) / np.ptp(v[:, 2])], 1)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (texture, texture, 3), dtype=np.uint8))
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # z up -> y up
    mesh.apply_translation([0, 0.85, 0])
    return mesh


def bench_size(width: int, height: int, reps: int) -> dict:
    from data_engine.sample import Sample, encode
    from synth.camera import PinholeCamera, intrinsics, look_at
    from synth.geometry import LightSpec, SubjectGeometry
    from synth.render import Renderer
    from synth.views import _aim

    mesh = textured_mesh()
    labels = (np.arange(len(mesh.faces)) // 5000 % 28).astype(np.uint8)
    geometry = SubjectGeometry(
        display=[mesh],
        positions=np.asarray(mesh.vertices, np.float64),
        normals=np.asarray(mesh.vertex_normals, np.float64),
        faces=np.asarray(mesh.faces),
        face_labels=labels,
    )
    focal = 50.0 / 36.0 * max(width, height)
    camera = PinholeCamera(
        width, height, intrinsics(width, height, focal), look_at(np.array([0.8, 1.2, 3.2]), np.array([0, 0.85, 0]))
    )
    lights = [
        LightSpec("directional", (1.0, 0.95, 0.9), 3.0, _aim(np.array([2.0, 3.0, 2.0]), np.zeros(3))),
        LightSpec("point", (0.9, 0.9, 1.0), 20.0, _aim(np.array([-1.5, 2.0, 2.0]), np.zeros(3))),
    ]
    background = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    full, plain = [], []
    with Renderer(width, height) as renderer:
        loaded = renderer.load(geometry)
        for _ in range(2):  # shader compilation and texture upload happen on the first frames
            renderer.render(loaded, camera, lights, background)
            renderer.render_plain(camera)
        for _ in range(reps):
            t = time.perf_counter()
            out = renderer.render(loaded, camera, lights, background)
            full.append(time.perf_counter() - t)
            t = time.perf_counter()
            renderer.render_plain(camera)
            plain.append(time.perf_counter() - t)
        renderer.unload(loaded)
    t = time.perf_counter()
    encode(Sample(key="0", image=out.rgb, depth=out.depth, normal=out.normal, mask=out.mask, seg=out.labels))
    encode_s = time.perf_counter() - t
    return {
        "size": f"{width}x{height}",
        "faces": len(mesh.faces),
        "full_ms": 1000 * statistics.median(full),
        "plain_ms": 1000 * statistics.median(plain),
        "encode_ms": 1000 * encode_s,
    }


def bench_bodies(width: int, height: int, bodies: int, views: int, views_per_pose: int) -> dict:
    import tempfile

    from data_engine.shards import iter_samples
    from synth.camera import PinholeCamera
    from synth.config import load_config
    from synth.engine import RenderWorker, SubjectTask, poses_per_body

    out = tempfile.mkdtemp(prefix="hv-bench-bodies-")
    overrides = [f"width={width}", f"height={height}", f"views={views}", f"bodies.views_per_pose={views_per_pose}"]
    config = load_config(None, [*overrides, "inline=true"])
    config.out = out
    worker = RenderWorker(config, out)
    model, renderer = worker._get_bodies(), worker._get_renderer()  # once per worker, as in a job

    def task(i: int) -> SubjectTask:
        return SubjectTask(kind="body", uri=f"anny://seed/0/body/{i}", subject=f"body-0-{i:06d}", index=i)

    # Process CPU time (Mesa's render threads included): on a shared machine it moves far less than wall time.
    clock = time.process_time
    worker.run(task(bodies))  # warm-up: shader compilation, first texture upload
    ours, plain, build = [], [], []
    for i in range(bodies):
        t = clock()
        row = worker.run(task(i))
        ours.append(clock() - t)
        if row["status"] != "done":
            raise RuntimeError(f"body {i}: {row['reason']}")
        t = clock()
        subject = model.sample(i, config.seed, config.bodies, poses=poses_per_body(config))
        build.append(clock() - t)
        cameras = [
            PinholeCamera(width, height, np.array(s.meta["camera"]["K"]), np.array(s.meta["camera"]["world_to_camera"]))
            for s in sorted(iter_samples(row["shards"], policy="raise"), key=lambda s: s.meta["synth"]["view"])
        ]
        elapsed = 0.0
        for view, camera in enumerate(cameras):
            loaded = renderer.load(subject.poses[subject.pose_of_view(view, views)].geometry)  # not timed
            t = clock()
            renderer.render_plain(camera)
            elapsed += clock() - t
            renderer.unload(loaded)
        plain.append(elapsed)
    worker.close()
    n = bodies * views
    return {
        "size": f"{width}x{height}",
        "views": n,
        "ours_views_s": n / sum(ours),
        "plain_views_s": n / sum(plain),
        "build_ms": 1000 * statistics.median(build),
        "ratio": sum(ours) / sum(plain),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1024x768", "4096x3072"])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--bodies", type=int, default=0, help="bodies case only: this many anny bodies")
    parser.add_argument("--body-size", default="192x256", help="bodies case: render size WxH")
    parser.add_argument("--views", type=int, default=4, help="bodies case: views per body")
    parser.add_argument("--views-per-pose", type=int, default=1, help="bodies case: a new pose every N views")
    args = parser.parse_args()
    if args.bodies:
        w, h = (int(v) for v in args.body_size.split("x"))
        r = bench_bodies(w, h, args.bodies, args.views, args.views_per_pose)
        print(
            f"synth bodies {r['size']} ({r['views']} views, {args.views} per body, a pose every "
            f"{args.views_per_pose}): {r['ours_views_s']:.2f} views/s posed, labelled, rendered and written; "
            f"pyrender plain render of the same meshes {r['plain_views_s']:.2f} views/s; ratio {r['ratio']:.2f}x "
            f"(building one body's poses: {r['build_ms']:.0f} ms)"
        )
        return
    for size in args.sizes:
        w, h = (int(v) for v in size.split("x"))
        r = bench_size(w, h, args.reps if w * h <= 2_000_000 else max(3, args.reps // 2))
        print(
            f"synth {r['size']} ({r['faces']} faces, 2048^2 texture): full set {r['full_ms']:.1f} ms/view, "
            f"pyrender RGB+depth {r['plain_ms']:.1f} ms/view, ratio {r['full_ms'] / r['plain_ms']:.2f}x; "
            f"PNG encoding of the sample {r['encode_ms']:.0f} ms"
        )


if __name__ == "__main__":
    # Run as a script, this file's folder comes first on sys.path and its name (synth.py) would shadow
    # the `synth` package: drop that entry so imports find the package.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
    main()
