"""Pictures of predictions: one RGB panel per task output, shared by ``predict`` and the report."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..tasks import Task


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def panel(task: Task, value: torch.Tensor, image: torch.Tensor | None = None, **kwargs: Any) -> np.ndarray:
    """One sample's prediction or target as the task draws it in a report (:meth:`Task.panel`: segmentation over
    the image, boxes over it enlarged); without ``image``, its plain picture."""
    if image is None:
        return task.visualise(value.cpu(), **kwargs)
    return task.panel(value.cpu(), image.cpu(), **kwargs)
