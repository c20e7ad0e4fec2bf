"""Weighting strategies: how much the student listens to each teacher and to each task.

Two levels compose (``distill.teacher_weighting`` × ``distill.task_weighting``):

* a :class:`TeacherWeighting` gives every teacher term of a task a weight *per sample* (or, through
  :meth:`TeacherWeighting.pixel_weights`, per pixel). Convention: weights have mean 1 over the teachers
  they are spread across, so ``static`` (all ones: the plain sum over teachers) is the reference scale;
* a :class:`TaskWeighting` gives every task loss ``L_t = gt_weight·L_gt + teacher_weight·Σ_k w_k·L_k
  (+ trajectory)`` a weight ``λ_t``.

No strategy ever calls ``backward`` or steps an optimizer. Strategies that learn by gradient
(uncertainty's log-variances, GradNorm's weights, the RL policy) expose parameters and return an
*auxiliary loss* whose gradient reaches only those parameters; the engine adds it to the total and
owns backward, mixed precision, gradient accumulation and synchronisation. Gradients a strategy needs
as *input* (GradNorm: the norm of each task loss's gradient on the shared feature map) are computed by
the engine and passed in. Everything a strategy remembers is in its ``state_dict`` so resume is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ...registry import parse_options
from ...tasks import Task
from ..objective import LossTerm


class Options(BaseModel):
    """Hyperparameters of one strategy; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class StepContext:
    """Where training is; strategies draw randomness from :meth:`generator`, so resume is exact."""

    step: int
    steps_per_epoch: int
    seed: int = 0
    micro_batch: int = 0
    #: with several processes, each task loss averaged over every rank's batch (the engine all-reduces them);
    #: strategies keep statistics of these, not of their own rank's loss, so every rank agrees
    global_losses: dict[str, float] | None = None

    def loss_value(self, task: str, local: torch.Tensor) -> torch.Tensor:
        """The detached loss of ``task`` for statistics: the all-rank mean when there is one, else ``local``."""
        if self.global_losses is not None and task in self.global_losses:
            return torch.tensor(self.global_losses[task], dtype=torch.float32, device=local.device)
        return local.detach().float()

    @property
    def epoch(self) -> int:
        return self.step // max(self.steps_per_epoch, 1)

    def generator(self, salt: int, device: torch.device | str = "cpu") -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(((self.seed * 1_000_003 + self.step) * 101 + self.micro_batch) * 7919 + salt)
        return g


class Strategy(nn.Module):
    """Shared plumbing: options, learnable parameters (own lr), non-tensor state for exact resume."""

    name: ClassVar[str] = "base"
    Options: ClassVar[type[Options]] = Options
    #: the engine passes per-task gradient norms on the shared feature map to :meth:`TaskWeighting.weights`
    needs_rep_grads: ClassVar[bool] = False

    def __init__(self, options: dict[str, Any] | None = None, where: str = "distill"):
        super().__init__()
        self.opts = parse_options(self.Options, dict(options or {}), f"{where} '{self.name}'")

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimizer groups for learnable parameters (the engine steps them with the student)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        lr = getattr(self.opts, "lr", None) or base_lr
        return [{"params": params, "lr": lr, "weight_decay": 0.0}]

    def after_step(self, ctx: StepContext) -> None:
        """Called once per optimizer step, after it (``ctx.step`` counts completed steps)."""

    def feedback(self, metrics: dict[str, dict[str, float]], step: int) -> dict[str, Any] | None:
        """Validation metrics of the student; return a record to log when the strategy updated."""
        return None


class TeacherWeighting(Strategy):
    """Weights of the teachers of each task, per sample (and optionally per pixel)."""

    #: the objective adds each teacher's error against labels and its confidence to teacher terms
    needs_teacher_stats: ClassVar[bool] = False
    #: the run evaluates every teacher on the validation split once (see :meth:`set_teacher_metrics`)
    needs_teacher_metrics: ClassVar[bool] = False

    def setup(self, tasks: dict[str, Task], teachers_per_task: dict[str, list[str]]) -> None:
        self.tasks = tasks
        self.teachers_per_task = teachers_per_task

    def set_teacher_metrics(self, metrics: dict[str, dict[str, dict[str, float]]]) -> None:
        """``metrics[teacher][task][metric]`` on the validation split (strategies that compare with it)."""

    def pixel_weights(self, task_name: str, task: Task,
                      targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Per-pixel weights ``(B, 1, H, W)`` of each teacher of a task, or None (per-sample only)."""
        return None

    def sample_weights(self, task: str, terms: dict[str, LossTerm],
                       ctx: StepContext) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Detached ``(B,)`` weights per teacher of ``task`` and an auxiliary loss (or None)."""
        raise NotImplementedError


class TaskWeighting(Strategy):
    """Weights of the task losses."""

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)

    def weights(self, losses: dict[str, torch.Tensor], ctx: StepContext,
                grad_norms: dict[str, torch.Tensor] | None = None
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """``λ_t`` for each task present in ``losses`` and an auxiliary loss (or None)."""
        raise NotImplementedError


def ones_like_terms(terms: dict[str, LossTerm]) -> dict[str, torch.Tensor]:
    return {k: torch.ones_like(t.per_sample).detach() for k, t in terms.items()}


def stacked_losses(terms: dict[str, LossTerm]) -> torch.Tensor:
    """``(B, K)`` detached per-sample losses of the K teachers of a task (in ``terms`` order)."""
    return torch.stack([t.per_sample.detach().float() for t in terms.values()], dim=1)
