"""Surface normals: per pixel, the unit vector perpendicular to the surface, in camera coordinates.

The camera frame is OpenCV's (x right, y down, z forward), so a surface facing the camera has a negative z and
the floor seen by a level camera points to -y. NYUD-v2's multi-task benchmark has depth, segmentation, normals
and edges; the metrics are its standard ones, pooled over every valid pixel of a split: the mean and median
angle between prediction and label, and the share of pixels within 11.25°, 22.5° and 30°.

Conventions (see :mod:`polydistill.tasks.base`):

* raw head output ``(B, 3, H, W)``, any length; task space (``predict``, teacher outputs) is the same vector
  normalised to length 1;
* a target is ``(3, H, W)`` float unit vectors, with ``(0, 0, 0)`` where there is no measurement — losses and
  metrics skip those pixels, and a missing label is all zeros (``valid`` False besides);
* label files ``normals/<id>.png`` (8-bit RGB, ``n = rgb / 255 * 2 - 1``, black = no measurement) or
  ``normals/<id>.npy`` (float ``(H, W, 3)`` unit vectors; zero, NaN or Inf vectors = no measurement);
* a horizontal flip mirrors the map and negates x; resizing uses the nearest label, so no vector is blended
  with a neighbour across an edge (a zoom is isotropic and keeps directions; an anisotropic resize would tilt
  them slightly, which is not corrected);
* loss: ``1 - cos`` of the angle between prediction and label (or teacher), the usual angular loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode

from ..errors import DataError
from ..files import one_line, open_image
from . import TASKS
from .base import Metric, Task

#: angle thresholds (degrees) of the "within" metrics
THRESHOLDS = (11.25, 22.5, 30.0)
#: the median angle is read from a histogram of this many bins over 0–180°: 0.01° resolution
HISTOGRAM_BINS = 18000
#: vectors shorter than this are "no measurement" (a unit vector has length 1)
MIN_NORM = 0.5


def _metric_key(threshold: float) -> str:
    return "within_" + f"{threshold:g}".replace(".", "_")


def valid_pixels(target: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` labels -> ``(B, H, W)`` mask of pixels with a measurement (a finite, non-zero vector)."""
    finite = torch.isfinite(target).all(1)
    return finite & (torch.nan_to_num(target).norm(dim=1) > MIN_NORM)


def unit(vectors: torch.Tensor) -> torch.Tensor:
    """Vectors along the channel axis scaled to length 1 (zero vectors stay zero)."""
    return F.normalize(vectors.float(), dim=1, eps=1e-6)


def angles_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per pixel, the angle in degrees between two ``(B, 3, H, W)`` vector fields (any lengths)."""
    cos = (unit(pred) * unit(target)).sum(1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


def read_normals(path: Path) -> torch.Tensor:
    """Unit normals ``(3, H, W)`` from a ``.png`` (8-bit RGB) or ``.npy`` (float ``(H, W, 3)``) file; pixels
    without a measurement become ``(0, 0, 0)``."""
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path}: {one_line(e)}; save normals with numpy.save") from e
        if array.ndim != 3 or array.shape[-1] != 3 or not np.issubdtype(array.dtype, np.floating):
            raise DataError(f"{path} holds a {array.dtype} array of shape {array.shape}; normals .npy files must be "
                            "float (H, W, 3) unit vectors in camera coordinates")
        vectors = torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1)
    else:
        image = open_image(path)
        if image.mode != "RGB":
            raise DataError(f"{path} is a mode-{image.mode} PNG; normals PNGs are 8-bit RGB with "
                            "rgb = round((n + 1) / 2 * 255) and black for no measurement")
        rgb = torch.from_numpy(np.asarray(image).astype(np.float32)).permute(2, 0, 1)
        vectors = torch.where((rgb > 0).any(0, keepdim=True), rgb / 127.5 - 1.0, torch.zeros_like(rgb))
    keep = valid_pixels(vectors[None])[0]
    return torch.where(keep[None], unit(torch.nan_to_num(vectors)[None])[0], torch.zeros_like(vectors))


@TASKS.register("normals")
class NormalsTask(Task):
    """Surface normals in camera coordinates (three channels, unit length); see the module docstring."""

    name = "normals"
    metric_directions: ClassVar[dict[str, bool]] = {
        "mean_angle": False, "median_angle": False, **{_metric_key(t): True for t in THRESHOLDS}}
    primary_metric = "mean_angle"
    score_metric = "within_30"
    target_is_label = False
    label_folder = "normals"
    label_extensions = (".png", ".npy")
    label_interpolation = InterpolationMode.NEAREST_EXACT
    title = "Surface normals"
    caption = "Surface normals: colour = (n + 1) / 2 as RGB (x right = red, y down = green, z forward = blue)."
    output_meaning = ("(B, 3, H, W) unit surface normals at the input size, camera coordinates (x right, y down, "
                      "z forward)")
    report_metrics = ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30")

    @property
    def out_channels(self) -> int:
        return 3

    # -- labels and geometry ---------------------------------------------------------------------------------
    @classmethod
    def read_label_file(cls, path: Path, num_classes: int | None, ignore_index: int) -> torch.Tensor:
        return read_normals(path)

    @classmethod
    def placeholder_target(cls, size: tuple[int, int], ignore_index: int) -> torch.Tensor:
        return torch.zeros(3, *size)

    def placeholder(self, height: int, width: int) -> torch.Tensor:
        return self.placeholder_target((height, width), 0)

    @classmethod
    def flip_target(cls, target: torch.Tensor) -> torch.Tensor:
        """Mirrored left-right, a normal's x component changes sign."""
        return target.flip(-1) * torch.tensor([-1.0, 1.0, 1.0], dtype=target.dtype)[:, None, None]

    @classmethod
    def flip_teacher_map(cls, value: torch.Tensor) -> torch.Tensor:
        return cls.flip_target(value)

    @classmethod
    def resize_output(cls, value: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Resized bilinearly, then back to unit length (blending two unit vectors shortens them)."""
        return unit(super().resize_output(value, size))

    @classmethod
    def cache_encoding(cls, default: str, semseg_topk: int | None) -> str:
        """fp16: int8 steps of 1/127 would be up to half a degree."""
        return "fp16"

    @classmethod
    def label_statistics(cls, label: Any, file: str, num_classes: int | None) -> dict[str, Any]:
        return {"total": label[0].numel(), "valid": int(valid_pixels(label[None]).sum())}

    @classmethod
    def summarise_label_statistics(cls, total: dict[str, Any], class_names: Sequence[str],
                                   box_class_names: Sequence[str]) -> tuple[None, dict[str, Any]]:
        return None, ({"valid_fraction": total["valid"] / total["total"]} if total.get("total") else {})

    @classmethod
    def describe_label_summary(cls, summary: dict[str, Any]) -> str:
        return f"{summary['valid_fraction']:.1%} valid pixels"

    # -- model -------------------------------------------------------------------------------------------------
    def predict(self, raw: torch.Tensor) -> torch.Tensor:
        return unit(raw)

    def raw_from_output(self, output: torch.Tensor) -> torch.Tensor:
        return unit(output)

    def _angular_loss(self, raw: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Per sample, the mean ``1 - cos`` over the pixels where ``target`` has a measurement."""
        valid = valid_pixels(target).float()
        loss = (1.0 - (unit(raw) * unit(torch.nan_to_num(target))).sum(1)) * valid
        if weight is not None:
            loss = loss * weight[:, 0]
        return loss.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1.0)

    def supervised_loss(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._angular_loss(raw, target)

    def distill_loss(self, raw: torch.Tensor, teacher: torch.Tensor, pixel_weight: torch.Tensor | None = None,
                     kind: str = "default") -> torch.Tensor:
        return self._angular_loss(raw, teacher, pixel_weight)

    def new_metric(self) -> Metric:
        return NormalsMetric()

    def visualise(self, value: torch.Tensor, **kwargs: Any) -> np.ndarray:
        """``(n + 1) / 2`` as RGB; pixels without a measurement are black."""
        v = value.detach().float().cpu()
        rgb = ((v + 1.0) / 2.0).clamp(0, 1) * valid_pixels(v[None])[0][None]
        return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    def to_numpy(self, value: torch.Tensor) -> np.ndarray:
        """``(H, W, 3)`` unit vectors (NumPy's image layout)."""
        return value.detach().cpu().float().permute(1, 2, 0).numpy()

    def prediction_png(self, value: torch.Tensor) -> np.ndarray:
        """The label-file format (8-bit RGB), so a prediction can serve as a label."""
        return self.visualise(value)


class NormalsMetric(Metric):
    """Angle statistics pooled over every valid pixel of a split: sum and histogram of angles (the median to
    0.01°), and the count within each threshold — all sums, so processes add them up."""

    def __init__(self):
        self.total = torch.zeros((), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)
        self.within = torch.zeros(len(THRESHOLDS), dtype=torch.float64)
        self.histogram = torch.zeros(HISTOGRAM_BINS, dtype=torch.float64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        valid = valid_pixels(target)
        angles = angles_deg(pred, torch.nan_to_num(target))[valid].double().cpu()
        self.total += angles.sum()
        self.count += angles.numel()
        self.within += torch.stack([(angles < t).sum() for t in THRESHOLDS]).double()
        bins = (angles / 180.0 * HISTOGRAM_BINS).long().clamp_(0, HISTOGRAM_BINS - 1)
        self.histogram += torch.bincount(bins, minlength=HISTOGRAM_BINS).double()

    def _median(self) -> float:
        cumulative = torch.cumsum(self.histogram, 0)
        index = int(torch.searchsorted(cumulative, cumulative[-1] / 2))
        return (index + 0.5) * 180.0 / HISTOGRAM_BINS

    def compute(self) -> dict[str, float]:
        n = float(self.count)
        if n == 0:
            return {k: math.nan for k in NormalsTask.metric_directions}
        return {"mean_angle": float(self.total) / n, "median_angle": self._median(),
                **{_metric_key(t): float(w) / n for t, w in zip(THRESHOLDS, self.within)}}

    def state(self) -> dict[str, torch.Tensor]:
        return {"total": self.total, "count": self.count, "within": self.within, "histogram": self.histogram}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.total, self.count = state["total"].double(), state["count"].double()
        self.within, self.histogram = state["within"].double(), state["histogram"].double()
