"""A trained student as a Python object: ``polydistill.load_student(path).predict(images)``.

What a user with a checkpoint in hand wants: give it images in whatever form they have (a path, a PIL image,
a NumPy array or a tensor) and get, per task, a NumPy result in the image's own size — depth in metres,
class ids, boxes in the image's pixels with classes and scores. It runs the same path as ``polydistill
predict`` (resize to the training size, the tasks' own ``predict`` and ``decode``, maps brought back to the
image's size), so the Python API and the command line give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..files import image_tensor
from ..tasks import Task
from .inputs import load_image
from .predict import TorchPredictor, predict_one

#: what :meth:`DistilledStudent.predict` accepts as one image
ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor


def as_image_tensor(image: ImageLike) -> torch.Tensor:
    """One image as ``(3, H, W)`` float RGB in ``[0, 1]``.

    Paths are read with the datasets' reader; uint8 arrays and tensors are scaled by 1/255; float arrays and
    tensors must already be in ``[0, 1]``; arrays are ``(H, W, 3)`` (NumPy's and PIL's layout), tensors
    ``(3, H, W)`` (torch's)."""
    if isinstance(image, (str, Path)):
        return load_image(Path(image))
    if isinstance(image, Image.Image):
        return image_tensor(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise DataError(f"a NumPy image must be (H, W, 3) RGB, got shape {image.shape}")
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a copy: arrays from PIL are read-only
    elif isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise DataError(f"a tensor image must be (3, H, W) RGB, got shape {tuple(image.shape)}")
        tensor = image.detach().cpu()
    else:
        raise DataError(f"cannot read an image from a {type(image).__name__}; give a path, a PIL image, an "
                        "(H, W, 3) NumPy array or a (3, H, W) tensor")
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    tensor = tensor.float()
    if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
        raise DataError(f"a float image must hold values in [0, 1], got [{float(tensor.min()):.3g}, "
                        f"{float(tensor.max()):.3g}]; divide 8-bit values by 255")
    return tensor


class DistilledStudent:
    """A student loaded from a checkpoint or run folder, ready to predict (eval mode, on the CPU).

    ``tasks`` are the deployed tasks (feature projectors, which only served distillation, are dropped);
    ``input_size`` is the training size that images are resized to before the network."""

    def __init__(self, path: str | Path):
        self._predictor = TorchPredictor(Path(path))
        self.path = Path(path)

    @property
    def tasks(self) -> dict[str, Task]:
        return self._predictor.tasks

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self._predictor.input_size

    @property
    def model(self) -> torch.nn.Module:
        """The task-space network (image in ``[0, 1]`` → one output per task), e.g. to trace or export."""
        return self._predictor.model

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> dict[str, Any] | list[dict[str, Any]]:
        """Per task, a NumPy result in each image's own size: dense tasks give their map (depth ``(H, W)``
        metres, segmentation ``(H, W)`` class ids; see each task's ``to_numpy``), detection gives
        ``{"boxes": (n, 4) x0 y0 x1 y1 pixels, "scores": (n,), "labels": (n,), "classes": [name, ...]}``.
        One image in, one dict out; a list in, a list out."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        results = []
        for image in batch:
            pred = predict_one(self._predictor, as_image_tensor(image))
            result: dict[str, Any] = {name: self.tasks[name].to_numpy(value) for name, value in pred.maps.items()}
            for name, (boxes, scores, labels) in pred.boxes.items():
                names = list(self.tasks[name].class_names)
                result[name] = {"boxes": boxes.numpy().astype(np.float32), "scores": scores.numpy(),
                                "labels": labels.numpy(), "classes": [names[i] for i in labels.tolist()]}
            results.append(result)
        return results[0] if single else results

    def __repr__(self) -> str:
        return f"DistilledStudent({str(self.path)!r}, tasks={list(self.tasks)}, input_size={self.input_size})"
