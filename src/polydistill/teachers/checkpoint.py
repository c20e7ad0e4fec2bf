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
from collections.abc import Mapping, Sequence
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
from .class_map import ClassMap, match_classes
from .sources import TaskClasses


class Options(SourceOptions):
    features: dict[str, str] = Field(default_factory=dict, description="features task -> module path to record")
    grid_stride: int = Field(16, gt=0, strict=True, description="input pixels per token of recorded features")


def build(cfg: TeacherConfig, classes: TaskClasses) -> Teacher:
    """A polydistill run or checkpoint folder (the default source: a path without a prefix)."""
    if cfg.depth_convention not in (None, "metric"):
        raise ConfigError(f"teacher '{cfg.name}': a polydistill checkpoint already predicts depth in metres; "
                          "remove depth_convention")
    return CheckpointTeacher(cfg.name, cfg.path, cfg.tasks, options=cfg.options, class_map=cfg.class_map)


class CheckpointTeacher(Teacher):
    """Wraps a polydistill checkpoint; its task outputs are in student task space once :meth:`bind_classes` has
    matched its classes to the student's by name (re-ordered, selected or class-mapped)."""

    recipe_covers_options = True

    def __init__(self, name: str, path: str | Path, tasks: list[str] | None = None,
                 options: Options | Mapping[str, Any] | None = None, class_map: str | None = None):
        opts = source_options(Options, options, name, "checkpoint")
        self.class_map_file = class_map
        #: per task, the teacher's class channel of each student class (classes matched by name)
        self.class_orders: dict[str, list[int]] = {}
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
        # the weights come from the checkpoint: never fetch pretrained ones for a spec trained from them
        model, task_objects = build_student(spec.model_copy(update={"pretrained": False}))
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

    def bind_classes(self, classes: Mapping[str, Sequence[str]] | None) -> Teacher:
        """Match the checkpoint's classes to the student's **by name**, per task with classes: the same names in
        another order are re-ordered; a teacher with more or fewer classes is handled as a class map would
        (:func:`~polydistill.teachers.class_map.match_classes`); other names are an error listing both."""
        self.class_orders, self.class_map = {}, None
        for task in self.tasks:
            own = getattr(self.task_objects.get(task), "class_names", None)
            student = (classes or {}).get(task)
            if not own or student is None:
                continue
            dense = type(self.task_objects[task]).dense_output  # a class distribution per pixel can be class-mapped
            if self.class_map_file is not None and dense:
                self.class_map = ClassMap.from_file(self.class_map_file, list(own), list(student))
                continue
            match = match_classes(self.name, task, list(own), list(student), unmapped_mass=dense)
            if isinstance(match, ClassMap):
                self.class_map = match
            elif match is not None:
                self.class_orders[task] = match
        if self.class_map_file is not None and self.class_map is None:
            raise ConfigError(f"teacher '{self.name}': class_map needs a task with per-pixel classes (semseg) that "
                              "both the teacher and the student have")
        return self

    def _as_map(self, value: Any, task: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.dim() != 4:
            raise ConfigError(f"teacher '{self.name}': the module recorded for '{task}' returns "
                              f"{type(value).__name__} {getattr(value, 'shape', '')}, not a (B, C, h, w) map")
        return value

    def recipe(self) -> dict[str, Any]:
        recipe = super().recipe()
        if self.class_orders:
            recipe["class_orders"] = self.class_orders
        if self.recorders is None:
            return recipe
        features = {t: r.path for t, r in self.recorders.recorders.items()}
        return {**recipe, "features": features, "grid_stride": self.grid_stride}

    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.model(images)
        out = {t: self.task_objects[t].predict(raw[t]) for t in self.tasks if t in self.task_objects}
        for task, order in self.class_orders.items():  # class channels come first, then any others (box distances)
            value, count = out[task], self.task_objects[task].num_classes
            picked = value[:, order]
            out[task] = picked if value.shape[1] == count else torch.cat([picked, value[:, count:]], dim=1)
        grid = (math.ceil(images.shape[-2] / self.grid_stride), math.ceil(images.shape[-1] / self.grid_stride))
        for task in self.recorders.recorders if self.recorders is not None else ():
            out[task] = F.adaptive_avg_pool2d(self._as_map(self.recorders[task], task).float(), grid)
        return out
