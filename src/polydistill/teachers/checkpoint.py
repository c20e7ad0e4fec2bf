"""Teachers trained with polydistill itself (``polydistill train`` with one task and full labels)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..engine.checkpoint import find_checkpoint, load_spec, load_weights
from ..errors import ConfigError
from ..students import build_student
from .base import Teacher


class CheckpointTeacher(Teacher):
    """Wraps a polydistill checkpoint; its task outputs are already in student task space."""

    def __init__(self, name: str, path: str | Path, tasks: list[str] | None = None):
        directory = find_checkpoint(path)
        spec = load_spec(directory)
        available = list(spec["tasks"])
        chosen = tasks or available
        unknown = [t for t in chosen if t not in available]
        if unknown:
            raise ConfigError(f"teacher '{name}' ({directory}) cannot teach {unknown}: it predicts {available}")
        super().__init__(name, tuple(chosen))
        self.model, self.task_objects = build_student(spec)
        load_weights(self.model, directory)
        self.spec = spec
        self.checkpoint = directory
        self.freeze()

    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.model(images)
        return {t: self.task_objects[t].predict(raw[t]) for t in self.tasks}
