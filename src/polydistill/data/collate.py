"""Batching samples (the format of :mod:`polydistill.data.dataset`) and moving batches to a device.

Dense tensors are stacked; box targets are padded (:func:`pad_boxes`); per-sample values of varying size
or type (meta boxes, intrinsics, ids, domains) stay lists, so one batch can mix images with and without them.
``batch["teacher"]`` is always present and is ``{}`` when the samples carry no teacher maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import DataError
from ..tasks import task_class


def _stack(tensors: list[torch.Tensor], what: str) -> torch.Tensor:
    shapes = sorted({tuple(t.shape) for t in tensors})
    if len(shapes) > 1:
        raise DataError(
            f"cannot batch {what}: samples have shapes {shapes}; give the dataset an image_size or a "
            "transform with a fixed output size"
        )
    return torch.stack(tensors)


def pad_boxes(boxes: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample ``(M_i, 5)`` boxes -> ``(B, max M_i, 5)``; padding rows are −1 (class −1 = no box)."""
    out = torch.full((len(boxes), max((len(b) for b in boxes), default=0), 5), -1.0)
    for i, b in enumerate(boxes):
        out[i, : len(b)] = b
    return out


def _teacher_layout(sample: dict) -> list[tuple[str, list[str]]]:
    return sorted((name, sorted(maps)) for name, maps in sample.get("teacher", {}).items())


def collate(samples: Sequence[dict]) -> dict:
    """Stack a list of samples into a batch (use as ``DataLoader(collate_fn=collate)``)."""
    if not samples:
        raise DataError("cannot collate an empty list of samples")
    first = samples[0]
    tasks = sorted(first["targets"])
    layout = _teacher_layout(first)
    for sample in samples[1:]:
        if sorted(sample["targets"]) != tasks:
            raise DataError(
                f"samples '{first['meta']['id']}' and '{sample['meta']['id']}' have different tasks "
                f"({tasks} vs {sorted(sample['targets'])}); combine only datasets built with the same tasks"
            )
        if _teacher_layout(sample) != layout:
            raise DataError(
                f"samples '{first['meta']['id']}' and '{sample['meta']['id']}' carry different teacher maps "
                f"({layout} vs {_teacher_layout(sample)}); attach the same teacher outputs to every dataset"
            )
    metas = [s["meta"] for s in samples]
    # box targets (M, 5) per sample are padded to (B, M_max, 5) with class −1
    boxes = {task for task in tasks if first["targets"][task].ndim == 2 and task_class(task).box_targets}
    batch = {
        "image": _stack([s["image"] for s in samples], "images"),
        "targets": {
            task: pad_boxes([s["targets"][task] for s in samples]) if task in boxes
            else _stack([s["targets"][task] for s in samples], f"'{task}' targets") for task in tasks
        },
        "valid": {task: torch.tensor([bool(s["valid"][task]) for s in samples]) for task in tasks},
        "teacher": {
            name: {
                task: _stack([s["teacher"][name][task] for s in samples], f"teacher maps '{name}/{task}'")
                for task in teacher_tasks
            }
            for name, teacher_tasks in layout
        },
        "meta": {
            "id": [m["id"] for m in metas],
            "index": torch.tensor([m["index"] for m in metas], dtype=torch.int64),
            "domain": [m["domain"] for m in metas],
            "intrinsics": [m["intrinsics"] for m in metas],
            "boxes": [m["boxes"] for m in metas],
            "box_labels": [m["box_labels"] for m in metas],
        },
    }
    if any("teacher_image" in s for s in samples):  # the un-jittered input for online teachers
        batch["teacher_image"] = _stack([s.get("teacher_image", s["image"]) for s in samples], "teacher images")
    return batch


def move_batch(batch: Any, device: torch.device | str) -> Any:
    """Copy every tensor in a nested dict/list/tuple to ``device`` (non-blocking); other values are kept."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: move_batch(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_batch(value, device) for value in batch)
    return batch
