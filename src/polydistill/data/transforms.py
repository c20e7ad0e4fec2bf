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
from ..tasks import Task, task_class


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``int`` -> square ``(size, size)``; ``(h, w)`` -> itself; both must be positive."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise DataError(f"image size must be positive, got {size!r}; give an int or (height, width)")
    return int(h), int(w)


def _channels(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` for torchvision, which wants a channel axis: ``(H, W)`` label maps get one and lose it again."""
    return lambda t: fn(t[None])[0] if t.ndim == 2 else fn(t)


#: ``target_fn(task, target)``: the change applied to one target, asking the task's class
TargetFn = Callable[[type[Task], torch.Tensor], torch.Tensor]
#: ``teacher_fn(task, map, on_grid)``: the change applied to one teacher map; ``on_grid``: the map is on a coarser
#: grid than the image (features on a teacher's token grid, detection on its stride grid), so the change applies
#: in normalised image coordinates
TeacherFn = Callable[[type[Task], torch.Tensor, bool], torch.Tensor]


def _map_dense(sample: dict, image_fn: Callable[[torch.Tensor], torch.Tensor], target_fn: TargetFn,
               teacher_fn: TeacherFn) -> dict:
    """Apply one geometric change to the image, every target and every teacher map; returns a new sample.

    Targets must share the image grid; teacher maps may also be on a coarser grid of their own.
    """
    size = sample["image"].shape[-2:]

    def target(task: str, t: torch.Tensor) -> torch.Tensor:
        if t.shape[-2:] != size:
            raise DataError(
                f"target '{task}' is {tuple(t.shape[-2:])} but the image is {tuple(size)}; every dense map must "
                "share the image grid before augmentation"
            )
        return target_fn(task_class(task), t)

    out = dict(sample)
    out["image"] = image_fn(sample["image"])
    out["targets"] = {task: target(task, t) for task, t in sample.get("targets", {}).items()}
    if "teacher" in sample:
        out["teacher"] = {
            name: {task: teacher_fn(task_class(task), t, t.shape[-2:] != size) for task, t in maps.items()}
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

    def resize(mode: InterpolationMode) -> Callable[[torch.Tensor], torch.Tensor]:
        antialias = smooth and mode == InterpolationMode.BILINEAR
        return _channels(lambda t: F.resize(t, [h, w], interpolation=mode, antialias=antialias))

    def resize_grid(t: torch.Tensor) -> torch.Tensor:  # the token grid follows the image size
        gh, gw = max(1, round(t.shape[-2] * sy)), max(1, round(t.shape[-1] * sx))
        return F.resize(t, [gh, gw], interpolation=InterpolationMode.BILINEAR, antialias=gh < t.shape[-2])

    def target(task: type[Task], t: torch.Tensor) -> torch.Tensor:
        return task.rescale_target(resize(task.label_interpolation)(t), sx, sy)

    def teacher(task: type[Task], t: torch.Tensor, on_grid: bool) -> torch.Tensor:  # logits, predictions: bilinear
        return task.rescale_teacher_map(resize_grid(t) if on_grid else resize(InterpolationMode.BILINEAR)(t), sx, sy)

    out = _map_dense(sample, resize(InterpolationMode.BILINEAR), target, teacher)
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

    crop = _channels(lambda t: F.crop(t, top, left, height, width))
    out = _map_dense(sample, crop, lambda task, t: crop(t),
                     lambda task, t, on_grid: crop_grid(t) if on_grid else crop(t))
    shift = torch.tensor([left, top, left, top], dtype=torch.float32)
    limit = torch.tensor([width, height, width, height], dtype=torch.float32)
    affine = torch.tensor([[1.0, 0.0, -left], [0.0, 1.0, -top], [0.0, 0.0, 1.0]])
    return _map_geometry(
        out, lambda b: torch.minimum((b - shift).clamp(min=0), limit), lambda k: affine.to(k) @ k
    )


def _hflip(sample: dict) -> dict:
    width = sample["image"].shape[-1]
    out = _map_dense(sample, F.horizontal_flip, lambda task, t: task.flip_target(t),
                     lambda task, t, on_grid: task.flip_teacher_map(t))

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
