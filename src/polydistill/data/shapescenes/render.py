"""Rendering: z-buffered ray casting of primitives, shading, the sensor model and exact per-pixel labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .common import FLOOR, IGNORE_INDEX, RGB, WALL, as_floats
from .geometry import EPS, Camera, Primitive, dot


@dataclass(frozen=True)
class Lighting:
    """Scene illumination. `direction` is where the directional light travels (pointing down into the
    scene); light colours are linear intensities; haze/background colours are display-space RGB."""

    direction: tuple[float, float, float] = (0.3, 0.5, -0.8)
    color: RGB = (1.0, 1.0, 1.0)
    ambient: RGB = (0.35, 0.35, 0.35)
    haze: float = 0.0  # fog density per metre of depth: soft fall-off towards haze_color
    haze_color: RGB = (0.5, 0.5, 0.5)
    background: RGB = (0.2, 0.2, 0.2)  # colour of rays that hit nothing
    shadow: float = 0.5  # darkness of the soft blob shadows objects cast on the floor

    def __post_init__(self) -> None:
        for name in ("direction", "color", "ambient", "haze_color", "background"):
            object.__setattr__(self, name, as_floats(getattr(self, name)))
        object.__setattr__(self, "haze", float(self.haze))
        object.__setattr__(self, "shadow", float(self.shadow))


@dataclass(frozen=True)
class Sensor:
    """Camera response: per-channel gain, exposure, and Gaussian noise (std in display units, 0..1)."""

    gain: RGB = (1.0, 1.0, 1.0)
    exposure: float = 1.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "gain", as_floats(self.gain))
        object.__setattr__(self, "exposure", float(self.exposure))
        object.__setattr__(self, "noise_std", float(self.noise_std))


Rect = tuple[slice, slice]


# Corner index pairs joined by an edge of a box whose corners are ordered like _CORNER_SIGNS.
_BOX_EDGES = np.array([(i, i | bit) for i in range(8) for bit in (4, 2, 1) if not i & bit])


def _clip_to_front(cam: np.ndarray) -> np.ndarray:
    """Corners (8, 3, camera frame) of a box clipped to the half-space z >= EPS that rays can reach:
    the corners in front plus the points where edges cross z = EPS (their projection bounds the
    visible part of a box that reaches behind the camera, such as a wall)."""
    front = cam[:, 2] >= EPS
    a, b = cam[_BOX_EDGES[:, 0]], cam[_BOX_EDGES[:, 1]]
    crossing = front[_BOX_EDGES[:, 0]] != front[_BOX_EDGES[:, 1]]
    a, b = a[crossing], b[crossing]
    s = (EPS - a[:, 2:]) / (b[:, 2:] - a[:, 2:])
    return np.concatenate([cam[front], a + s * (b - a)])


def _screen_rect(prim: Primitive, camera: Camera, height: int, width: int) -> Rect | None:
    """Pixel block that can contain the primitive (None when it cannot be seen at all).

    Intersecting only these rays is what makes rendering fast: most objects cover a few percent of
    the image. Unbounded primitives get the whole image.
    """
    corners = prim.corners()
    if corners is None:
        return slice(0, height), slice(0, width)
    cam = camera.to_camera(corners)
    if not np.all(cam[:, 2] >= EPS):
        cam = _clip_to_front(cam)
        if len(cam) == 0:
            return None
    uv, _ = camera.project_camera(cam)
    uv = np.clip(uv, -1.0, max(height, width) + 1.0)  # points near z = EPS project very far out
    u0, v0 = np.floor(uv.min(axis=0)).astype(int)
    u1, v1 = np.floor(uv.max(axis=0)).astype(int) + 1
    u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, width), min(v1, height)
    if u0 >= u1 or v0 >= v1:
        return None
    return slice(v0, v1), slice(u0, u1)


def _cast(objects: Sequence[Primitive], camera: Camera, dirs: np.ndarray):
    """Z-buffer pass: nearest depth, owning primitive index (-1 = none) and normal per pixel."""
    height, width = dirs.shape[:2]
    depth = np.full((height, width), np.inf, np.float32)
    owner = np.full((height, width), -1, np.int16)
    normals = np.zeros((height, width, 3), np.float32)
    rects: list[Rect | None] = []
    for k, prim in enumerate(objects):
        rect = _screen_rect(prim, camera, height, width)
        rects.append(rect)
        if rect is None:
            continue
        t, n = prim.intersect(camera.position, dirs[rect])
        nearer = t < depth[rect]
        np.copyto(depth[rect], t, where=nearer)
        np.copyto(owner[rect], k, where=nearer)
        np.copyto(normals[rect], n, where=nearer[..., None])
    return depth, owner, normals, rects


def _has_box(class_id: int) -> bool:
    """Floor and walls are 'stuff' and get no boxes; every other class is a countable object."""
    return class_id not in (FLOOR, WALL)


def _visible_boxes(objects, owner, rects) -> tuple[np.ndarray, np.ndarray]:
    """Tight [x0, y0, x1, y1) boxes around each object's visible pixels, with class ids."""
    boxes, classes = [], []
    for k, (prim, rect) in enumerate(zip(objects, rects)):
        if rect is None or not _has_box(prim.class_id):
            continue
        mask = owner[rect] == k
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        v0, u0 = rect[0].start, rect[1].start
        boxes.append((u0 + cols[0], v0 + rows[0], u0 + cols[-1] + 1, v0 + rows[-1] + 1))
        classes.append(prim.class_id)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)


def _blob_shadows(
    points: np.ndarray, casters: list[tuple[float, ...]], to_light: np.ndarray, strength: float
):
    """Soft darkening of floor points under and beside objects: a cheap stand-in for cast shadows
    that visually anchors objects to the floor (a strong monocular depth cue)."""
    factor = np.ones(len(points), np.float32)
    lean = -to_light[:2] / max(float(to_light[2]), 0.25)  # horizontal shadow shift per metre of height
    for x, y, radius, height in casters:
        sx, sy = x + 0.5 * height * lean[0], y + 0.5 * height * lean[1]
        spread = radius + 0.25 * height * float(np.hypot(*lean))
        d2 = (points[:, 0] - sx) ** 2 + (points[:, 1] - sy) ** 2
        factor *= 1 - strength * np.exp(-d2 / (spread * spread))
    return factor


def _shadow_casters(objects: Sequence[Primitive]) -> list[tuple[float, ...]]:
    """(x, y, footprint radius, height) of every bounded object."""
    casters = []
    for prim in objects:
        corners = prim.corners()
        if corners is None or not _has_box(prim.class_id):
            continue
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        centre = (lo + hi) / 2
        casters.append((float(centre[0]), float(centre[1]), float(max(hi[:2] - lo[:2]) / 2), float(hi[2])))
    return casters


def _shade(objects, camera, dirs, depth, owner, normals, lighting: Lighting) -> np.ndarray:
    """Linear radiance (H, W, 3): textured albedo x (ambient + Lambertian directional light), then haze.

    Pixels are sorted by owning primitive once, so every texture call works on a contiguous slice and
    the result is un-sorted with one gather (much faster than per-object boolean masks).
    """
    flat_owner = owner.ravel()
    order = np.argsort(flat_owner, kind="stable")  # misses (-1) first, then grouped by primitive
    counts = np.bincount(flat_owner + 1, minlength=len(objects) + 1)
    hit = order[counts[0] :]
    hit_depth = np.take(depth.ravel(), hit)
    points = camera.position + hit_depth[:, None] * np.take(dirs.reshape(-1, 3), hit, axis=0)
    hit_normals = np.take(normals.reshape(-1, 3), hit, axis=0)
    albedo = np.empty_like(points)
    shadow = np.ones(len(hit), np.float32)
    to_light = -np.asarray(lighting.direction, np.float32)
    to_light /= np.linalg.norm(to_light)
    casters = _shadow_casters(objects)
    for prim, stop, count in zip(objects, np.cumsum(counts[1:]), counts[1:]):
        if count == 0:
            continue
        part = slice(stop - count, stop)
        albedo[part] = prim.albedo(points[part], hit_normals[part])
        if prim.class_id == FLOOR and casters and lighting.shadow > 0:
            shadow[part] = _blob_shadows(points[part], casters, to_light, lighting.shadow)
    direct = np.maximum(dot(hit_normals, to_light), 0) * shadow
    lit = albedo * (
        np.asarray(lighting.ambient, np.float32) + direct[:, None] * np.asarray(lighting.color, np.float32)
    )
    if lighting.haze > 0:
        fog = 1 - np.exp(-lighting.haze * hit_depth)
        lit += (np.square(np.asarray(lighting.haze_color, np.float32)) - lit) * fog[:, None]
    background = np.square(np.asarray(lighting.background, np.float32))
    in_order = np.concatenate([np.broadcast_to(background, (counts[0], 3)), lit])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return np.take(in_order, rank, axis=0).reshape(dirs.shape)


def _expose(radiance: np.ndarray, sensor: Sensor, rng: np.random.Generator) -> np.ndarray:
    """Sensor model: gain and exposure, gamma-2 encoding, additive Gaussian noise, 8-bit quantisation."""
    scaled = radiance * (sensor.exposure * np.asarray(sensor.gain, np.float32))
    display = np.sqrt(np.clip(scaled, 0, 1))
    if sensor.noise_std > 0:
        display += rng.standard_normal(display.shape, dtype=np.float32) * np.float32(sensor.noise_std)
    return (np.clip(display, 0, 1) * 255 + 0.5).astype(np.uint8)


def _camera_normals(normals: np.ndarray, owner: np.ndarray, camera: Camera) -> np.ndarray:
    """World normals of the surfaces hit to unit vectors in the camera frame (x right, y down, z forward;
    a surface facing the camera has negative z), zero where no surface was hit. Geometry only: no random
    draws, so asking for normals never changes the other outputs."""
    cam = normals @ camera.rotation  # rotation maps camera to world, so its transpose maps world to camera
    length = np.sqrt(dot(cam, cam))
    hit = owner >= 0
    return np.where(hit[..., None], cam / np.where(hit, length, np.float32(1))[..., None], np.float32(0))


def render(
    objects: Sequence[Primitive],
    camera: Camera,
    height: int,
    width: int,
    *,
    lighting: Lighting = Lighting(),
    sensor: Sensor = Sensor(),
    rng: np.random.Generator | None = None,
) -> dict:
    """Ray-cast `objects` and return image, depth, semseg, normals, boxes, box_classes and intrinsics.

    Normals are unit vectors (H, W, 3) float32 in the camera frame. Pixels that hit nothing get depth 0,
    class IGNORE_INDEX and normal (0, 0, 0). Every primitive whose class is not
    floor or wall gets a box when at least one of its pixels is visible. `rng` drives sensor noise
    (a fixed default keeps calls without one deterministic).
    """
    _, dirs, _ = camera.rays(height, width)
    depth, owner, normals, rects = _cast(objects, camera, dirs)
    radiance = _shade(objects, camera, dirs, depth, owner, normals, lighting)
    image = _expose(radiance, sensor, np.random.default_rng(0) if rng is None else rng)
    class_of = np.array([p.class_id for p in objects] + [IGNORE_INDEX], np.uint8)
    boxes, box_classes = _visible_boxes(objects, owner, rects)
    return {
        "image": image,
        "depth": np.where(owner >= 0, depth, np.float32(0)),
        "semseg": class_of[owner],
        "normals": _camera_normals(normals, owner, camera),
        "boxes": boxes,
        "box_classes": box_classes,
        "intrinsics": camera.intrinsics,
    }
