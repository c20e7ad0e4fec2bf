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
from typing import ClassVar

import numpy as np
import torch
from torch import nn


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
    #: the instance's name in the config (``tasks: {dino: {type: features}}`` names a features task 'dino')
    name: str

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

    @abstractmethod
    def new_metric(self) -> Metric: ...

    @abstractmethod
    def placeholder(self, height: int, width: int) -> torch.Tensor:
        """The target stored for a sample whose label is missing (masked everywhere)."""

    @abstractmethod
    def visualise(self, value: torch.Tensor) -> np.ndarray:
        """A task-space prediction or a target of one sample -> ``(H, W, 3)`` uint8 picture."""
