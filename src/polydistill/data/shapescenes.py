"""ShapeScenes: procedural indoor scenes rendered by vectorised ray casting.

polydistill needs a dense-prediction dataset that exists on every machine without downloads, carries
*exact* labels (metric depth, semantic classes, boxes) and is hard enough that a student has to use
shape and shading rather than colour alone. Each image is a room (floor plus three walls) holding
3-8 objects of five classes whose colour palettes overlap, lit by a directional light plus ambient and
seen by a randomly posed pinhole camera. All rays of an image are cast at once with numpy, one
primitive at a time into a running z-buffer; small objects only test the rays inside their projected
bounding rectangle, which keeps a 128x160 image at a few milliseconds.

Conventions
-----------
* World frame: metres, z up, the floor is the plane z = 0. At yaw 0 the camera looks along +y.
* Camera frame: OpenCV style (x right, y down, z forward). ``Camera.rotation`` maps camera to world
  coordinates; its columns are the camera's right, down and forward axes in the world frame.
* Pixels: pixel (u, v) (column, row) covers the square [u, u+1) x [v, v+1) of image coordinates and
  is sampled at its centre (u + 0.5, v + 0.5). The intrinsics use the same coordinates, so cx = W/2
  is the exact image centre, and resizing an image by s scales fx, fy, cx, cy by s.
* Depth is z-depth along the optical axis (not ray length), in metres; 0 where a ray hits nothing.
* Boxes are [x0, y0, x1, y1] in those pixel-edge coordinates with x0/y0 inclusive and x1/y1 exclusive:
  the object's visible pixels are exactly columns x0..x1-1 and rows y0..y1-1 (integer values).
"""

from __future__ import annotations

import colorsys
import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from polydistill.errors import DataError
from polydistill.registry import did_you_mean

__all__ = [
    "CLASS_NAMES",
    "DOMAINS",
    "IGNORE_INDEX",
    "LABEL_KINDS",
    "Box",
    "Camera",
    "Capsule",
    "Cone",
    "Cylinder",
    "Lighting",
    "Plane",
    "Primitive",
    "Sensor",
    "Sphere",
    "Texture",
    "generate_split",
    "render",
    "render_scene",
]

CLASS_NAMES: tuple[str, ...] = ("floor", "wall", "crate", "barrel", "cone", "ball", "person")
FLOOR, WALL, CRATE, BARREL, CONE, BALL, PERSON = range(len(CLASS_NAMES))
OBJECT_CLASSES: tuple[int, ...] = (CRATE, BARREL, CONE, BALL, PERSON)
DOMAINS: tuple[str, ...] = ("warehouse", "studio", "dusk")
IGNORE_INDEX = 255
LABEL_KINDS: tuple[str, ...] = ("depth", "semseg", "boxes")

# Bump whenever the rendered output changes, so finished splits on disk are regenerated.
GENERATOR_VERSION = 2
COMPLETE_MARKER = ".complete"
_GENERATED_ENTRIES = ("images", "depth", "semseg", "boxes", "meta", "classes.yaml")

_EPS = 1e-4  # rays start this far in front of the camera (in units of z-depth)

RGB = tuple[float, float, float]


def _floats(values) -> tuple[float, ...]:
    """Plain Python floats: numpy float64 scalars would silently promote float32 ray arrays."""
    if isinstance(values, np.ndarray):
        return tuple(values.ravel().tolist())
    return tuple(float(v) for v in values)


# --------------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole camera: camera-to-world rotation, position and intrinsics (see module conventions)."""

    rotation: np.ndarray
    position: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "rotation", np.asarray(self.rotation, np.float32).reshape(3, 3))
        object.__setattr__(self, "position", np.asarray(self.position, np.float32).reshape(3))
        for name in ("fx", "fy", "cx", "cy"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def looking(
        cls,
        position: Sequence[float],
        *,
        yaw: float,
        pitch: float,
        roll: float = 0.0,
        fx: float,
        fy: float | None = None,
        cx: float,
        cy: float,
    ) -> Camera:
        """Camera heading `yaw` radians (0 = +y, positive turns towards +x), tilted down by `pitch` and
        rolled by `roll` about its optical axis."""
        forward = np.array(
            [math.sin(yaw) * math.cos(pitch), math.cos(yaw) * math.cos(pitch), -math.sin(pitch)]
        )
        right = np.array([math.cos(yaw), -math.sin(yaw), 0.0])
        down = np.cross(forward, right)
        c, s = math.cos(roll), math.sin(roll)
        right, down = c * right + s * down, c * down - s * right
        return cls(np.stack([right, down, forward], axis=1), position, fx, fx if fy is None else fy, cx, cy)

    @property
    def intrinsics(self) -> np.ndarray:
        """The 3x3 matrix K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] as float32."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float32)

    @property
    def optical_axis(self) -> np.ndarray:
        """Unit forward direction in the world frame."""
        return self.rotation[:, 2].copy()

    def rays(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ray origins (a read-only broadcast view) and directions (H, W, 3) in the world frame, plus
        the optical axis (3,).

        Directions are scaled so their component along the optical axis is 1: a hit at ray parameter t
        then lies at z-depth t, which is why intersections never need a separate depth conversion.
        """
        u = (np.arange(width, dtype=np.float32) + 0.5 - self.cx) / self.fx
        v = (np.arange(height, dtype=np.float32) + 0.5 - self.cy) / self.fy
        right, down, forward = self.rotation.T
        dirs = u[None, :, None] * right + v[:, None, None] * down + forward
        return np.broadcast_to(self.position, dirs.shape), dirs, forward.copy()

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) in camera coordinates (x right, y down, z forward)."""
        return (np.asarray(points, np.float32) - self.position) @ self.rotation

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates (N, 2) and z-depths (N,) of world points (N, 3)."""
        return self.project_camera(self.to_camera(points))

    def project_camera(self, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates (N, 2) and z-depths (N,) of camera-frame points (N, 3)."""
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * cam[:, 0] / z + self.cx, self.fy * cam[:, 1] / z + self.cy], axis=1)
        return uv, z


# --------------------------------------------------------------------------------------------------
# Procedural textures
# --------------------------------------------------------------------------------------------------


def _hash01(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random value in [0, 1] per integer lattice point: per-tile/plank variation without state."""
    h = ix.astype(np.int32).view(np.uint32) * np.uint32(0x8DA6B343)
    h ^= iy.astype(np.int32).view(np.uint32) * np.uint32(0xD8163841)
    h ^= np.uint32((seed * 0x9E3779B1) & 0xFFFFFFFF)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    return h.astype(np.float32) * np.float32(2.0**-32)


def _value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1]: hashed lattice values blended with a smoothstep (concrete-like grain)."""
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    v00, v10 = _hash01(x0, y0, seed), _hash01(x0 + 1, y0, seed)
    v01, v11 = _hash01(x0, y0 + 1, seed), _hash01(x0 + 1, y0 + 1, seed)
    near = v00 + (v10 - v00) * fx
    far = v01 + (v11 - v01) * fx
    return near + (far - near) * fy


def _face_edge_distance(local: np.ndarray, normal: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Distance from a point on a box face to the nearest edge of that face (for crate frames)."""
    margin = size / 2 - np.abs(local)
    return np.where(np.abs(normal) > 0.5, np.inf, margin).min(axis=1)


def _up(local: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Height above the primitive's base."""
    return local[:, 2] + size[2] / 2


# Each pattern maps local points/normals (N, 3) of a primitive with extents `size` to linear albedo (N, 3).
# Local frame: origin at the centre of the primitive's bounding box, z up, x along a box's first side.


def _plain(local, normal, size, tex):
    return np.broadcast_to(tex.linear[0], local.shape)


def _concrete(local, normal, size, tex):
    x, y = local[:, 0] / tex.scale, local[:, 1] / tex.scale
    grain = 0.65 * _value_noise(x, y, tex.seed) + 0.35 * _value_noise(5.3 * x, 5.3 * y, tex.seed + 1)
    return tex.linear[0] * (0.6 + 0.8 * grain)[:, None]


def _checker(local, normal, size, tex):
    x, y = local[:, 0] / tex.scale, local[:, 1] / tex.scale
    odd = (np.floor(x) + np.floor(y)) % 2 == 1
    speckle = 0.92 + 0.16 * _value_noise(7 * x, 7 * y, tex.seed)
    return np.where(odd[:, None], tex.linear[1], tex.linear[0]) * speckle[:, None]


def _tiles(local, normal, size, tex):
    x, y = local[:, 0] / tex.scale, local[:, 1] / tex.scale
    ix, iy = np.floor(x), np.floor(y)
    grout = (x - ix < 0.05) | (y - iy < 0.05)
    tile = tex.linear[0] * (0.8 + 0.4 * _hash01(ix, iy, tex.seed))[:, None]
    return np.where(grout[:, None], tex.linear[1], tile)


def _panels(local, normal, size, tex):
    along = local[:, 0 if size[0] >= size[1] else 1] / tex.scale  # along the wall's long side
    panel = np.floor(along)
    shade = 0.88 + 0.24 * _hash01(panel, np.zeros_like(panel), tex.seed)
    trim = ((along - panel) * tex.scale < 0.04) | (_up(local, size) < 0.3)
    return np.where(trim[:, None], tex.linear[1], tex.linear[0] * shade[:, None])


def _wood(local, normal, size, tex):
    side = np.abs(normal[:, 2]) < 0.5
    across = np.where(side, _up(local, size), local[:, 1]) / tex.scale
    along = np.where(side, local[:, 0] + local[:, 1], local[:, 0])
    plank = np.floor(across)
    tint = 0.75 + 0.4 * _hash01(plank, np.zeros_like(plank), tex.seed)
    grain = 1 + 0.12 * np.sin(31 * along + 2.3 * plank)
    gap = np.where(across - plank < 0.06, np.float32(0.5), np.float32(1))
    boards = tex.linear[0] * (tint * grain * gap)[:, None]
    frame = _face_edge_distance(local, normal, size) < 0.07
    return np.where(frame[:, None], tex.linear[1], boards)


def _painted(local, normal, size, tex):
    grime = 0.9 + 0.2 * _value_noise(4 * (local[:, 0] + local[:, 1]), 4 * local[:, 2], tex.seed)
    frame = _face_edge_distance(local, normal, size) < 0.05
    return np.where(frame[:, None], tex.linear[1], tex.linear[0] * grime[:, None])


def _bands(local, normal, size, tex):
    up, height = _up(local, size), size[2]
    rib = (np.abs(up - height / 3) < 0.03) | (np.abs(up - 2 * height / 3) < 0.03) | (up > height - 0.03)
    rim = np.hypot(local[:, 0], local[:, 1]) > size[0] / 2 - 0.04
    lid = normal[:, 2] > 0.5
    dark = np.where(lid, rim, rib)
    body = np.where(lid[:, None], tex.linear[0] * 0.7, tex.linear[0])
    return np.where(dark[:, None], tex.linear[1], body)


def _cone_band(local, normal, size, tex):
    rel = _up(local, size) / size[2]
    band = (rel > 0.42) & (rel < 0.62)
    return np.where(band[:, None], tex.linear[1], tex.linear[0])


def _stripes(local, normal, size, tex):
    stripe = np.sin(tex.scale * np.arctan2(local[:, 1], local[:, 0])) > 0
    return np.where(stripe[:, None], tex.linear[1], tex.linear[0])


def _person(local, normal, size, tex):
    up = _up(local, size)
    clothes = np.where((up < 0.47 * size[2])[:, None], tex.linear[0], tex.linear[1])
    return np.where((up > size[2] - 0.27)[:, None], tex.linear[2], clothes)


_Pattern = Callable[[np.ndarray, np.ndarray, np.ndarray, "Texture"], np.ndarray]

# kind -> (pattern, number of colours it uses)
_PATTERNS: dict[str, tuple[_Pattern, int]] = {
    "plain": (_plain, 1),  # colour
    "concrete": (_concrete, 1),  # colour; scale = grain size (m)
    "checker": (_checker, 2),  # two colours; scale = square size (m)
    "tiles": (_tiles, 2),  # tile, grout; scale = tile size (m)
    "panels": (_panels, 2),  # panel, seams/skirting; scale = panel width (m)
    "wood": (_wood, 2),  # boards, frame; scale = plank width (m)
    "painted": (_painted, 2),  # paint, frame
    "bands": (_bands, 2),  # metal, ribs/rim
    "cone": (_cone_band, 2),  # body, band
    "stripes": (_stripes, 2),  # two colours; scale = number of stripe pairs around the vertical axis
    "person": (_person, 3),  # legs, torso, head
}


@dataclass(frozen=True)
class Texture:
    """A procedural surface pattern. `colors` are display-space RGB in [0, 1]; the pattern (`kind`, see
    ``_PATTERNS``) decides what each colour is for, `scale` is its main length in metres."""

    kind: str = "plain"
    colors: tuple[RGB, ...] = ((0.6, 0.6, 0.6),)
    scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _PATTERNS:
            raise ValueError(f"unknown texture kind '{self.kind}'{did_you_mean(self.kind, _PATTERNS)}")
        needed = _PATTERNS[self.kind][1]
        if len(self.colors) < needed:
            raise ValueError(f"texture '{self.kind}' needs {needed} colours, got {len(self.colors)}")
        object.__setattr__(self, "colors", tuple(_floats(c) for c in self.colors))
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def linear(self) -> np.ndarray:
        """Colours as linear reflectance (display values squared, i.e. gamma 2)."""
        return np.square(np.asarray(self.colors, np.float32))

    def albedo(self, local: np.ndarray, normals: np.ndarray, size: np.ndarray) -> np.ndarray:
        """Linear albedo (N, 3) at points/normals given in the owning primitive's local frame."""
        return _PATTERNS[self.kind][0](local, normals, size, self)


# --------------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------------


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the last axis with broadcasting (faster than sum() for 3-vectors)."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _points(origins: np.ndarray, dirs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Hit points o + t d, with missed rays (t = inf) placed at the origin to keep arithmetic finite."""
    return origins + np.where(np.isfinite(t), t, 0)[..., None] * dirs


def _rotate_z(v: np.ndarray, angle: float) -> np.ndarray:
    """Rotate vectors (..., 3) about the world z axis."""
    if angle == 0.0:
        return v
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1], v[..., 2]], axis=-1)


def _sphere_t(origins, dirs, center: np.ndarray, radius: float) -> np.ndarray:
    """First ray parameter where rays enter a sphere (inf where missed)."""
    oc = origins - center
    a, b, c = _dot(dirs, dirs), _dot(oc, dirs), _dot(oc, oc) - radius * radius
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _side_t(origins, dirs, x: float, y: float, radius: float, z0: float, z1: float) -> np.ndarray:
    """First entry into the side of the vertical cylinder around (x, y) between heights z0 and z1."""
    ox, oy = origins[..., 0] - x, origins[..., 1] - y
    dx, dy = dirs[..., 0], dirs[..., 1]
    a, b, c = dx * dx + dy * dy, ox * dx + oy * dy, ox * ox + oy * oy - radius * radius
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / a
        z = origins[..., 2] + t * dirs[..., 2]
        hit = (disc >= 0) & (t > _EPS) & (z >= z0) & (z <= z1)
    return np.where(hit, t, np.inf)


def _disk_t(origins, dirs, x: float, y: float, radius: float, z: float) -> np.ndarray:
    """Hit with the horizontal disk of `radius` around (x, y) at height z."""
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (z - origins[..., 2]) / dirs[..., 2]
        px = origins[..., 0] + t * dirs[..., 0] - x
        py = origins[..., 1] + t * dirs[..., 1] - y
        hit = (t > _EPS) & (px * px + py * py <= radius * radius)
    return np.where(hit, t, np.inf)


_CORNER_SIGNS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float32)


def _box_corners(center: Sequence[float], size: Sequence[float], yaw: float = 0.0) -> np.ndarray:
    """World corners (8, 3) of a box rotated by yaw about its vertical axis."""
    return _rotate_z(_CORNER_SIGNS * np.asarray(size, np.float32) / 2, yaw) + np.asarray(center, np.float32)


@dataclass(frozen=True, kw_only=True)
class Primitive:
    """A renderable surface with a semantic class id and a procedural texture."""

    class_id: int
    texture: Texture = Texture()

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First hit of each ray: ray parameter t (..., inf where missed) and unit normal (..., 3).

        `origins` broadcasts against `dirs` (..., 3); dirs need not be unit length, t is in their units.
        """
        raise NotImplementedError

    def corners(self) -> np.ndarray | None:
        """World corners (8, 3) of a bounding box, None for unbounded surfaces."""
        raise NotImplementedError

    def frame(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Local texture frame: centre (3,), extents (3,), yaw about the vertical axis."""
        raise NotImplementedError

    def albedo(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """Linear albedo (N, 3) at world hit points/normals (N, 3)."""
        center, size, yaw = self.frame()
        local = _rotate_z(points - center, -yaw)
        return self.texture.albedo(local, _rotate_z(normals, -yaw), size)


@dataclass(frozen=True, kw_only=True)
class Plane(Primitive):
    """The infinite plane normal . p = offset (two-sided: its normal is flipped to face each ray)."""

    normal: tuple[float, float, float]
    offset: float

    def __post_init__(self) -> None:
        n = np.asarray(self.normal, np.float64)
        object.__setattr__(self, "normal", _floats(n / np.linalg.norm(n)))
        object.__setattr__(self, "offset", float(self.offset))

    def intersect(self, origins, dirs):
        n = np.asarray(self.normal, np.float32)
        facing = _dot(dirs, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.offset - _dot(origins, n)) / facing
        t = np.where(t > _EPS, t, np.inf)
        normals = np.where(facing > 0, np.float32(-1), np.float32(1))[..., None] * n
        return t, normals

    def corners(self):
        return None

    def frame(self):
        return np.zeros(3, np.float32), np.full(3, np.inf, np.float32), 0.0


@dataclass(frozen=True, kw_only=True)
class Box(Primitive):
    """A box with extents `size` centred at `center`, rotated by `yaw` radians about the vertical."""

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "center", _floats(self.center))
        object.__setattr__(self, "size", _floats(self.size))
        object.__setattr__(self, "yaw", float(self.yaw))

    def intersect(self, origins, dirs):
        local_o = _rotate_z(origins - np.asarray(self.center, np.float32), -self.yaw)
        local_d = _rotate_z(dirs, -self.yaw)
        near, far = [], []
        with np.errstate(divide="ignore", invalid="ignore"):
            for axis, half in enumerate(np.asarray(self.size, np.float32) / 2):
                inv = 1 / local_d[..., axis]
                t1, t2 = (-half - local_o[..., axis]) * inv, (half - local_o[..., axis]) * inv
                near.append(np.minimum(t1, t2))
                far.append(np.maximum(t1, t2))
            t_in = np.maximum(np.maximum(near[0], near[1]), near[2])
            t_out = np.minimum(np.minimum(far[0], far[1]), far[2])
            hit = (t_in <= t_out) & (t_in > _EPS)
        t = np.where(hit, t_in, np.inf)
        # The face entered last is the one hit; its normal points against the ray along that axis
        # (on an edge, where two slabs are entered at once, the first axis wins to keep it unit length).
        on_x = near[0] == t_in
        on_y = ~on_x & (near[1] == t_in)
        on_z = ~on_x & ~on_y
        local_n = np.stack(
            [np.where(on, -np.sign(local_d[..., a]), 0) for a, on in enumerate((on_x, on_y, on_z))], axis=-1
        )
        return t, _rotate_z(local_n, self.yaw)

    def corners(self):
        return _box_corners(self.center, self.size, self.yaw)

    def frame(self):
        return np.asarray(self.center, np.float32), np.asarray(self.size, np.float32), self.yaw


@dataclass(frozen=True, kw_only=True)
class _Upright(Primitive):
    """Shared geometry of vertical solids standing on `base` = (x, y, z of the bottom)."""

    base: tuple[float, float, float]
    radius: float
    height: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", _floats(self.base))
        object.__setattr__(self, "radius", float(self.radius))
        object.__setattr__(self, "height", float(self.height))

    def _extent(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        x, y, z = self.base
        return (x, y, z + self.height / 2), (2 * self.radius, 2 * self.radius, self.height)

    def corners(self):
        return _box_corners(*self._extent())

    def frame(self):
        center, size = self._extent()
        return np.asarray(center, np.float32), np.asarray(size, np.float32), 0.0


@dataclass(frozen=True, kw_only=True)
class Cylinder(_Upright):
    """A closed vertical cylinder (barrels)."""

    def intersect(self, origins, dirs):
        x, y, z0 = self.base
        z1, r = z0 + self.height, self.radius
        t_side = _side_t(origins, dirs, x, y, r, z0, z1)
        t_top, t_bottom = _disk_t(origins, dirs, x, y, r, z1), _disk_t(origins, dirs, x, y, r, z0)
        t = np.minimum(t_side, np.minimum(t_top, t_bottom))
        p = _points(origins, dirs, t)
        side = np.stack([(p[..., 0] - x) / r, (p[..., 1] - y) / r, np.zeros_like(t)], axis=-1)
        cap_z = np.where(t_top <= t_bottom, np.float32(1), np.float32(-1))
        cap = np.stack([np.zeros_like(t), np.zeros_like(t), cap_z], axis=-1)
        return t, np.where((t_side <= t)[..., None], side, cap)


@dataclass(frozen=True, kw_only=True)
class Cone(_Upright):
    """A vertical cone with its apex `height` above the base disk (traffic cones)."""

    def intersect(self, origins, dirs):
        x, y, z0 = self.base
        apex, k2 = z0 + self.height, (self.radius / self.height) ** 2
        ox, oy, w = origins[..., 0] - x, origins[..., 1] - y, apex - origins[..., 2]
        dx, dy, dz = dirs[..., 0], dirs[..., 1], dirs[..., 2]
        # |p_xy|^2 = k^2 (apex - p_z)^2 along the ray: a t^2 + 2 b t + c = 0 (double cone; keep z0..apex).
        a = dx * dx + dy * dy - k2 * dz * dz
        b = ox * dx + oy * dy + k2 * w * dz
        c = ox * ox + oy * oy - k2 * w * w
        with np.errstate(invalid="ignore", divide="ignore"):
            root = np.sqrt(b * b - a * c)
            r1, r2 = (-b - root) / a, (-b + root) / a
            first, second = np.minimum(r1, r2), np.maximum(r1, r2)

            def on_cone(t):
                z = origins[..., 2] + t * dz
                return (t > _EPS) & (z >= z0) & (z <= apex)

            t_side = np.where(on_cone(first), first, np.where(on_cone(second), second, np.inf))
        t_base = _disk_t(origins, dirs, x, y, self.radius, z0)
        t = np.minimum(t_side, t_base)
        p = _points(origins, dirs, t)
        side = np.stack([p[..., 0] - x, p[..., 1] - y, k2 * (apex - p[..., 2])], axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            side /= np.sqrt(_dot(side, side))[..., None]
        down = np.broadcast_to(np.array([0, 0, -1], np.float32), side.shape)
        return t, np.where((t_side <= t_base)[..., None], side, down)


@dataclass(frozen=True, kw_only=True)
class Capsule(_Upright):
    """A vertical capsule (cylinder with hemispherical ends), `height` including both ends (people)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.height < 2 * self.radius:
            raise ValueError(f"capsule height {self.height} is less than its diameter {2 * self.radius}")

    def intersect(self, origins, dirs):
        x, y, z0 = self.base
        r = self.radius
        lo, hi = z0 + r, z0 + self.height - r
        # The capsule is the union of a cylinder and two spheres, so its first hit is their earliest.
        t = np.minimum(
            _side_t(origins, dirs, x, y, r, lo, hi),
            np.minimum(
                _sphere_t(origins, dirs, np.array([x, y, lo], np.float32), r),
                _sphere_t(origins, dirs, np.array([x, y, hi], np.float32), r),
            ),
        )
        p = _points(origins, dirs, t)
        axis_point = np.stack([np.full_like(t, x), np.full_like(t, y), np.clip(p[..., 2], lo, hi)], axis=-1)
        return t, (p - axis_point) / r


@dataclass(frozen=True, kw_only=True)
class Sphere(Primitive):
    """A sphere (balls)."""

    center: tuple[float, float, float]
    radius: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "center", _floats(self.center))
        object.__setattr__(self, "radius", float(self.radius))

    def intersect(self, origins, dirs):
        center = np.asarray(self.center, np.float32)
        t = _sphere_t(origins, dirs, center, self.radius)
        return t, (_points(origins, dirs, t) - center) / self.radius

    def corners(self):
        return _box_corners(self.center, (2 * self.radius,) * 3)

    def frame(self):
        return np.asarray(self.center, np.float32), np.full(3, 2 * self.radius, np.float32), 0.0


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


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
            object.__setattr__(self, name, _floats(getattr(self, name)))
        object.__setattr__(self, "haze", float(self.haze))
        object.__setattr__(self, "shadow", float(self.shadow))


@dataclass(frozen=True)
class Sensor:
    """Camera response: per-channel gain, exposure, and Gaussian noise (std in display units, 0..1)."""

    gain: RGB = (1.0, 1.0, 1.0)
    exposure: float = 1.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "gain", _floats(self.gain))
        object.__setattr__(self, "exposure", float(self.exposure))
        object.__setattr__(self, "noise_std", float(self.noise_std))


Rect = tuple[slice, slice]


# Corner index pairs joined by an edge of a box whose corners are ordered like _CORNER_SIGNS.
_BOX_EDGES = np.array([(i, i | bit) for i in range(8) for bit in (4, 2, 1) if not i & bit])


def _clip_to_front(cam: np.ndarray) -> np.ndarray:
    """Corners (8, 3, camera frame) of a box clipped to the half-space z >= _EPS that rays can reach:
    the corners in front plus the points where edges cross z = _EPS (their projection bounds the
    visible part of a box that reaches behind the camera, such as a wall)."""
    front = cam[:, 2] >= _EPS
    a, b = cam[_BOX_EDGES[:, 0]], cam[_BOX_EDGES[:, 1]]
    crossing = front[_BOX_EDGES[:, 0]] != front[_BOX_EDGES[:, 1]]
    a, b = a[crossing], b[crossing]
    s = (_EPS - a[:, 2:]) / (b[:, 2:] - a[:, 2:])
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
    if not np.all(cam[:, 2] >= _EPS):
        cam = _clip_to_front(cam)
        if len(cam) == 0:
            return None
    uv, _ = camera.project_camera(cam)
    uv = np.clip(uv, -1.0, max(height, width) + 1.0)  # points near z = _EPS project very far out
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
    direct = np.maximum(_dot(hit_normals, to_light), 0) * shadow
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
    """Ray-cast `objects` and return image, depth, semseg, boxes, box_classes and intrinsics.

    Pixels that hit nothing get depth 0 and class IGNORE_INDEX. Every primitive whose class is not
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
        "boxes": boxes,
        "box_classes": box_classes,
        "intrinsics": camera.intrinsics,
    }


# --------------------------------------------------------------------------------------------------
# Random scenes
# --------------------------------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float) -> RGB:
    return _floats(np.clip(np.asarray(rgb) + rng.uniform(-amount, amount, 3), 0, 1))


def _scaled(rgb: Sequence[float], factor: float) -> RGB:
    return _floats(np.clip(np.asarray(rgb) * factor, 0, 1))


def _pick(rng: np.random.Generator, palette: Sequence[RGB], jitter: float = 0.04) -> RGB:
    return _jitter(rng, palette[rng.integers(len(palette))], jitter)


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


def _sun(rng: np.random.Generator, min_elevation: float, max_elevation: float) -> tuple[float, float, float]:
    """Direction of travel of a light at a random azimuth and an elevation in degrees."""
    azimuth = rng.uniform(0, 2 * math.pi)
    elevation = math.radians(rng.uniform(min_elevation, max_elevation))
    return (
        -math.cos(elevation) * math.cos(azimuth),
        -math.cos(elevation) * math.sin(azimuth),
        -math.sin(elevation),
    )


# Object palettes (display RGB) are shared by all domains and overlap across classes on purpose
# (orange cones, barrels, crates, shirts and balls; brown crates and barrels; grey everything).
_WOODS = ((0.56, 0.39, 0.21), (0.66, 0.50, 0.30), (0.45, 0.30, 0.17), (0.72, 0.58, 0.38))
_PAINTS = ((0.50, 0.50, 0.50), (0.25, 0.45, 0.27), (0.20, 0.30, 0.62), (0.90, 0.50, 0.12), (0.75, 0.15, 0.12))
_METALS = (
    (0.15, 0.30, 0.70), (0.72, 0.14, 0.12), (0.52, 0.53, 0.56), (0.20, 0.50, 0.26),
    (0.45, 0.30, 0.18), (0.92, 0.50, 0.10), (0.85, 0.72, 0.10),
)  # fmt: skip
_CONE_USUAL = ((0.97, 0.45, 0.05), (0.97, 0.80, 0.10))
_CONE_RARE = (
    (0.75, 0.15, 0.12),
    (0.20, 0.35, 0.75),
    (0.25, 0.60, 0.30),
    (0.55, 0.30, 0.17),
    (0.50, 0.50, 0.52),
)
_SHIRTS = (
    (0.97, 0.55, 0.08), (0.85, 0.90, 0.15), (0.20, 0.30, 0.60), (0.50, 0.50, 0.52),
    (0.75, 0.15, 0.15), (0.90, 0.90, 0.88), (0.45, 0.32, 0.20), (0.20, 0.45, 0.25),
)  # fmt: skip
_PANTS = ((0.12, 0.14, 0.25), (0.10, 0.10, 0.10), (0.35, 0.35, 0.37), (0.40, 0.30, 0.20), (0.25, 0.30, 0.45))
_HEADS = ((0.85, 0.66, 0.52), (0.60, 0.42, 0.30), (0.35, 0.24, 0.17), (0.95, 0.80, 0.10), (0.95, 0.95, 0.93))
_WHITE = (0.95, 0.95, 0.95)


def _crate(rng: np.random.Generator, x: float, y: float) -> Primitive:
    size = (*rng.uniform(0.45, 1.2, 2), rng.uniform(0.4, 1.1))
    if rng.random() < 0.7:
        wood = _pick(rng, _WOODS)
        texture = Texture("wood", (wood, _scaled(wood, 0.6)), scale=rng.uniform(0.1, 0.22), seed=_seed(rng))
    else:
        paint = _pick(rng, _PAINTS)
        texture = Texture("painted", (paint, _scaled(paint, 0.65)), seed=_seed(rng))
    yaw = rng.uniform(0, math.pi / 2)
    return Box(center=(x, y, size[2] / 2), size=size, yaw=yaw, class_id=CRATE, texture=texture)


def _barrel(rng: np.random.Generator, x: float, y: float) -> Primitive:
    metal = _pick(rng, _METALS)
    texture = Texture("bands", (metal, _scaled(metal, 0.55)), seed=_seed(rng))
    radius, height = rng.uniform(0.25, 0.42), rng.uniform(0.8, 1.3)
    return Cylinder(base=(x, y, 0), radius=radius, height=height, class_id=BARREL, texture=texture)


def _cone(rng: np.random.Generator, x: float, y: float) -> Primitive:
    body = _pick(rng, _CONE_USUAL if rng.random() < 0.8 else _CONE_RARE)
    band = _WHITE if rng.random() < 0.85 else body
    radius, height = rng.uniform(0.22, 0.42), rng.uniform(0.6, 1.2)
    return Cone(
        base=(x, y, 0), radius=radius, height=height, class_id=CONE, texture=Texture("cone", (body, band))
    )


def _ball(rng: np.random.Generator, x: float, y: float) -> Primitive:
    colour = _floats(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.35, 1), rng.uniform(0.4, 1)))
    if rng.random() < 0.4:
        second = _WHITE if rng.random() < 0.5 else _floats(colorsys.hsv_to_rgb(rng.random(), 0.8, 0.8))
        texture = Texture("stripes", (colour, second), scale=rng.integers(2, 5))
    else:
        texture = Texture("plain", (colour,))
    radius = rng.uniform(0.2, 0.6)
    return Sphere(center=(x, y, radius), radius=radius, class_id=BALL, texture=texture)


def _person(rng: np.random.Generator, x: float, y: float) -> Primitive:
    texture = Texture("person", (_pick(rng, _PANTS), _pick(rng, _SHIRTS), _pick(rng, _HEADS)))
    radius, height = rng.uniform(0.2, 0.28), rng.uniform(1.5, 1.85)
    return Capsule(base=(x, y, 0), radius=radius, height=height, class_id=PERSON, texture=texture)


_MAKERS: dict[int, Callable[[np.random.Generator, float, float], Primitive]] = {
    CRATE: _crate, BARREL: _barrel, CONE: _cone, BALL: _ball, PERSON: _person,
}  # fmt: skip


@dataclass(frozen=True)
class _Room:
    """Walls at x = -left, x = +right and y = +back (the camera stands at the origin)."""

    left: float
    right: float
    back: float
    height: float


@dataclass(frozen=True)
class _Shot:
    """The geometric part of a scene: independent of the domain, so domains restyle the same layout."""

    camera: Camera
    room: _Room
    objects: tuple[Primitive, ...]


def _sample_camera(rng: np.random.Generator, height: int, width: int) -> tuple[Camera, float, float]:
    """Random pose and intrinsics; also returns yaw and horizontal field of view for object placement.

    The ranges are those of one mounted camera type (a robot or a fixed factory camera): wide enough
    to vary every image, narrow enough that metric depth stays learnable from one image (a camera
    height anywhere in 1-2 m would make the floor's scale ambiguous by a factor of two).
    """
    hfov = math.radians(rng.uniform(55, 70))
    fx = width / 2 / math.tan(hfov / 2)
    yaw = rng.uniform(-0.5, 0.5)
    camera = Camera.looking(
        (0.0, 0.0, rng.uniform(1.3, 1.7)),
        yaw=yaw,
        pitch=math.radians(rng.uniform(4, 15)),
        roll=math.radians(rng.uniform(-4, 4)),
        fx=fx,
        fy=fx * rng.uniform(0.98, 1.02),
        cx=width * (0.5 + rng.uniform(-0.02, 0.02)),
        cy=height * (0.5 + rng.uniform(-0.02, 0.02)),
    )
    return camera, yaw, hfov


def _footprint(prim: Primitive) -> tuple[float, float, float]:
    """(x, y, radius) of a circle around the primitive's floor footprint."""
    corners = prim.corners()
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    centre = (lo + hi) / 2
    return float(centre[0]), float(centre[1]), float(np.hypot(*(hi[:2] - lo[:2])) / 2)


def _fits(spot: tuple[float, float, float], room: _Room, taken: list[tuple[float, float, float]]) -> bool:
    """Inside the room and not overlapping an already placed object."""
    x, y, r = spot
    if x - r < -room.left or x + r > room.right or y + r > room.back:
        return False
    return all(math.hypot(x - ox, y - oy) > r + orad + 0.05 for ox, oy, orad in taken)


def _place_objects(rng: np.random.Generator, room: _Room, yaw: float, hfov: float) -> tuple[Primitive, ...]:
    """3-8 non-overlapping objects on the floor, 2-10 m away and inside the horizontal field of view.

    The first five are distinct classes (in random order) so every class shows up in most images;
    distances lean towards the camera so objects stay large enough to segment at low resolution.
    """
    count = int(rng.integers(3, 9))
    classes = [*rng.permutation(OBJECT_CLASSES)[:count], *rng.choice(OBJECT_CLASSES, max(0, count - 5))]
    placed: list[Primitive] = []
    taken: list[tuple[float, float, float]] = []
    for class_id in classes:
        for _ in range(20):
            distance = 2 + 8 * rng.random() ** 1.5
            heading = yaw + rng.uniform(-0.9, 0.9) * hfov / 2
            prim = _MAKERS[int(class_id)](rng, distance * math.sin(heading), distance * math.cos(heading))
            spot = _footprint(prim)
            if _fits(spot, room, taken):
                placed.append(prim)
                taken.append(spot)
                break
    return tuple(placed)


def _sample_shot(seed: int, index: int, height: int, width: int) -> _Shot:
    rng = np.random.default_rng([seed, index])
    camera, yaw, hfov = _sample_camera(rng, height, width)
    room = _Room(
        left=rng.uniform(3.5, 9),
        right=rng.uniform(3.5, 9),
        back=rng.uniform(11, 16),
        height=rng.uniform(4, 7),
    )
    return _Shot(camera, room, _place_objects(rng, room, yaw, hfov))


def _walls(room: _Room, textures: Sequence[Texture]) -> list[Primitive]:
    """Left, right and back walls as thin axis-aligned boxes (no rotation keeps them cheap to cast)."""
    thick, behind = 0.2, 3.0  # side walls start behind the camera so no view ray slips past them
    length, mid_y = room.back + behind + thick, (room.back - behind) / 2
    specs = (
        ((-room.left - thick / 2, mid_y), (thick, length)),
        ((room.right + thick / 2, mid_y), (thick, length)),
        (((room.right - room.left) / 2, room.back + thick / 2), (room.left + room.right + 2 * thick, thick)),
    )
    return [
        Box(center=(x, y, room.height / 2), size=(*extent, room.height), class_id=WALL, texture=tex)
        for ((x, y), extent), tex in zip(specs, textures)
    ]


# --------------------------------------------------------------------------------------------------
# Domains: each restyles surfaces, light and sensor; classes and geometry stay the same.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Look:
    floor: Texture
    walls: tuple[Texture, ...]
    lighting: Lighting
    sensor: Sensor


def _warehouse(rng: np.random.Generator) -> _Look:
    """Warm light, grey concrete floor, beige panelled walls, mild noise."""
    concrete = _jitter(rng, (0.60, 0.58, 0.55), 0.05)
    beige = _jitter(rng, (0.80, 0.73, 0.60), 0.06)
    return _Look(
        floor=Texture("concrete", (concrete,), scale=rng.uniform(0.5, 1.5), seed=_seed(rng)),
        walls=tuple(
            Texture(
                "panels", (_jitter(rng, beige, 0.03), _scaled(beige, 0.55)), rng.uniform(1, 2.5), _seed(rng)
            )
            for _ in range(3)
        ),
        lighting=Lighting(
            direction=_sun(rng, 35, 70),
            color=_scaled((1.0, 0.86, 0.68), rng.uniform(0.8, 1.1)),
            ambient=_scaled((0.36, 0.31, 0.26), rng.uniform(0.8, 1.2)),
            haze=rng.uniform(0, 0.015),
            haze_color=(0.55, 0.50, 0.42),
            background=(0.25, 0.22, 0.20),
            shadow=0.55,
        ),
        sensor=Sensor(
            gain=_jitter(rng, (1, 1, 1), 0.05),
            exposure=rng.uniform(0.9, 1.25),
            noise_std=rng.uniform(0.006, 0.018),
        ),
    )


_CHECKER_PAIRS = (
    ((0.92, 0.92, 0.90), (0.55, 0.56, 0.58)),
    ((0.90, 0.90, 0.92), (0.12, 0.12, 0.14)),
    ((0.75, 0.85, 0.95), (0.95, 0.95, 0.95)),
    ((0.90, 0.80, 0.60), (0.60, 0.45, 0.30)),
)


def _studio(rng: np.random.Generator) -> _Look:
    """Cool bright light, checker floor, pastel coloured walls, little noise."""
    light, dark = _CHECKER_PAIRS[rng.integers(len(_CHECKER_PAIRS))]
    hue = rng.random()
    walls = []
    for _ in range(3):
        colour = _floats(
            colorsys.hsv_to_rgb(
                (hue + rng.uniform(-0.08, 0.08)) % 1, rng.uniform(0.3, 0.65), rng.uniform(0.7, 0.9)
            )
        )
        walls.append(Texture("panels", (colour, _scaled(colour, 0.8)), rng.uniform(2, 4), _seed(rng)))
    return _Look(
        floor=Texture("checker", (light, dark), scale=rng.uniform(0.4, 1.0), seed=_seed(rng)),
        walls=tuple(walls),
        lighting=Lighting(
            direction=_sun(rng, 45, 80),
            color=_scaled((0.92, 0.97, 1.0), rng.uniform(0.9, 1.0)),
            ambient=_scaled((0.45, 0.48, 0.54), rng.uniform(0.9, 1.15)),
            background=(0.92, 0.93, 0.96),
            shadow=0.35,
        ),
        sensor=Sensor(
            gain=_jitter(rng, (1, 1, 1), 0.03),
            exposure=rng.uniform(0.9, 1.1),
            noise_std=rng.uniform(0.002, 0.008),
        ),
    )


def _dusk(rng: np.random.Generator) -> _Look:
    """Dim low orange light, bluish ambient and haze, dark tiles, strong sensor noise."""
    return _Look(
        floor=Texture(
            "tiles",
            (_jitter(rng, (0.42, 0.42, 0.45), 0.05), (0.18, 0.18, 0.20)),
            rng.uniform(0.4, 0.9),
            _seed(rng),
        ),
        walls=tuple(
            Texture(
                "panels",
                (_jitter(rng, (0.40, 0.44, 0.52), 0.05), (0.20, 0.21, 0.25)),
                rng.uniform(1, 3),
                _seed(rng),
            )
            for _ in range(3)
        ),
        lighting=Lighting(
            direction=_sun(rng, 8, 25),
            color=_scaled((1.0, 0.6, 0.38), rng.uniform(0.6, 0.9)),
            ambient=_scaled((0.12, 0.14, 0.22), rng.uniform(0.8, 1.2)),
            haze=rng.uniform(0.02, 0.06),
            haze_color=(0.16, 0.18, 0.28),
            background=(0.08, 0.09, 0.16),
            shadow=0.6,
        ),
        sensor=Sensor(
            gain=_jitter(rng, (1, 1, 1), 0.06),
            exposure=rng.uniform(1.4, 2.0),
            noise_std=rng.uniform(0.025, 0.05),
        ),
    )


_LOOKS: dict[str, Callable[[np.random.Generator], _Look]] = {
    "warehouse": _warehouse,
    "studio": _studio,
    "dusk": _dusk,
}


def _check_domains(domains: Sequence[str]) -> None:
    if not domains:
        raise DataError(f"no ShapeScenes domains given (choose from: {', '.join(DOMAINS)})")
    for name in domains:
        if name not in _LOOKS:
            raise DataError(f"unknown ShapeScenes domain '{name}'{did_you_mean(str(name), DOMAINS)}")


def _pick_domain(seed: int, index: int, domains: Sequence[str]) -> str:
    """Uniform per-image domain choice from its own random stream (so it never shifts the geometry)."""
    return domains[int(np.random.default_rng([seed, index, 3]).integers(len(domains)))]


def render_scene(seed: int, index: int, height: int, width: int, domain: str | None = None) -> dict:
    """Render image `index` of the random scene family `seed` at the given size.

    Returns image (H, W, 3) uint8, depth (H, W) float32 metres (z-depth, 0 = no hit), semseg (H, W)
    uint8 (255 = ignore), boxes (N, 4) float32 [x0, y0, x1, y1) pixel edges, box_classes (N,) int64,
    intrinsics (3, 3) float32 and the domain name. `domain=None` picks one uniformly (deterministically
    per seed and index). Layout and camera depend only on (seed, index), so the same index rendered in
    two domains shows the same scene differently styled.
    """
    if domain is None:
        domain = _pick_domain(seed, index, DOMAINS)
    _check_domains([domain])
    shot = _sample_shot(seed, index, height, width)
    look = _LOOKS[domain](np.random.default_rng([seed, index, 1]))
    floor = Plane(normal=(0, 0, 1), offset=0, class_id=FLOOR, texture=look.floor)
    scene = [floor, *_walls(shot.room, look.walls), *shot.objects]
    sample = render(
        scene,
        shot.camera,
        height,
        width,
        lighting=look.lighting,
        sensor=look.sensor,
        rng=np.random.default_rng([seed, index, 2]),
    )
    sample["domain"] = domain
    return sample


# --------------------------------------------------------------------------------------------------
# Writing splits in the generic folder layout
# --------------------------------------------------------------------------------------------------


def _normalise_labels(labels, num_images: int) -> list[tuple[str, ...]]:
    """Per-image sorted label tuples from either one collection for all images or one per image."""
    if isinstance(labels, str):
        labels = (labels,)
    labels = list(labels)
    if all(isinstance(item, str) for item in labels):
        per_image = [tuple(labels)] * num_images
    elif len(labels) != num_images:
        raise DataError(f"got {len(labels)} per-image label sets for {num_images} images; give one per image")
    else:
        per_image = [(item,) if isinstance(item, str) else tuple(item) for item in labels]
    for kinds in per_image:
        for kind in kinds:
            if kind not in LABEL_KINDS:
                raise DataError(f"unknown label kind '{kind}'{did_you_mean(str(kind), LABEL_KINDS)}")
    return [tuple(sorted(set(kinds))) for kinds in per_image]


def _depth_mm(depth: np.ndarray) -> np.ndarray:
    """Metres to uint16 millimetres (0 = no measurement, clipped at 65.535 m)."""
    return np.clip(np.rint(depth * 1000), 0, 65535).astype(np.uint16)


_Z_DEFAULT, _Z_RLE = 0, 3  # zlib strategies


def _save_png(path: Path, array: np.ndarray, strategy: int = _Z_DEFAULT) -> None:
    """Fast PNG: zlib level 1 keeps writing from dominating generation time. Run-length strategy is
    both faster and smaller for noisy RGB and flat label maps; smooth depth prefers the default."""
    Image.fromarray(array).save(path, compress_level=1, compress_type=strategy)


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload))


@dataclass(frozen=True)
class _SplitSpec:
    """What every worker needs to render and write one image of a split (small, so cheap to pickle)."""

    out_dir: str
    seed: int
    height: int
    width: int
    domains: tuple[str, ...]
    id_prefix: str


def _write_sample(spec: _SplitSpec, index: int, labels: tuple[str, ...]) -> None:
    domain = _pick_domain(spec.seed, index, spec.domains)
    sample = render_scene(spec.seed, index, spec.height, spec.width, domain)
    out, name = Path(spec.out_dir), f"{spec.id_prefix}{index:06d}"
    _save_png(out / "images" / f"{name}.png", sample["image"], _Z_RLE)
    if "depth" in labels:
        _save_png(out / "depth" / f"{name}.png", _depth_mm(sample["depth"]))
    if "semseg" in labels:
        _save_png(out / "semseg" / f"{name}.png", sample["semseg"], _Z_RLE)
    if "boxes" in labels:
        boxes = {"boxes": sample["boxes"].astype(int).tolist(), "labels": sample["box_classes"].tolist()}
        _write_json(out / "boxes" / f"{name}.json", boxes)
    meta = {"intrinsics": sample["intrinsics"].tolist(), "domain": domain, "seed": spec.seed, "index": index}
    _write_json(out / "meta" / f"{name}.json", meta)


def _write_chunk(task: tuple[_SplitSpec, list[tuple[int, tuple[str, ...]]]]) -> int:
    spec, items = task
    for index, labels in items:
        _write_sample(spec, index, labels)
    return len(items)


def _run_chunks(tasks: list, workers: int) -> None:
    """Render chunks in a process pool; 'fork' avoids re-importing the package in every worker."""
    if workers <= 1:
        for task in tasks:
            _write_chunk(task)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_chunk, tasks):
            pass


def _clear_generated(out: Path) -> None:
    """Remove everything a previous (possibly interrupted) run wrote, leaving unrelated files alone."""
    (out / COMPLETE_MARKER).unlink(missing_ok=True)
    for name in _GENERATED_ENTRIES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _is_complete(out: Path, params: dict) -> bool:
    marker = out / COMPLETE_MARKER
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def generate_split(
    out_dir: str | os.PathLike,
    num_images: int,
    *,
    seed: int,
    height: int,
    width: int,
    labels: Collection[str] | Sequence[Collection[str]] = LABEL_KINDS,
    domains: Sequence[str] | None = None,
    workers: int | None = None,
    id_prefix: str = "",
) -> Path:
    """Render `num_images` scenes into the generic folder layout and return `out_dir`.

    `labels` is one collection of label kinds for all images or one collection per image (to simulate
    partially labelled data). `domains` restricts the per-image domain draw (None = all). A finished
    split is marked by `.complete` holding these parameters: calling again with the same parameters
    returns at once; any other content left by an earlier run is cleared and regenerated. The output
    does not depend on `workers`.
    """
    if num_images < 0 or height < 1 or width < 1:
        raise DataError(
            f"cannot generate {num_images} images of {height}x{width}: need num_images >= 0 and a positive size"
        )
    per_image = _normalise_labels(labels, num_images)
    domains = tuple(DOMAINS if domains is None else domains)
    _check_domains(domains)
    out = Path(out_dir)
    params = {
        "generator_version": GENERATOR_VERSION,
        "num_images": int(num_images),
        "seed": int(seed),
        "height": int(height),
        "width": int(width),
        "labels": [list(per_image[0])] if len(set(per_image)) == 1 else [list(k) for k in per_image],
        "domains": list(domains),
        "id_prefix": id_prefix,
    }
    if _is_complete(out, params):
        return out
    _clear_generated(out)
    used = {kind for kinds in per_image for kind in kinds}
    for name in ("images", "meta", *sorted(used)):
        (out / name).mkdir(parents=True, exist_ok=True)

    workers = max(1, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    spec = _SplitSpec(str(out), int(seed), int(height), int(width), domains, id_prefix)
    items = list(enumerate(per_image))
    chunk = max(1, min(32, math.ceil(len(items) / (4 * workers))))
    tasks = [(spec, items[i : i + chunk]) for i in range(0, len(items), chunk)]
    _run_chunks(tasks, min(workers, len(tasks)))

    classes = {"names": list(CLASS_NAMES), "ignore_index": IGNORE_INDEX}
    (out / "classes.yaml").write_text(yaml.safe_dump(classes, default_flow_style=None, sort_keys=False))
    tmp = out / (COMPLETE_MARKER + ".tmp")
    _write_json(tmp, params)
    os.replace(tmp, out / COMPLETE_MARKER)
    return out
