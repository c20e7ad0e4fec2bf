"""Teachers: frozen models with a contract (see :mod:`polydistill.teachers.base`) and their sources."""

from __future__ import annotations

from collections.abc import Callable

from ..config import TeacherConfig
from ..errors import ConfigError
from ..registry import Registry
from .base import Teacher
from .checkpoint import CheckpointTeacher
from .huggingface import HuggingFaceTeacher
from .onnx import OnnxTeacher
from .torchvision_models import TorchvisionTeacher

TEACHER_SOURCES: Registry[Callable[..., Teacher]] = Registry("teacher source")
TEACHER_SOURCES.register("checkpoint")(CheckpointTeacher)
TEACHER_SOURCES.register("hf")(HuggingFaceTeacher)
TEACHER_SOURCES.register("onnx")(OnnxTeacher)
TEACHER_SOURCES.register("torchvision")(TorchvisionTeacher)

__all__ = [
    "TEACHER_SOURCES", "CheckpointTeacher", "HuggingFaceTeacher", "OnnxTeacher", "Teacher", "TorchvisionTeacher",
    "build_teacher",
]


def build_teacher(cfg: TeacherConfig, student_classes: list[str] | None = None) -> Teacher:
    """Build a teacher from its config; ``student_classes`` lets a class map check and apply itself."""
    factory = TEACHER_SOURCES.get(cfg.source)
    kwargs = dict(name=cfg.name, path=cfg.path, tasks=cfg.tasks)
    if cfg.source != "checkpoint":
        kwargs.update(depth_convention=cfg.depth_convention, class_map=cfg.class_map,
                      student_classes=student_classes, trust_remote_code=cfg.trust_remote_code, options=cfg.options)
    elif cfg.class_map or cfg.depth_convention not in (None, "metric") or cfg.options:
        raise ConfigError(f"teacher '{cfg.name}': a polydistill checkpoint already predicts the student's classes "
                          "in metres; remove class_map, depth_convention and options")
    return factory(**kwargs)
