"""The Teacher contract: a frozen model that answers, for a batch of images, in *student task space*.

A teacher declares which student tasks it teaches. ``predict`` returns ``{task: tensor}`` with depth in
metres ``(B, 1, H, W)`` and segmentation as logits over the student's classes ``(B, C, H, W)``; any
conversion from the teacher's native output (label space, depth convention, resolution) happens in
the teacher adapter, never in the task or the engine. Teachers are frozen, always in eval mode, run
under ``no_grad`` and are never wrapped for distributed training.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, PolydistillError
from ..registry import did_you_mean

DEPTH_CONVENTIONS = ("metric", "relative", "inverse_relative")


class TeacherOutputError(PolydistillError):
    """A teacher broke its output contract (wrong batch, changing channels or grid): a bug in the teacher, its
    options or its code, reported with the teacher's name instead of a shape error deep inside a loss."""


def check_option_keys(teacher: str, options: dict[str, Any] | None, allowed: tuple[str, ...],
                      source: str) -> dict[str, Any]:
    """A copy of a teacher's ``options``; an unknown key is a config error with a suggestion."""
    options = dict(options or {})
    for key in options:
        if key not in allowed:
            raise ConfigError(f"teacher '{teacher}': unknown {source} option '{key}'{did_you_mean(str(key), allowed)}")
    return options


class Teacher(nn.Module, ABC):
    """Base class: freezes parameters and pins eval mode; subclasses implement ``_predict``.

    Subclasses' ``_predict`` may return maps at any resolution and segmentation logits over the teacher's
    own classes; :meth:`predict` resizes every map to the input size and, when a ``class_map`` is given,
    maps segmentation to the student's classes (C + 1 channels of log-probabilities, the last one the mass
    of unmapped classes, which the segmentation loss treats as "no opinion"). ``depth_convention`` says
    what a depth map means: ``metric`` (metres), ``relative`` (depth up to scale and shift) or
    ``inverse_relative`` (disparity up to scale and shift, e.g. MiDaS, Depth Anything relative).
    """

    def __init__(self, name: str, tasks: tuple[str, ...], *, depth_convention: str = "metric",
                 class_map=None, feature_channels: dict[str, int] | None = None):
        super().__init__()
        if depth_convention not in DEPTH_CONVENTIONS:
            raise ValueError(f"teacher '{name}': depth_convention must be one of {DEPTH_CONVENTIONS}, "
                             f"got '{depth_convention}'")
        self.name = name
        self.tasks = tuple(tasks)
        self.depth_convention = depth_convention
        self.class_map = class_map
        #: features tasks this teacher teaches -> channels of its feature map (kept at the teacher's own grid)
        self.feature_channels = dict(feature_channels or {})

    def output_kind(self, task: str) -> str:
        """How the objective must compare the student with this teacher's output for ``task``."""
        if task in self.feature_channels:
            return "features"
        return self.depth_convention if task == "depth" else "default"

    def freeze(self) -> Teacher:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """Teachers never leave eval mode (batch-norm statistics and dropout stay fixed)."""
        return super().train(False)

    def weights_fingerprint(self) -> str:
        """Identifies the weights (hash of the state dict)."""
        h = hashlib.sha256()
        for key, tensor in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def recipe(self) -> dict[str, Any]:
        """Everything besides the weights that changes the outputs (preprocessing, conventions, class map)."""
        cmap = None if self.class_map is None else self.class_map.matrix.tolist()
        recipe = {"tasks": list(self.tasks), "depth_convention": self.depth_convention, "class_map": cmap}
        if self.feature_channels:
            recipe["feature_channels"] = self.feature_channels
        return recipe

    def fingerprint(self) -> str:
        """Identifies weights *and* recipe, so cached outputs are invalidated when either changes."""
        blob = json.dumps({"weights": self.weights_fingerprint(), "recipe": self.recipe()}, sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @abstractmethod
    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images``: ``(B, 3, H, W)`` RGB in ``[0, 1]`` → ``{task: task-space output}``.

        Feature maps ``(B, C, h, w)`` keep the teacher's own token grid (the features task aligns the
        student to it) and detection maps their stride grid; every other map is resized to the input size.
        """
        out = self._predict(images)
        size = images.shape[-2:]
        result = {}
        for t in self.tasks:
            if t not in out:
                raise TeacherOutputError(f"teacher '{self.name}' returned no '{t}' output (it returned "
                                         f"{sorted(out)}); a teacher must answer every task it teaches")
            value = out[t].float()
            self._check_output(t, value, images)
            if t in self.feature_channels:
                if value.dim() != 4 or value.shape[1] != self.feature_channels[t]:
                    raise TeacherOutputError(f"teacher '{self.name}' returned features of shape {tuple(value.shape)} "
                                             f"for '{t}'; expected (B, {self.feature_channels[t]}, h, w)")
                result[t] = value
                continue
            if t == "detection":  # on its stride grid, distances in input pixels (tasks/detection.py)
                result[t] = value
                continue
            if value.dim() == 3:
                value = value[:, None]
            if value.shape[-2:] != size:
                value = F.interpolate(value, size=size, mode="bilinear", align_corners=False)
            if t == "semseg" and self.class_map is not None:
                value = self.class_map.apply(value)
            result[t] = value
        return result

    def _check_output(self, task: str, value: torch.Tensor, images: torch.Tensor) -> None:
        """One answer per image, and for every batch the same channels (and, for maps kept on the teacher's own
        grid, the same grid for the same input size) as on the first batch: the cache stores one shape per
        output and the losses compare channel by channel, so a drifting output is an error naming the teacher."""
        shape = tuple(value.shape)
        if value.dim() not in (3, 4) or shape[0] != images.shape[0]:
            raise TeacherOutputError(
                f"teacher '{self.name}' returned '{task}' of shape {shape} for a batch of {images.shape[0]} images; "
                "expected (B, C, h, w) (or (B, h, w) for one channel) with B = the batch size")
        channels = shape[1] if value.dim() == 4 else 1
        seen = self.__dict__.setdefault("_output_contract", {})
        first = seen.setdefault(task, channels)
        if channels != first:
            raise TeacherOutputError(
                f"teacher '{self.name}' returned '{task}' with {channels} channels (shape {shape}) after {first} "
                "channels on earlier batches; a teacher must give the same channels for every batch — check its "
                "options (classes, class map, layer) or the model's code")
        if value.dim() == 4 and (task in self.feature_channels or task == "detection"):
            key = (task, tuple(images.shape[-2:]))
            grid = seen.setdefault(key, shape[-2:])
            if shape[-2:] != grid:
                raise TeacherOutputError(
                    f"teacher '{self.name}' returned '{task}' on a {shape[-2]}x{shape[-1]} grid after "
                    f"{grid[0]}x{grid[1]} for the same {images.shape[-2]}x{images.shape[-1]} input; its grid "
                    "must depend on the input size only — check options such as input_size and grid_stride")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.predict(images)
