"""The Task abstraction: everything about one kind of prediction, nothing about teachers or datasets.

Conventions shared by every task (the engine and the objective rely on them):

* The student's head for a task returns a *raw* tensor ``(B, C, H, W)`` at input resolution
  (depth: log-metres, C=1; semseg: class logits, C=num_classes).
* A target is a dense tensor per sample (depth ``(1, H, W)`` float metres with 0 = no measurement;
  semseg ``(H, W)`` long with ``ignore_index`` for unlabelled pixels). A sample whose label is missing
  altogether carries ``valid[task] = False`` and a placeholder target (see :meth:`Task.placeholder`),
  which every loss and metric also masks out pixel-wise, so a missing label can never act as a zero.
* A teacher output for a task lives in *task space* (depth: metres ``(B, 1, H, W)``; semseg: logits
  ``(B, C, H, W)``), produced by the teacher adapter; :meth:`Task.distill_loss` compares the raw
  student output with it.
* Losses return one value per sample (shape ``(B,)``); the objective masks and averages them.
* Metrics accumulate sufficient statistics over a whole split (confusion matrix, pooled sums), never
  an average of per-batch averages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import InterpolationMode

from ..errors import DataError


class DataFacts(Protocol):
    """What a task may read from the training data when it resolves its options (a dataset has these)."""

    root: Path
    class_names: tuple[str, ...]
    box_class_names: tuple[str, ...]
    num_classes: int | None
    ignore_index: int


class Metric(ABC):
    """Accumulates statistics over a split; ``compute`` returns ``{metric_name: value}``."""

    @abstractmethod
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. ``pred`` is the task-space prediction (see ``Task.predict``)."""

    @abstractmethod
    def compute(self) -> dict[str, float]: ...

    @abstractmethod
    def state(self) -> dict[str, torch.Tensor]:
        """Sufficient statistics as tensors, so that they can be summed across processes."""

    @abstractmethod
    def load_state(self, state: dict[str, torch.Tensor]) -> None: ...


class Task(ABC):
    """One kind of dense prediction: head, losses, metrics, visualiser."""

    #: metric name -> True when higher is better
    metric_directions: ClassVar[dict[str, bool]]
    #: the metric used for model selection, retention and the headline numbers
    primary_metric: ClassVar[str]
    #: whether targets are class labels (nearest-neighbour resampling) or continuous values
    target_is_label: ClassVar[bool]
    #: whether datasets carry labels for the task (a features task learns from teachers only)
    has_labels: ClassVar[bool] = True
    #: whether the head's output is upsampled to the input size (a features map keeps its token grid,
    #: detection its stride grid)
    dense_output: ClassVar[bool] = True
    #: whether targets are boxes ``(M, 5)`` per image (padded in a batch) rather than a dense map
    box_targets: ClassVar[bool] = False

    # What datasets, transforms, ``data check``, the teacher cache and teachers ask of a kind of task (class
    # level: data code knows task types by name and reaches them through ``TASKS.get(name)``).
    #: the generic folder layout's folder of this task's labels (``root/<label_folder>/<id>.<ext>``); None: the
    #: folder layout reads none
    label_folder: ClassVar[str | None] = None
    #: the label files' extensions in that folder (lower case, with the dot)
    label_extensions: ClassVar[tuple[str, ...]] = ()
    #: whether reading the labels needs the dataset's class list (the folder layout's ``classes.yaml``)
    needs_class_names: ClassVar[bool] = False
    #: how a resize resamples targets: ``NEAREST_EXACT`` for values that must not be blended (class ids; depth
    #: across an object edge would invent a surface floating between the two)
    label_interpolation: ClassVar[InterpolationMode] = InterpolationMode.BILINEAR
    #: what ``polydistill data check``'s class histogram counts for this task
    histogram_unit: ClassVar[str] = "pixels"

    # What reports, the export sidecar and ``predict`` say about the task.
    #: the heading of the task's part of a report ("Depth"); empty: the task's config name
    title: ClassVar[str] = ""
    #: how to read the task's pictures in a report's sample grid (one sentence)
    caption: ClassVar[str] = ""
    #: what the exported model's output for the task holds (the ONNX sidecar's ``meaning``)
    output_meaning: ClassVar[str] = "task-space output"
    #: the core metrics a report's tables show, in order
    report_metrics: ClassVar[tuple[str, ...]] = ()
    #: the prefix of the per-class metrics (``"iou/"`` gives ``iou/<class>``); None when there are none
    per_class_prefix: ClassVar[str | None] = None
    #: whether the dense map is the distance to the camera in metres (``predict`` labels boxes with it)
    gives_distance: ClassVar[bool] = False
    #: bumped when the way labels (or a box teacher's boxes) become this task's training targets changes:
    #: what was trained or cached on the old targets (the demo's teachers, box teachers' cached maps) carries
    #: it in its fingerprint and is rebuilt; 0 = the first encoding, left out of fingerprints
    target_revision: ClassVar[int] = 0
    #: the instance's name in the config (``tasks: {dino: {type: features}}`` names a features task 'dino')
    name: str

    @classmethod
    def teacher_output_kind(cls, depth_convention: str) -> str:
        """How the objective compares the student with a teacher's output of this task (``"default"``); depth
        answers with the teacher's depth convention (metric, relative, inverse-relative)."""
        return "default"

    @classmethod
    def resolve_options(cls, name: str, options: dict[str, Any], data: DataFacts,
                        teachers: Sequence[Any] = ()) -> dict[str, Any]:
        """Fill options that the training data (classes, ignore index) or the teachers (feature channels)
        already know; errors name ``tasks.<name>``. Default: the options as given."""
        return dict(options)

    @property
    @abstractmethod
    def out_channels(self) -> int: ...

    def build_head(self, in_channels: int, hidden: int | None = None, input_stride: int = 4) -> nn.Module:
        """A light conv head on the neck's finest level (``input_stride`` pixels per cell); the student
        upsamples its output to the input size."""
        hidden = hidden or in_channels
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, self.out_channels, 1),
        )

    @abstractmethod
    def predict(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw head output -> task-space prediction (depth metres; semseg logits)."""

    @abstractmethod
    def supervised_loss(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample loss ``(B,)`` against ground truth; pixels without a label do not count."""

    #: a higher-is-better metric for comparing student and teacher (JointDistill's feedback ratio)
    score_metric: ClassVar[str]

    @abstractmethod
    def distill_loss(self, raw: torch.Tensor, teacher: torch.Tensor,
                     pixel_weight: torch.Tensor | None = None, kind: str = "default") -> torch.Tensor:
        """Per-sample loss ``(B,)`` against a teacher's task-space output.

        ``pixel_weight`` ``(B, 1, H, W)`` scales each pixel's contribution (per-pixel teacher weighting);
        the sum is still divided by the pixel count, so weights with mean 1 keep the loss scale.
        ``kind`` is the teacher's output convention (:meth:`Teacher.output_kind`, e.g. relative depth).
        """

    @abstractmethod
    def raw_from_output(self, output: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`predict`: a task-space map as if a head had produced it (teacher errors)."""

    def confidence(self, output: torch.Tensor) -> torch.Tensor | None:
        """Per-pixel confidence ``(B, 1, H, W)`` in [0, 1] of a task-space output, or None if it has none."""
        return None

    def to_numpy(self, value: torch.Tensor) -> np.ndarray:
        """One image's task-space map ``(C, H, W)`` -> the result a user gets from ``DistilledStudent.predict``
        (default: the map itself, ``(H, W)`` when it has one channel)."""
        array = value.detach().cpu().float().numpy()
        return array[0] if array.shape[0] == 1 else array

    @abstractmethod
    def new_metric(self) -> Metric: ...

    @abstractmethod
    def placeholder(self, height: int, width: int) -> torch.Tensor:
        """The target stored for a sample whose label is missing (masked everywhere)."""

    @abstractmethod
    def visualise(self, value: torch.Tensor) -> np.ndarray:
        """A task-space prediction or a target of one sample -> ``(H, W, 3)`` uint8 picture."""

    def panel(self, value: torch.Tensor, image: torch.Tensor, **kwargs: Any) -> np.ndarray:
        """One sample's picture in a report's grid of small panels, ``image`` being its input ``(3, H, W)``:
        :meth:`visualise`, drawn over the image when the targets are labels."""
        if self.target_is_label:
            return self.visualise(value, image=image, **kwargs)
        return self.visualise(value, **kwargs)

    def colour_range(self, value: torch.Tensor, robust: bool = False) -> tuple[float, float] | None:
        """The value range ``(vmin, vmax)`` to colour ``value`` with, so that the pictures compared with it
        (a report row, a video's frames) share one scale; ``robust`` asks for a range that outliers do not
        set. None (the default) for a task whose pictures have no range."""
        return None

    def relative_output(self, kind: str) -> bool:
        """Whether a teacher output of convention ``kind`` (:meth:`Teacher.output_kind`) is defined only up
        to scale and shift, so its pictures take their own range instead of the labels'."""
        return False

    def legend(self) -> list[tuple[str, tuple[int, int, int]]]:
        """``(label, RGB colour)`` of the colours its pictures use, for a report's legend; empty: none."""
        return []

    def prediction_png(self, value: torch.Tensor) -> np.ndarray | None:
        """A dense task-space map at an image's size -> the array ``predict`` saves as ``<image>_<task>.png``
        (the task's label-file format, so a prediction can serve as a label); None: no such file."""
        return None

    # -- labels on disk (datasets) ---------------------------------------------------------------------------
    @classmethod
    def read_label_file(cls, path: Path, num_classes: int | None, ignore_index: int) -> torch.Tensor:
        """One label file of :attr:`label_folder` -> its target at the file's own size, checked: a bad file is a
        :class:`DataError` naming it and saying how to fix it."""
        raise DataError(f"{path}: tasks of type '{getattr(cls, 'name', cls.__name__)}' read no label files")

    @classmethod
    def placeholder_target(cls, size: tuple[int, int], ignore_index: int) -> torch.Tensor:
        """The target a dataset stores for an image ``size = (H, W)`` without this label (``valid`` is False and
        losses and metrics mask it everywhere; never a zero label)."""
        raise NotImplementedError(f"tasks of type '{getattr(cls, 'name', cls.__name__)}' have no placeholder "
                                  "target: define placeholder_target")

    # -- geometry (augmentation keeps targets and teacher maps on the image) ---------------------------------
    @classmethod
    def flip_target(cls, target: torch.Tensor) -> torch.Tensor:
        """A target mirrored left-right: the map (a normals task would also negate x)."""
        return target.flip(-1)

    @classmethod
    def rescale_target(cls, target: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
        """A target just resampled by ``(sx, sy)`` (new size / old size) with :attr:`label_interpolation`; values
        that depend on the scale change here (default: none do)."""
        return target

    @classmethod
    def flip_teacher_map(cls, value: torch.Tensor) -> torch.Tensor:
        """A teacher map ``(C, h, w)`` mirrored left-right (on the image grid or on the teacher's own grid)."""
        return value.flip(-1)

    @classmethod
    def rescale_teacher_map(cls, value: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
        """A teacher map ``(C, h, w)`` just resampled bilinearly after the image was resized by ``(sx, sy)``;
        values measured in input pixels change here (default: none are)."""
        return value

    # -- teachers and their cache ------------------------------------------------------------------------------
    @classmethod
    def resize_output(cls, value: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """A task-space output ``(B, C, h, w)`` (or ``(B, h, w)``) at another size ``(H, W)``: a teacher's output
        brought to the student's input, a prediction to the image's size (default: bilinear)."""
        if value.dim() == 3:
            value = value[:, None]
        if value.shape[-2:] != size:
            value = F.interpolate(value, size=size, mode="bilinear", align_corners=False)
        return value

    @classmethod
    def apply_class_map(cls, value: torch.Tensor, class_map: Any) -> torch.Tensor:
        """A teacher's output over its own classes -> over the student's (``class_map.apply``) when the targets are
        class labels; other outputs are left as they are."""
        return class_map.apply(value) if cls.target_is_label else value

    @classmethod
    def cache_encoding(cls, default: str, semseg_topk: int | None) -> str | tuple[str, int]:
        """How the teacher cache stores this task's outputs: ``default`` (``distill.cache.encoding``) unless the
        values need another (``"fp16"``, or ``("topk", k)`` for class scores keeping their top ``k``)."""
        return default

    # -- ``polydistill data check`` ----------------------------------------------------------------------------
    @classmethod
    def label_statistics(cls, label: Any, file: str, num_classes: int | None) -> dict[str, Any]:
        """Counts of one label that add up over a split (numbers or numpy arrays, merged by
        :meth:`merge_label_statistics`). ``label`` is the target the layout read; for :attr:`box_targets` tasks
        the ``(boxes, labels)`` pair. Default: nothing to count."""
        return {}

    @classmethod
    def merge_label_statistics(cls, total: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
        """``total`` with one label's ``counts`` added (default: key by key sums)."""
        return {**total, **{k: total[k] + v if k in total else v for k, v in counts.items()}}

    @classmethod
    def summarise_label_statistics(
        cls, total: dict[str, Any], class_names: Sequence[str], box_class_names: Sequence[str],
    ) -> tuple[dict[str, int] | None, dict[str, Any] | None]:
        """A split's merged counts -> ``(class histogram {class: count}, summary of the values)`` for the report
        (JSON-ready); either may be None. Default: neither."""
        return None, None

    @classmethod
    def describe_label_summary(cls, summary: dict[str, Any]) -> str:
        """One line of ``polydistill data check``'s table for a summary of :meth:`summarise_label_statistics`."""
        return ", ".join(f"{key} {value}" for key, value in summary.items())
