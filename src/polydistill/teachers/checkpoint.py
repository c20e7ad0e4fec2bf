"""Teachers trained with polydistill itself (``polydistill train`` with one task and full labels).

Besides its task outputs, such a teacher can teach *features*: ``options.features`` maps a student
features task to a module path inside the teacher (read with a recorder, e.g. ``neck`` or
``backbone.layer4``), average-pooled to a token grid of ``options.grid_stride`` input pixels (default 16)::

    teachers:
      - {name: seg_teacher, path: runs/seg_teacher, tasks: [semseg, seg_feat],
         options: {features: {seg_feat: neck}, grid_stride: 8}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from ..checkpoint import find_checkpoint, load_spec, load_weights
from ..config import TeacherConfig
from ..errors import ConfigError, PolydistillError
from ..recorders import FeatureRecorders
from ..students import build_student
from .base import SourceOptions, Teacher, source_options
from .sources import TaskClasses


class Options(SourceOptions):
    features: dict[str, str] = Field(default_factory=dict, description="features task -> module path to record")
    grid_stride: int = Field(16, gt=0, strict=True, description="input pixels per token of recorded features")


def build(cfg: TeacherConfig, classes: TaskClasses) -> Teacher:
    """A polydistill run or checkpoint folder (the default source: a path without a prefix)."""
    if cfg.class_map or cfg.depth_convention not in (None, "metric"):
        raise ConfigError(f"teacher '{cfg.name}': a polydistill checkpoint already predicts the student's classes "
                          "in metres; remove class_map and depth_convention")
    return CheckpointTeacher(cfg.name, cfg.path, cfg.tasks, options=cfg.options)


class CheckpointTeacher(Teacher):
    """Wraps a polydistill checkpoint; its task outputs are already in student task space."""

    recipe_covers_options = True

    def __init__(self, name: str, path: str | Path, tasks: list[str] | None = None,
                 options: Options | Mapping[str, Any] | None = None):
        opts = source_options(Options, options, name, "checkpoint")
        features = dict(opts.features)
        self.grid_stride = opts.grid_stride
        try:
            directory = find_checkpoint(path)
            spec = load_spec(directory)
        except PolydistillError as exc:  # say which teacher of the config points there
            raise ConfigError(f"teacher '{name}': {exc}") from None
        available = list(spec.tasks)
        chosen = tasks or available + list(features)
        unknown = [t for t in chosen if t not in available and t not in features]
        if unknown:
            raise ConfigError(f"teacher '{name}' ({directory}) cannot teach {unknown}: it predicts {available}"
                              + (f" and features {list(features)}" if features else ""))
        model, task_objects = build_student(spec)
        try:
            load_weights(model, directory)
        except PolydistillError as exc:
            raise ConfigError(f"teacher '{name}': {exc}") from None
        recorded = {t: features[t] for t in chosen if t in features}
        self.recorders = FeatureRecorders(recorded).attach(model) if recorded else None
        channels = {}
        if self.recorders is not None:
            size = spec.input_size or (64, 64)
            with torch.no_grad():
                model.eval()(torch.zeros(1, 3, *size))
            channels = {t: self._as_map(self.recorders[t], t).shape[1] for t in self.recorders.recorders}
        super().__init__(name, tuple(chosen), feature_channels=channels)
        self.model, self.task_objects = model, task_objects
        self.spec = spec
        self.checkpoint = directory
        self.freeze()

    def _as_map(self, value: Any, task: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.dim() != 4:
            raise ConfigError(f"teacher '{self.name}': the module recorded for '{task}' returns "
                              f"{type(value).__name__} {getattr(value, 'shape', '')}, not a (B, C, h, w) map")
        return value

    def recipe(self) -> dict[str, Any]:
        if self.recorders is None:
            return super().recipe()
        features = {t: r.path for t, r in self.recorders.recorders.items()}
        return {**super().recipe(), "features": features, "grid_stride": self.grid_stride}

    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.model(images)
        out = {t: self.task_objects[t].predict(raw[t]) for t in self.tasks if t in self.task_objects}
        grid = (math.ceil(images.shape[-2] / self.grid_stride), math.ceil(images.shape[-1] / self.grid_stride))
        for task in self.recorders.recorders if self.recorders is not None else ():
            out[task] = F.adaptive_avg_pool2d(self._as_map(self.recorders[task], task).float(), grid)
        return out
