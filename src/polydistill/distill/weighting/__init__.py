"""Weighting strategies, looked up by name from ``distill.teacher_weighting`` and ``distill.task_weighting``.

Teacher level: ``static``, ``feedback`` (JointDistill), ``rl`` (MTKD-RL), ``dropout`` (DUNE),
``confidence``. Task level: ``equal``, ``uncertainty`` (Kendall et al.), ``dwa`` (MTAN), ``gradnorm``.
"""

from __future__ import annotations

from ...config import DistillConfig
from ...registry import Registry
from ...tasks import Task
from .base import StepContext, TaskWeighting, TeacherWeighting
from .combine import TaskLosses, Weighting
from .confidence import ConfidenceWeighting
from .dropout import TeacherDropout
from .dwa import DWAWeighting
from .feedback import FeedbackWeighting
from .gradnorm import GradNormWeighting
from .rl import RLTeacherWeighting
from .static import EqualTaskWeighting, StaticTeacherWeighting
from .uncertainty import UncertaintyWeighting

TEACHER_WEIGHTINGS: Registry[type[TeacherWeighting]] = Registry("teacher weighting")
TASK_WEIGHTINGS: Registry[type[TaskWeighting]] = Registry("task weighting")
for _cls in (StaticTeacherWeighting, FeedbackWeighting, RLTeacherWeighting, TeacherDropout, ConfidenceWeighting):
    TEACHER_WEIGHTINGS.register()(_cls)
for _cls in (EqualTaskWeighting, UncertaintyWeighting, DWAWeighting, GradNormWeighting):
    TASK_WEIGHTINGS.register()(_cls)

__all__ = [
    "TASK_WEIGHTINGS", "TEACHER_WEIGHTINGS", "StepContext", "TaskLosses", "TaskWeighting", "TeacherWeighting",
    "Weighting", "build_weighting",
]


def build_weighting(cfg: DistillConfig, tasks: dict[str, Task], teachers_per_task: dict[str, list[str]]) -> Weighting:
    teacher = TEACHER_WEIGHTINGS.get(cfg.teacher_weighting.name)(
        cfg.teacher_weighting.options, where="distill.teacher_weighting")
    task = TASK_WEIGHTINGS.get(cfg.task_weighting.name)(cfg.task_weighting.options, where="distill.task_weighting")
    return Weighting(teacher, task, cfg, tasks, teachers_per_task)
