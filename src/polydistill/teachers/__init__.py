"""Teachers: frozen models with a contract (see :mod:`polydistill.teachers.base`) and their sources."""

from __future__ import annotations

from collections.abc import Callable

from ..config import TeacherConfig
from ..registry import Registry
from .base import Teacher
from .checkpoint import CheckpointTeacher

TEACHER_SOURCES: Registry[Callable[..., Teacher]] = Registry("teacher source")
TEACHER_SOURCES.register("checkpoint")(CheckpointTeacher)

__all__ = ["TEACHER_SOURCES", "CheckpointTeacher", "Teacher", "build_teacher"]


def build_teacher(cfg: TeacherConfig) -> Teacher:
    return TEACHER_SOURCES.get(cfg.source)(name=cfg.name, path=cfg.path, tasks=cfg.tasks)
