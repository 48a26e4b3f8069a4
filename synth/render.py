"""One headless renderer per worker: an antialiased RGB pass and an exact geometry pass.

    renderer = Renderer(width=1024, height=768)
    loaded = renderer.load(geometry)                 # a SubjectGeometry: meshes bound to this GL context
    out = renderer.render(loaded, camera, lights, background, ambient=0.2)
    out.rgb, out.depth, out.normal, out.mask, out.labels
    renderer.repose(loaded, other_pose)             # same subject, new vertices: textures stay on the GPU
    renderer.unload(loaded); renderer.delete()

RGB comes from pyrender (PBR shading, 4x MSAA) and is composited over the background by its coverage.
Depth, normals, mask and part labels come from a second pass with our own GLSL program
(`synth/shaders/geometry.*`) into a float32 framebuffer without MSAA: pyrender's own depth is a 4x-MSAA
sub-sample about 0.4 px off the pixel centre and its colour target is 8-bit (shared/STACK.md).
Both passes use the same projection, so they line up to the pixel.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from synth.camera import GL_TO_CV, PinholeCamera
from synth.geometry import LightSpec, SubjectGeometry
from synth.gl import pyrender


@dataclass
class RenderOutput:
    """rgb (H, W, 3) uint8; depth (H, W) float32 metres, 0 = background; normal (H, W, 3) float32 (read-only) unit
    vectors in OpenCV camera axes, 0 = background; mask (H, W) bool; labels (H, W) uint8 or None."""

    rgb: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None


@dataclass
class LoadedSubject:
    scene_nodes: list = field(default_factory=list)
    vao: int = 0
    vbo: int = 0
    vertex_count: int = 0
    has_labels: bool = False


def _shader_source(name: str) -> str:
    return resources.files("synth").joinpath("shaders", name).read_text(encoding="utf-8")


class Renderer:
    """Owns one EGL context (pyrender's OffscreenRenderer) plus a float32 framebuffer for geometry."""

    def __init__(self, width: int, height: int, znear: float = 0.05, zfar: float = 100.0) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"render size must be positive, got {width}x{height}")
        self.width, self.height = int(width), int(height)
        self.znear, self.zfar = float(znear), float(zfar)
        self._offscreen = pyrender.OffscreenRenderer(self.width, self.height)
        self.scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.zeros(3))
        self._make_current()
        self._program = self._compile_program()
        self._fbo, self._attachments = self._make_framebuffer()

    # ------------------------------------------------------------------------------------------- GL setup

    def _make_current(self) -> None:
        self._offscreen._platform.make_current()

    def _compile_program(self) -> int:
        from OpenGL import GL
        from OpenGL.GL import shaders

        vert = shaders.compileShader(_shader_source("geometry.vert"), GL.GL_VERTEX_SHADER)
        frag = shaders.compileShader(_shader_source("geometry.frag"), GL.GL_FRAGMENT_SHADER)
        # validate=False: validation needs a bound VAO, which core profiles only have at draw time.
        return int(shaders.compileProgram(vert, frag, validate=False))

    def _make_framebuffer(self) -> tuple[int, list[int]]:
        from OpenGL import GL

        fbo = int(GL.glGenFramebuffers(1))
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, fbo)
        buffers = [int(b) for b in np.atleast_1d(GL.glGenRenderbuffers(3))]
        # Normals + depth in float32; the part label in 8 bits (read back as one byte a pixel).
        formats = (GL.GL_RGBA32F, GL.GL_R8, GL.GL_DEPTH_COMPONENT32F)
        points = (GL.GL_COLOR_ATTACHMENT0, GL.GL_COLOR_ATTACHMENT1, GL.GL_DEPTH_ATTACHMENT)
        for buf, fmt, point in zip(buffers, formats, points, strict=True):
            GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, buf)
            GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, fmt, self.width, self.height)
            GL.glFramebufferRenderbuffer(GL.GL_FRAMEBUFFER, point, GL.GL_RENDERBUFFER, buf)
        status = GL.glCheckFramebufferStatus(GL.GL_FRAMEBUFFER)
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, 0)
        if status != GL.GL_FRAMEBUFFER_COMPLETE:
            raise RuntimeError(f"float32 geometry framebuffer is incomplete (status {status:#x})")
        return fbo, buffers

    # ------------------------------------------------------------------------------------------ subjects

    def load(self, geometry: SubjectGeometry) -> LoadedSubject:
        """Upload a subject: pyrender meshes for RGB, one un-indexed vertex buffer for geometry."""
        from OpenGL import GL

        loaded = LoadedSubject(has_labels=geometry.face_labels is not None)
        for mesh in geometry.display:
            loaded.scene_nodes.append(self.scene.add(pyrender.Mesh.from_trimesh(mesh, smooth=True)))
        data = _vertex_data(geometry)
        self._make_current()
        loaded.vao = int(GL.glGenVertexArrays(1))
        loaded.vbo = int(GL.glGenBuffers(1))
        GL.glBindVertexArray(loaded.vao)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, loaded.vbo)
        GL.glBufferData(GL.GL_ARRAY_BUFFER, data.nbytes, data, GL.GL_STATIC_DRAW)
        stride = data.strides[0]
        for location, (offset, size) in enumerate(((0, 3), (3, 3), (6, 1))):
            GL.glEnableVertexAttribArray(location)
            GL.glVertexAttribPointer(location, size, GL.GL_FLOAT, GL.GL_FALSE, stride, ctypes.c_void_p(offset * 4))
        GL.glBindVertexArray(0)
        loaded.vertex_count = len(data)
        return loaded

    def repose(self, loaded: LoadedSubject, geometry: SubjectGeometry) -> None:
        """Swap in another pose of the loaded subject: same faces, UVs, materials and labels, new vertices.

        The new primitives share the old ones' materials, so pyrender keeps their textures on the GPU (uploading
        a texture and building its mipmaps costs more than rendering a small view).
        """
        from OpenGL import GL

        if len(geometry.display) != len(loaded.scene_nodes):
            raise ValueError(f"repose needs {len(loaded.scene_nodes)} display meshes, got {len(geometry.display)}")
        for i, (node, mesh) in enumerate(zip(loaded.scene_nodes, geometry.display, strict=True)):
            (old,) = node.mesh.primitives  # from_trimesh makes one primitive per trimesh
            primitive = pyrender.Primitive(
                positions=np.asarray(mesh.vertices, np.float32),
                normals=np.asarray(mesh.vertex_normals, np.float32),
                texcoord_0=old.texcoord_0,
                color_0=old.color_0,
                indices=old.indices,
                material=old.material,
                mode=old.mode,
            )
            self.scene.remove_node(node)
            loaded.scene_nodes[i] = self.scene.add(pyrender.Mesh(primitives=[primitive]))
        data = _vertex_data(geometry)
        if len(data) != loaded.vertex_count:
            raise ValueError(f"repose needs {loaded.vertex_count // 3} faces, got {len(data) // 3}")
        self._make_current()
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, loaded.vbo)
        GL.glBufferSubData(GL.GL_ARRAY_BUFFER, 0, data.nbytes, data)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, 0)

    def unload(self, loaded: LoadedSubject) -> None:
        from OpenGL import GL

        for node in loaded.scene_nodes:
            self.scene.remove_node(node)
        loaded.scene_nodes.clear()
        self._make_current()
        if loaded.vbo:
            GL.glDeleteBuffers(1, [loaded.vbo])
        if loaded.vao:
            GL.glDeleteVertexArrays(1, [loaded.vao])
        loaded.vao = loaded.vbo = 0
        # pyrender frees the GL buffers of removed meshes itself at its next render (or at delete()).

    # ------------------------------------------------------------------------------------------- drawing

    def render_rgb(self, camera: PinholeCamera, lights: list[LightSpec], background: np.ndarray, ambient: float):
        """Antialiased RGB composited over `background` ((H, W, 3) uint8) by the rendered coverage."""
        nodes = [self._camera_node(camera)]
        for light in lights:
            nodes.append(self.scene.add(_pyrender_light(light), pose=light.pose))
        self.scene.ambient_light = np.full(3, float(ambient))
        try:
            rgba, _ = self._offscreen.render(self.scene, flags=pyrender.RenderFlags.RGBA)
        finally:
            for node in nodes:
                self.scene.remove_node(node)
        # MSAA resolves edge pixels against the transparent black clear colour, so colour is premultiplied:
        # out = rgb + background * (1 - alpha), in integers (rounded) because float32 at 4096x3072 is slow.
        uncovered = 255 - rgba[..., 3:4].astype(np.uint16)
        out = rgba[..., :3] + (background * uncovered + 127) // 255
        return np.minimum(out, 255).astype(np.uint8)

    def render_plain(self, camera: PinholeCamera) -> tuple[np.ndarray, np.ndarray]:
        """pyrender's own colour + depth, as any user would write it (the benchmark's baseline)."""
        node = self._camera_node(camera)
        try:
            return self._offscreen.render(self.scene)
        finally:
            self.scene.remove_node(node)

    def render_geometry(self, loaded: LoadedSubject, camera: PinholeCamera):
        """(depth (H, W) float32, normal (H, W, 3) float32, mask (H, W) bool, labels (H, W) uint8 or None)."""
        from OpenGL import GL

        self._make_current()
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self._fbo)
        GL.glDrawBuffers(2, [GL.GL_COLOR_ATTACHMENT0, GL.GL_COLOR_ATTACHMENT1])
        GL.glViewport(0, 0, self.width, self.height)
        GL.glDisable(GL.GL_MULTISAMPLE)
        GL.glDisable(GL.GL_BLEND)
        GL.glDisable(GL.GL_CULL_FACE)  # open scans: their inside is visible through holes
        GL.glEnable(GL.GL_DEPTH_TEST)
        GL.glDepthFunc(GL.GL_LESS)
        GL.glClearColor(0.0, 0.0, 0.0, 0.0)
        GL.glClear(GL.GL_COLOR_BUFFER_BIT | GL.GL_DEPTH_BUFFER_BIT)
        GL.glUseProgram(self._program)
        view = GL_TO_CV @ camera.world_to_camera  # world -> GL camera
        normal_matrix = np.linalg.inv(view[:3, :3]).T
        projection = camera.gl_projection(self.znear, self.zfar)
        for name, value in (("model_view", view), ("projection", projection)):
            location = GL.glGetUniformLocation(self._program, name)
            GL.glUniformMatrix4fv(location, 1, GL.GL_TRUE, value.astype(np.float32))
        location = GL.glGetUniformLocation(self._program, "normal_matrix")
        GL.glUniformMatrix3fv(location, 1, GL.GL_TRUE, normal_matrix.astype(np.float32))
        GL.glBindVertexArray(loaded.vao)
        GL.glDrawArrays(GL.GL_TRIANGLES, 0, loaded.vertex_count)
        GL.glBindVertexArray(0)
        GL.glUseProgram(0)
        GL.glReadBuffer(GL.GL_COLOR_ATTACHMENT0)
        GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)
        raw = GL.glReadPixels(0, 0, self.width, self.height, GL.GL_RGBA, GL.GL_FLOAT)
        # GL rows start at the bottom, images at the top. The clear colour is 0, so background pixels
        # already hold depth 0 and normal (0, 0, 0); the shader normalised each normal in float32.
        normal_depth = np.frombuffer(raw, dtype=np.float32).reshape(self.height, self.width, 4)[::-1]
        depth = np.ascontiguousarray(normal_depth[..., 3])
        normal = normal_depth[..., :3]  # a read-only view: copying 150 MB at 4096x3072 costs more than it gives
        mask = depth > 0
        labels = None
        if loaded.has_labels:
            GL.glReadBuffer(GL.GL_COLOR_ATTACHMENT1)
            raw = GL.glReadPixels(0, 0, self.width, self.height, GL.GL_RED, GL.GL_UNSIGNED_BYTE)
            labels = np.frombuffer(raw, dtype=np.uint8).reshape(self.height, self.width)[::-1].copy()
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, 0)
        return depth, normal, mask, labels

    def render(
        self,
        loaded: LoadedSubject,
        camera: PinholeCamera,
        lights: list[LightSpec],
        background: np.ndarray,
        ambient: float = 0.2,
    ) -> RenderOutput:
        if (camera.width, camera.height) != (self.width, self.height):
            raise ValueError(f"camera is {camera.width}x{camera.height}, renderer is {self.width}x{self.height}")
        if background.shape != (self.height, self.width, 3):
            raise ValueError(f"background must be ({self.height}, {self.width}, 3), got {background.shape}")
        rgb = self.render_rgb(camera, lights, background, ambient)
        depth, normal, mask, labels = self.render_geometry(loaded, camera)
        return RenderOutput(rgb=rgb, depth=depth, normal=normal, mask=mask, labels=labels)

    def _camera_node(self, camera: PinholeCamera):
        k = camera.K
        cam = pyrender.IntrinsicsCamera(
            fx=k[0, 0], fy=k[1, 1], cx=k[0, 2], cy=k[1, 2], znear=self.znear, zfar=self.zfar
        )
        return self.scene.add(cam, pose=camera.camera_to_world_gl)

    def delete(self) -> None:
        """Free the GL context explicitly: EGL contexts are not reliably freed by garbage collection."""
        if self._offscreen is None:
            return
        from OpenGL import GL

        self._make_current()
        GL.glDeleteFramebuffers(1, [self._fbo])
        GL.glDeleteRenderbuffers(len(self._attachments), self._attachments)
        GL.glDeleteProgram(self._program)
        self._offscreen.delete()
        self._offscreen = None

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc) -> None:
        self.delete()


def _vertex_data(geometry: SubjectGeometry) -> np.ndarray:
    """(3F, 7) float32 un-indexed triangles (position, normal, label), so that a label belongs to a whole
    triangle (no blending across part borders)."""
    faces = np.asarray(geometry.faces, dtype=np.int64)
    labels = geometry.face_labels if geometry.face_labels is not None else np.zeros(len(faces), np.uint8)
    corners = faces.reshape(-1)
    data = np.empty((len(corners), 7), dtype=np.float32)
    data[:, 0:3] = geometry.positions[corners]
    data[:, 3:6] = geometry.normals[corners]
    data[:, 6] = np.repeat(labels.astype(np.float32), 3)
    return data


def _pyrender_light(light: LightSpec):
    color = np.asarray(light.color, dtype=np.float64)
    if light.kind == "directional":
        return pyrender.DirectionalLight(color=color, intensity=light.intensity)
    if light.kind == "point":
        return pyrender.PointLight(color=color, intensity=light.intensity)
    outer = np.deg2rad(light.cone_deg)
    return pyrender.SpotLight(color=color, intensity=light.intensity, innerConeAngle=0.7 * outer, outerConeAngle=outer)
