"""Class ids and small helpers shared by every ShapeScenes module (kept apart so no module imports a sibling
only for a constant)."""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("floor", "wall", "crate", "barrel", "cone", "ball", "person")
FLOOR, WALL, CRATE, BARREL, CONE, BALL, PERSON = range(len(CLASS_NAMES))
OBJECT_CLASSES: tuple[int, ...] = (CRATE, BARREL, CONE, BALL, PERSON)
IGNORE_INDEX = 255

RGB = tuple[float, float, float]


def as_floats(values) -> tuple[float, ...]:
    """Plain Python floats: numpy float64 scalars would silently promote float32 ray arrays."""
    if isinstance(values, np.ndarray):
        return tuple(values.ravel().tolist())
    return tuple(float(v) for v in values)
