"""Random scenes: camera pose, room and objects (from the scene's own stream) and the domains' looks."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from polydistill.errors import DataError
from polydistill.registry import did_you_mean

from .common import BALL, BARREL, CONE, CRATE, FLOOR, OBJECT_CLASSES, PERSON, RGB, WALL, as_floats
from .geometry import Box, Camera, Capsule, Cone, Cylinder, Plane, Primitive, Sphere
from .render import Lighting, Sensor, render
from .textures import Texture


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float) -> RGB:
    return as_floats(np.clip(np.asarray(rgb) + rng.uniform(-amount, amount, 3), 0, 1))


def _scaled(rgb: Sequence[float], factor: float) -> RGB:
    return as_floats(np.clip(np.asarray(rgb) * factor, 0, 1))


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
    colour = as_floats(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.35, 1), rng.uniform(0.4, 1)))
    if rng.random() < 0.4:
        second = _WHITE if rng.random() < 0.5 else as_floats(colorsys.hsv_to_rgb(rng.random(), 0.8, 0.8))
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

# Surface colours: (rng, shared) -> the texture's colours, where `shared` holds the colours a look draws
# once per image before its surfaces (one beige for all three walls, one checker pair and hue).
_Colours = Callable[[np.random.Generator, tuple], tuple[RGB, ...]]
_Range = tuple[float, float]

_CHECKER_PAIRS = (
    ((0.92, 0.92, 0.90), (0.55, 0.56, 0.58)),
    ((0.90, 0.90, 0.92), (0.12, 0.12, 0.14)),
    ((0.75, 0.85, 0.95), (0.95, 0.95, 0.95)),
    ((0.90, 0.80, 0.60), (0.60, 0.45, 0.30)),
)


def _warehouse_shared(rng: np.random.Generator) -> tuple:
    return _jitter(rng, (0.60, 0.58, 0.55), 0.05), _jitter(rng, (0.80, 0.73, 0.60), 0.06)  # concrete, beige


def _studio_shared(rng: np.random.Generator) -> tuple:
    light, dark = _CHECKER_PAIRS[rng.integers(len(_CHECKER_PAIRS))]
    return light, dark, rng.random()  # checker pair, wall hue


def _pastel(rng: np.random.Generator, shared: tuple) -> tuple[RGB, ...]:
    """A pastel near the image's wall hue, with darker seams."""
    hue = shared[2]
    colour = as_floats(
        colorsys.hsv_to_rgb((hue + rng.uniform(-0.08, 0.08)) % 1, rng.uniform(0.3, 0.65), rng.uniform(0.7, 0.9))
    )
    return colour, _scaled(colour, 0.8)


@dataclass(frozen=True)
class _Surface:
    """How a look draws one surface's texture: colours first, then scale (m), then the pattern's seed."""

    kind: str
    colours: _Colours
    scale: _Range

    def draw(self, rng: np.random.Generator, shared: tuple) -> Texture:
        colours = self.colours(rng, shared)
        return Texture(self.kind, colours, rng.uniform(*self.scale), _seed(rng))


@dataclass(frozen=True)
class _Style:
    """One domain as data. Random draws happen in field order (shared colours, floor and walls in
    `walls_first` order, then light and sensor); `haze=None` draws nothing and leaves the air clear."""

    shared: Callable[[np.random.Generator], tuple]
    floor: _Surface
    walls: _Surface
    walls_first: bool
    sun_elevation: _Range  # degrees
    light: tuple[RGB, _Range]  # colour, random intensity factor
    ambient: tuple[RGB, _Range]
    haze: _Range | None
    haze_color: RGB
    background: RGB
    shadow: float
    gain_jitter: float
    exposure: _Range
    noise_std: _Range


_STYLES: dict[str, _Style] = {
    # Warm light, grey concrete floor, beige panelled walls, mild noise.
    "warehouse": _Style(
        shared=_warehouse_shared,
        floor=_Surface("concrete", lambda rng, s: (s[0],), (0.5, 1.5)),
        walls=_Surface("panels", lambda rng, s: (_jitter(rng, s[1], 0.03), _scaled(s[1], 0.55)), (1, 2.5)),
        walls_first=False,
        sun_elevation=(35, 70),
        light=((1.0, 0.86, 0.68), (0.8, 1.1)),
        ambient=((0.36, 0.31, 0.26), (0.8, 1.2)),
        haze=(0, 0.015),
        haze_color=(0.55, 0.50, 0.42),
        background=(0.25, 0.22, 0.20),
        shadow=0.55,
        gain_jitter=0.05,
        exposure=(0.9, 1.25),
        noise_std=(0.006, 0.018),
    ),
    # Cool bright light, checker floor, pastel coloured walls, little noise.
    "studio": _Style(
        shared=_studio_shared,
        floor=_Surface("checker", lambda rng, s: s[:2], (0.4, 1.0)),
        walls=_Surface("panels", _pastel, (2, 4)),
        walls_first=True,
        sun_elevation=(45, 80),
        light=((0.92, 0.97, 1.0), (0.9, 1.0)),
        ambient=((0.45, 0.48, 0.54), (0.9, 1.15)),
        haze=None,
        haze_color=(0.5, 0.5, 0.5),
        background=(0.92, 0.93, 0.96),
        shadow=0.35,
        gain_jitter=0.03,
        exposure=(0.9, 1.1),
        noise_std=(0.002, 0.008),
    ),
    # Dim low orange light, bluish ambient and haze, dark tiles, strong sensor noise.
    "dusk": _Style(
        shared=lambda rng: (),
        floor=_Surface("tiles", lambda rng, s: (_jitter(rng, (0.42, 0.42, 0.45), 0.05), (0.18, 0.18, 0.20)),
                       (0.4, 0.9)),
        walls=_Surface("panels", lambda rng, s: (_jitter(rng, (0.40, 0.44, 0.52), 0.05), (0.20, 0.21, 0.25)),
                       (1, 3)),
        walls_first=False,
        sun_elevation=(8, 25),
        light=((1.0, 0.6, 0.38), (0.6, 0.9)),
        ambient=((0.12, 0.14, 0.22), (0.8, 1.2)),
        haze=(0.02, 0.06),
        haze_color=(0.16, 0.18, 0.28),
        background=(0.08, 0.09, 0.16),
        shadow=0.6,
        gain_jitter=0.06,
        exposure=(1.4, 2.0),
        noise_std=(0.025, 0.05),
    ),
}
DOMAINS: tuple[str, ...] = tuple(_STYLES)


@dataclass(frozen=True)
class _Look:
    """One image's drawn style: floor and wall textures, light and sensor."""

    floor: Texture
    walls: tuple[Texture, ...]
    lighting: Lighting
    sensor: Sensor


def _draw_look(style: _Style, rng: np.random.Generator) -> _Look:
    """Draw one image's look from a domain's style (the order of draws is part of the dataset)."""
    shared = style.shared(rng)
    if style.walls_first:
        walls = tuple(style.walls.draw(rng, shared) for _ in range(3))
        floor = style.floor.draw(rng, shared)
    else:
        floor = style.floor.draw(rng, shared)
        walls = tuple(style.walls.draw(rng, shared) for _ in range(3))
    direction = _sun(rng, *style.sun_elevation)
    color = _scaled(style.light[0], rng.uniform(*style.light[1]))
    ambient = _scaled(style.ambient[0], rng.uniform(*style.ambient[1]))
    haze = 0.0 if style.haze is None else rng.uniform(*style.haze)
    lighting = Lighting(direction=direction, color=color, ambient=ambient, haze=haze,
                        haze_color=style.haze_color, background=style.background, shadow=style.shadow)
    gain = _jitter(rng, (1, 1, 1), style.gain_jitter)
    exposure = rng.uniform(*style.exposure)
    sensor = Sensor(gain=gain, exposure=exposure, noise_std=rng.uniform(*style.noise_std))
    return _Look(floor, walls, lighting, sensor)

def check_domains(domains: Sequence[str]) -> None:
    if not domains:
        raise DataError(f"no ShapeScenes domains given (choose from: {', '.join(DOMAINS)})")
    for name in domains:
        if name not in _STYLES:
            raise DataError(f"unknown ShapeScenes domain '{name}'{did_you_mean(str(name), DOMAINS)}")


def pick_domain(seed: int, index: int, domains: Sequence[str]) -> str:
    """Uniform per-image domain choice from its own random stream (so it never shifts the geometry)."""
    return domains[int(np.random.default_rng([seed, index, 3]).integers(len(domains)))]


def render_scene(seed: int, index: int, height: int, width: int, domain: str | None = None) -> dict:
    """Render image `index` of the random scene family `seed` at the given size.

    Returns image (H, W, 3) uint8, depth (H, W) float32 metres (z-depth, 0 = no hit), semseg (H, W)
    uint8 (255 = ignore), normals (H, W, 3) float32 unit vectors in the camera frame, boxes (N, 4)
    float32 [x0, y0, x1, y1) pixel edges, box_classes (N,) int64, intrinsics (3, 3) float32 and the
    domain name. `domain=None` picks one uniformly (deterministically
    per seed and index). Layout and camera depend only on (seed, index), so the same index rendered in
    two domains shows the same scene differently styled.
    """
    if domain is None:
        domain = pick_domain(seed, index, DOMAINS)
    check_domains([domain])
    shot = _sample_shot(seed, index, height, width)
    look = _draw_look(_STYLES[domain], np.random.default_rng([seed, index, 1]))
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
