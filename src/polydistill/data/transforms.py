"""Paired geometric augmentation: one random draw moves the image, every dense map and the boxes together.

A transform is a callable ``(sample, rng) -> sample`` on the sample dict described in
:mod:`polydistill.data.dataset`. It resamples ``image``, every ``targets[task]`` and every
``teacher[name][task]`` on the same grid, and keeps ``meta["boxes"]`` and ``meta["intrinsics"]``
consistent with it, so a flipped or cropped sample still describes the same scene. All randomness
comes from the ``rng`` argument (a :class:`numpy.random.Generator`), which makes augmentation
reproducible per (seed, epoch, index).

Coordinate conventions: boxes use pixel *edges* (``x`` from 0 to ``W``); intrinsics use pixel
*centres* at integer coordinates (OpenCV), so a resize by ``s`` maps ``cx`` to ``(cx + 0.5) * s - 0.5``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.ops import roi_align
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..errors import DataError

#: Targets resampled with nearest neighbour: blending class ids would invent classes, and blending
#: depth across an object edge would invent a surface floating between the two. A new task whose
#: targets must not be blended adds its name here; every other target is resampled bilinearly.
NEAREST_TARGETS: set[str] = {"semseg", "depth"}


#: Teacher maps whose last 4 channels are distances in input pixels from each cell centre to a box's left,
#: top, right and bottom edges (detection): a flip swaps left and right, a resize scales them.
DISTANCE_TASKS: set[str] = {"detection"}

DistanceFn = Callable[[torch.Tensor], torch.Tensor]


def interpolation_for(group: str, task: str | None = None) -> InterpolationMode:
    """How to resample a dense map: ``group`` is ``"image"``, ``"target"`` or ``"teacher"``.

    Teacher maps are always bilinear: they are logits or continuous predictions, not labels.
    """
    if group == "target" and task in NEAREST_TARGETS:
        return InterpolationMode.NEAREST_EXACT
    return InterpolationMode.BILINEAR


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``int`` -> square ``(size, size)``; ``(h, w)`` -> itself; both must be positive."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise DataError(f"image size must be positive, got {size!r}; give an int or (height, width)")
    return int(h), int(w)


GridFn = Callable[[torch.Tensor], torch.Tensor]


def _map_dense(sample: dict, fn: Callable[[torch.Tensor, InterpolationMode], torch.Tensor],
               grid_fn: GridFn | None = None, distance_fn: DistanceFn | None = None) -> dict:
    """Apply ``fn(map, interpolation)`` to the image and every dense map; returns a new sample.

    A teacher map on a coarser grid than the image (features on a teacher's token grid, detection on its
    stride grid) goes through ``grid_fn`` instead, which applies the same geometric change in normalised
    image coordinates; the box distances of :data:`DISTANCE_TASKS` maps then go through ``distance_fn``.
    """
    size = sample["image"].shape[-2:]

    def apply(t: torch.Tensor, mode: InterpolationMode, what: str, grid_ok: bool = False) -> torch.Tensor:
        if t.shape[-2:] != size and grid_ok and grid_fn is not None:
            return grid_fn(t)
        if t.shape[-2:] != size:
            raise DataError(
                f"{what} is {tuple(t.shape[-2:])} but the image is {tuple(size)}; every dense map must "
                "share the image grid before augmentation"
            )
        # (H, W) label maps get a channel axis for torchvision and lose it again afterwards.
        return fn(t[None], mode)[0] if t.ndim == 2 else fn(t, mode)

    out = dict(sample)
    out["image"] = fn(sample["image"], interpolation_for("image"))
    out["targets"] = {
        task: apply(t, interpolation_for("target", task), f"target '{task}'")
        for task, t in sample.get("targets", {}).items()
    }
    def teacher(t: torch.Tensor, task: str, what: str) -> torch.Tensor:
        t = apply(t, interpolation_for("teacher", task), what, grid_ok=True)
        return distance_fn(t) if distance_fn is not None and task in DISTANCE_TASKS else t

    if "teacher" in sample:
        out["teacher"] = {
            name: {task: teacher(t, task, f"teacher map '{name}/{task}'") for task, t in maps.items()}
            for name, maps in sample["teacher"].items()
        }
    return out


def _map_geometry(
    sample: dict,
    boxes_fn: Callable[[torch.Tensor], torch.Tensor],
    intrinsics_fn: Callable[[torch.Tensor], torch.Tensor],
) -> dict:
    """Update boxes (dropping those left without area) and intrinsics in ``meta``, if present."""
    meta = dict(sample.get("meta", {}))
    if meta.get("intrinsics") is not None:
        meta["intrinsics"] = intrinsics_fn(meta["intrinsics"])
    if meta.get("boxes") is not None:
        boxes = boxes_fn(meta["boxes"])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        meta["boxes"] = boxes[keep]
        meta["box_labels"] = meta["box_labels"][keep]
    return {**sample, "meta": meta}


def _resize(sample: dict, size: tuple[int, int]) -> dict:
    h0, w0 = sample["image"].shape[-2:]
    h, w = size
    if (h, w) == (h0, w0):
        return sample
    sy, sx = h / h0, w / w0
    # antialiasing only matters when shrinking, and its kernel is several times slower
    smooth = h < h0 or w < w0
    def resize(t: torch.Tensor, mode: InterpolationMode) -> torch.Tensor:
        return F.resize(t, [h, w], interpolation=mode, antialias=smooth and mode == InterpolationMode.BILINEAR)

    def resize_grid(t: torch.Tensor) -> torch.Tensor:  # the token grid follows the image size
        gh, gw = max(1, round(t.shape[-2] * sy)), max(1, round(t.shape[-1] * sx))
        return F.resize(t, [gh, gw], interpolation=InterpolationMode.BILINEAR, antialias=gh < t.shape[-2])

    def scale_distances(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[:-4], t[-4:] * torch.tensor([sx, sy, sx, sy])[:, None, None]])

    out = _map_dense(sample, resize, resize_grid, scale_distances)
    scale = torch.tensor([sx, sy, sx, sy])
    affine = torch.tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return _map_geometry(out, lambda b: b * scale, lambda k: affine.to(k) @ k)


def _crop(sample: dict, top: int, left: int, height: int, width: int) -> dict:
    h0, w0 = sample["image"].shape[-2:]

    def crop_grid(t: torch.Tensor) -> torch.Tensor:  # the same window in grid cells, bilinearly sampled
        gy, gx = t.shape[-2] / h0, t.shape[-1] / w0
        box = torch.tensor([[0.0, left * gx, top * gy, (left + width) * gx, (top + height) * gy]])
        size = (max(1, round(height * gy)), max(1, round(width * gx)))
        return roi_align(t[None].float(), box, size, spatial_scale=1.0, sampling_ratio=2, aligned=True)[0]

    out = _map_dense(sample, lambda t, mode: F.crop(t, top, left, height, width), crop_grid)
    shift = torch.tensor([left, top, left, top], dtype=torch.float32)
    limit = torch.tensor([width, height, width, height], dtype=torch.float32)
    affine = torch.tensor([[1.0, 0.0, -left], [0.0, 1.0, -top], [0.0, 0.0, 1.0]])
    return _map_geometry(
        out, lambda b: torch.minimum((b - shift).clamp(min=0), limit), lambda k: affine.to(k) @ k
    )


def _hflip(sample: dict) -> dict:
    width = sample["image"].shape[-1]
    def swap_left_right(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[:-4], t[[-2, -3, -4, -1]]])  # (l, t, r, b) -> (r, t, l, b)

    out = _map_dense(sample, lambda t, mode: F.horizontal_flip(t), F.horizontal_flip, swap_left_right)

    def flip_intrinsics(k: torch.Tensor) -> torch.Tensor:
        k = k.clone()
        k[0, 2] = width - 1 - k[0, 2]
        return k

    def flip_boxes(b: torch.Tensor) -> torch.Tensor:
        return torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)

    return _map_geometry(out, flip_boxes, flip_intrinsics)


class Resize:
    """Deterministic resize to ``size`` (``int`` for square, or ``(height, width)``), e.g. for evaluation."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _pair(size)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        return _resize(sample, self.size)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``; boxes become ``x0' = W - x1`` and ``cx' = W - 1 - cx``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise DataError(f"RandomHorizontalFlip p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        return _hflip(sample) if rng.random() < self.p else sample

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomScaleCrop:
    """Zoom in by a random factor from ``scale``, then crop a random window of ``size`` (default: input size).

    Zooming in only (never padding) means no fill value is ever invented for labels or depth. The
    factor is raised where needed so the zoomed image always covers ``size``. Metric depth values are
    unchanged: the crop is a narrower field of view, which ``intrinsics`` records (fx, fy grow).
    """

    def __init__(self, scale: Sequence[float] = (1.0, 1.5), size: int | Sequence[int] | None = None):
        low, high = scale
        if not 0 < low <= high:
            raise DataError(f"RandomScaleCrop scale must be (low, high) with 0 < low <= high, got {scale!r}")
        self.scale = (float(low), float(high))
        self.size = None if size is None else _pair(size)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        h0, w0 = sample["image"].shape[-2:]
        height, width = self.size or (h0, w0)
        factor = rng.uniform(*self.scale)
        zoom_h = max(round(h0 * factor), height)
        zoom_w = max(round(w0 * factor), width)
        top = int(rng.integers(0, zoom_h - height + 1))
        left = int(rng.integers(0, zoom_w - width + 1))
        return _crop(_resize(sample, (zoom_h, zoom_w)), top, left, height, width)

    def __repr__(self) -> str:
        return f"RandomScaleCrop(scale={self.scale}, size={self.size})"


class ColorJitter:
    """Photometric change of the *student's* input only: brightness, contrast and saturation factors drawn in
    ``[1 − strength, 1 + strength]``. The unchanged image is kept as ``sample["teacher_image"]``: teachers —
    cached or online — see the geometry the student sees, never the colour change, so the cache stays valid
    and a teacher's output is not degraded by the augmentation."""

    def __init__(self, strength: float = 0.2):
        if not 0.0 < strength < 1.0:
            raise DataError(f"ColorJitter strength must be in (0, 1), got {strength}")
        self.strength = float(strength)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        b, c, s = (1.0 + rng.uniform(-self.strength, self.strength, 3)).tolist()
        image = sample["image"]
        out = F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(image, b), c), s)
        return {**sample, "image": out.clamp(0, 1), "teacher_image": sample.get("teacher_image", image)}

    def __repr__(self) -> str:
        return f"ColorJitter(strength={self.strength})"


class Compose:
    """Apply transforms in order, all drawing from the same ``rng``."""

    def __init__(self, transforms: Sequence[Callable[[dict, np.random.Generator], dict]]):
        self.transforms = list(transforms)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"
