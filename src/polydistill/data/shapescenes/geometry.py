"""Geometry: the pinhole camera and the primitives' exact ray intersections (hit distance and unit normal)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .common import as_floats
from .textures import Texture

EPS = 1e-4  # rays start this far in front of the camera (in units of z-depth)


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


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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
    a, b, c = dot(dirs, dirs), dot(oc, dirs), dot(oc, oc) - radius * radius
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where((disc >= 0) & (t > EPS), t, np.inf)


def _side_t(origins, dirs, x: float, y: float, radius: float, z0: float, z1: float) -> np.ndarray:
    """First entry into the side of the vertical cylinder around (x, y) between heights z0 and z1."""
    ox, oy = origins[..., 0] - x, origins[..., 1] - y
    dx, dy = dirs[..., 0], dirs[..., 1]
    a, b, c = dx * dx + dy * dy, ox * dx + oy * dy, ox * ox + oy * oy - radius * radius
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / a
        z = origins[..., 2] + t * dirs[..., 2]
        hit = (disc >= 0) & (t > EPS) & (z >= z0) & (z <= z1)
    return np.where(hit, t, np.inf)


def _disk_t(origins, dirs, x: float, y: float, radius: float, z: float) -> np.ndarray:
    """Hit with the horizontal disk of `radius` around (x, y) at height z."""
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (z - origins[..., 2]) / dirs[..., 2]
        px = origins[..., 0] + t * dirs[..., 0] - x
        py = origins[..., 1] + t * dirs[..., 1] - y
        hit = (t > EPS) & (px * px + py * py <= radius * radius)
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
        object.__setattr__(self, "normal", as_floats(n / np.linalg.norm(n)))
        object.__setattr__(self, "offset", float(self.offset))

    def intersect(self, origins, dirs):
        n = np.asarray(self.normal, np.float32)
        facing = dot(dirs, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.offset - dot(origins, n)) / facing
        t = np.where(t > EPS, t, np.inf)
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
        object.__setattr__(self, "center", as_floats(self.center))
        object.__setattr__(self, "size", as_floats(self.size))
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
            hit = (t_in <= t_out) & (t_in > EPS)
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
        object.__setattr__(self, "base", as_floats(self.base))
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
                return (t > EPS) & (z >= z0) & (z <= apex)

            t_side = np.where(on_cone(first), first, np.where(on_cone(second), second, np.inf))
        t_base = _disk_t(origins, dirs, x, y, self.radius, z0)
        t = np.minimum(t_side, t_base)
        p = _points(origins, dirs, t)
        side = np.stack([p[..., 0] - x, p[..., 1] - y, k2 * (apex - p[..., 2])], axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            side /= np.sqrt(dot(side, side))[..., None]
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
        object.__setattr__(self, "center", as_floats(self.center))
        object.__setattr__(self, "radius", float(self.radius))

    def intersect(self, origins, dirs):
        center = np.asarray(self.center, np.float32)
        t = _sphere_t(origins, dirs, center, self.radius)
        return t, (_points(origins, dirs, t) - center) / self.radius

    def corners(self):
        return _box_corners(self.center, (2 * self.radius,) * 3)

    def frame(self):
        return np.asarray(self.center, np.float32), np.full(3, 2 * self.radius, np.float32), 0.0
