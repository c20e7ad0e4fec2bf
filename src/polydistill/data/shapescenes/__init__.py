"""ShapeScenes: procedural indoor scenes rendered by vectorised ray casting.

polydistill needs a dense-prediction dataset that exists on every machine without downloads, carries
*exact* labels (metric depth, semantic classes, surface normals, boxes) and is hard enough that a student has to use
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
* Normals are unit vectors in the camera frame (so a surface facing the camera has negative z, the floor
  seen by a level camera points to -y); (0, 0, 0) where a ray hits nothing. Written as normals/<id>.png,
  8-bit RGB round((n + 1) / 2 * 255) per channel (:func:`encode_normals`, :func:`decode_normals`).

Modules: :mod:`.geometry` (camera, primitives, exact intersections), :mod:`.textures` (procedural
surfaces), :mod:`.render` (ray casting, shading, sensor, labels), :mod:`.scenes` (random layouts and the
domains' looks as a table), :mod:`.write` (splits in the generic folder layout).
"""

from __future__ import annotations

from .common import (
    BALL,
    BARREL,
    CLASS_NAMES,
    CONE,
    CRATE,
    FLOOR,
    IGNORE_INDEX,
    OBJECT_CLASSES,
    PERSON,
    WALL,
)
from .geometry import Box, Camera, Capsule, Cone, Cylinder, Plane, Primitive, Sphere
from .render import Lighting, Sensor, render
from .scenes import DOMAINS, render_scene
from .textures import Texture
from .write import (
    COMPLETE_MARKER,
    DEFAULT_LABELS,
    GENERATOR_VERSION,
    LABEL_KINDS,
    decode_normals,
    encode_normals,
    generate_split,
)

__all__ = [
    "BALL",
    "BARREL",
    "CLASS_NAMES",
    "COMPLETE_MARKER",
    "CONE",
    "CRATE",
    "DEFAULT_LABELS",
    "DOMAINS",
    "FLOOR",
    "GENERATOR_VERSION",
    "IGNORE_INDEX",
    "LABEL_KINDS",
    "OBJECT_CLASSES",
    "PERSON",
    "WALL",
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
    "decode_normals",
    "encode_normals",
    "generate_split",
    "render",
    "render_scene",
]
