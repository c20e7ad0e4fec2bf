"""Fixed weights: ``static`` teachers (all ones, i.e. the plain sum of a task's teacher terms, scaled by
``distill.teacher_weights``) and ``equal`` tasks (scaled by ``distill.task_weights``). The AVER baseline
of MTKD-RL and the reference every adaptive strategy is compared against."""

from __future__ import annotations

import torch

from ..objective import LossTerm
from .base import StepContext, TaskWeighting, TeacherWeighting, ones_like_terms


class StaticTeacherWeighting(TeacherWeighting):
    name = "static"

    def sample_weights(self, task: str, terms: dict[str, LossTerm], ctx: StepContext):
        return ones_like_terms(terms), None


class EqualTaskWeighting(TaskWeighting):
    name = "equal"

    def weights(self, losses: dict[str, torch.Tensor], ctx: StepContext, grad_norms=None):
        return {t: torch.ones((), device=loss.device) for t, loss in losses.items()}, None
