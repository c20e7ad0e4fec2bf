"""Teachers: frozen models with a contract (see :mod:`polydistill.teachers.base`) and their sources."""

from __future__ import annotations

from collections.abc import Callable

from ..config import TeacherConfig
from ..errors import ConfigError
from ..registry import Registry
from .base import Teacher, TeacherOutputError
from .checkpoint import CheckpointTeacher
from .huggingface import HuggingFaceTeacher
from .onnx import OnnxTeacher
from .torchvision_models import TorchvisionTeacher

TEACHER_SOURCES: Registry[Callable[..., Teacher]] = Registry("teacher source")


def _hf_teacher(**kwargs) -> Teacher:
    """Depth / segmentation models, or feature encoders (DINOv2, CLIP, SAM), by the model's config."""
    from .huggingface import build_hf_teacher

    return build_hf_teacher(**kwargs)


def _torchvision_teacher(**kwargs) -> Teacher:
    """Segmentation or detection models, by the builder name."""
    from .torchvision_detection import build_torchvision_teacher

    return build_torchvision_teacher(**kwargs)


def _timm_teacher(**kwargs) -> Teacher:
    from .timm_models import TimmTeacher

    return TimmTeacher(**kwargs)


TEACHER_SOURCES.register("checkpoint")(CheckpointTeacher)
TEACHER_SOURCES.register("hf")(_hf_teacher)
TEACHER_SOURCES.register("onnx")(OnnxTeacher)
TEACHER_SOURCES.register("timm")(_timm_teacher)
TEACHER_SOURCES.register("torchvision")(_torchvision_teacher)

__all__ = [
    "TEACHER_SOURCES", "CheckpointTeacher", "HuggingFaceTeacher", "OnnxTeacher", "Teacher", "TeacherOutputError",
    "TorchvisionTeacher", "build_teacher",
]


#: sources whose teachers may output boxes: they take the student's detection class names
DETECTION_SOURCES = ("hf", "torchvision")


def build_teacher(cfg: TeacherConfig, student_classes: list[str] | None = None,
                  student_detection_classes: list[str] | None = None) -> Teacher:
    """Build a teacher from its config; ``student_classes`` (semseg) and ``student_detection_classes`` let a
    class map (or a detector's class names) check and apply itself."""
    factory = TEACHER_SOURCES.get(cfg.source)
    kwargs = dict(name=cfg.name, path=cfg.path, tasks=cfg.tasks)
    if cfg.source != "checkpoint":
        kwargs.update(depth_convention=cfg.depth_convention, class_map=cfg.class_map,
                      student_classes=student_classes, trust_remote_code=cfg.trust_remote_code, options=cfg.options)
        if cfg.source in DETECTION_SOURCES:
            kwargs["student_detection_classes"] = student_detection_classes
    elif cfg.class_map or cfg.depth_convention not in (None, "metric"):
        raise ConfigError(f"teacher '{cfg.name}': a polydistill checkpoint already predicts the student's classes "
                          "in metres; remove class_map and depth_convention")
    else:
        kwargs["options"] = cfg.options
    return factory(**kwargs)
