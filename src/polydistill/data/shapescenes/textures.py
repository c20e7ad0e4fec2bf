"""Procedural surface textures: each pattern maps points on a primitive (in its local frame) to linear albedo."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from polydistill.registry import did_you_mean

from .common import RGB, as_floats


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
        object.__setattr__(self, "colors", tuple(as_floats(c) for c in self.colors))
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def linear(self) -> np.ndarray:
        """Colours as linear reflectance (display values squared, i.e. gamma 2)."""
        return np.square(np.asarray(self.colors, np.float32))

    def albedo(self, local: np.ndarray, normals: np.ndarray, size: np.ndarray) -> np.ndarray:
        """Linear albedo (N, 3) at points/normals given in the owning primitive's local frame."""
        return _PATTERNS[self.kind][0](local, normals, size, self)
