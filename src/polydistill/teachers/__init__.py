"""Teachers: frozen models with a contract (see :mod:`polydistill.teachers.base`) and where they come from.

Every source is one module with a typed ``Options`` model and one factory ``build(cfg, classes) -> Teacher``,
registered in :data:`TEACHER_SOURCES` under its name, which is also its path prefix (:mod:`.sources`).
"""

from __future__ import annotations

from . import checkpoint, huggingface, onnx, python, timm_models, torchvision_detection
from .base import ModuleTeacher, SourceOptions, Teacher, TeacherOutputError
from .checkpoint import CheckpointTeacher
from .huggingface import HuggingFaceTeacher
from .onnx import OnnxTeacher
from .sources import (
    DEFAULT_SOURCE,
    TEACHER_SOURCES,
    TaskClasses,
    build_teacher,
    describe_sources,
    parse_source,
    resolve_teachers,
)
from .torchvision_models import TorchvisionTeacher

TEACHER_SOURCES.register("checkpoint")(checkpoint.build)
TEACHER_SOURCES.register("hf")(huggingface.build)
TEACHER_SOURCES.register("onnx")(onnx.build)
TEACHER_SOURCES.register("python")(python.build)
TEACHER_SOURCES.register("timm")(timm_models.build)
TEACHER_SOURCES.register("torchvision")(torchvision_detection.build)

__all__ = [
    "DEFAULT_SOURCE", "TEACHER_SOURCES", "CheckpointTeacher", "HuggingFaceTeacher", "ModuleTeacher", "OnnxTeacher",
    "SourceOptions", "TaskClasses", "Teacher", "TeacherOutputError", "TorchvisionTeacher", "build_teacher",
    "describe_sources", "parse_source", "resolve_teachers",
]
