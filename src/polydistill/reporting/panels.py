"""Pictures of predictions: one RGB panel per task output, shared by ``predict`` and the report."""

from __future__ import annotations

import numpy as np
import torch

from ..tasks import Task


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def panel(task: Task, value: torch.Tensor, image: torch.Tensor | None = None, **kwargs) -> np.ndarray:
    """Visualise one sample's prediction or target; segmentation is drawn over the image when given."""
    if task.target_is_label and image is not None:
        return task.visualise(value.cpu(), image=image.cpu(), **kwargs)
    return task.visualise(value.cpu(), **kwargs)
