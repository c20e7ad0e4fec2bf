"""The weighting the engine sees: teacher-level × task-level strategies → one scalar.

``L = Σ_t c_t·λ_t·( gt_weight·L_gt,t + teacher_weight·Σ_k m_k·mean_b[w_k(b)·L_k,t(b)] + μ·L_traj,t ) + aux``

with ``c_t`` the static ``task_weights``, ``m_k`` the static ``teacher_weights``, ``w_k(b)`` the
teacher strategy's per-sample weights, ``λ_t`` the task strategy's weights, ``μ`` the trajectory weight
and ``aux`` the strategies' own auxiliary losses (gradients reach only their parameters). Computed in
two phases because GradNorm needs, between them, the gradient of each ``L_t`` on the shared features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...config import DistillConfig
from ...errors import ConfigError
from ...tasks import Task
from ..objective import GT, TRAJECTORY, LossTable, masked_mean
from .base import StepContext, TaskWeighting, TeacherWeighting


@dataclass
class TaskLosses:
    """Phase one: the loss of every task present in the batch, and what to log."""

    losses: dict[str, torch.Tensor]
    term_weights: dict[tuple[str, str], float]  # before task weighting
    teacher_weights: dict[tuple[str, str], float]  # mean teacher-strategy weight per (task, teacher)
    aux: list[torch.Tensor] = field(default_factory=list)


class Weighting(nn.Module):
    def __init__(self, teacher: TeacherWeighting, task: TaskWeighting, cfg: DistillConfig,
                 tasks: dict[str, Task], teachers_per_task: dict[str, list[str]]):
        super().__init__()
        self.teacher, self.task = teacher, task
        self.cfg = cfg
        self.tasks = tasks
        self.trajectory_weight = cfg.trajectory.weight if cfg.trajectory is not None else 0.0
        teacher.setup(tasks, teachers_per_task)
        task.setup(list(tasks))
        #: what each task distils from: its teachers, or a teacher strategy's stand-in (feedback's connector)
        self.teachers_per_task = getattr(teacher, "sources", teachers_per_task)
        kept = {k for names in self.teachers_per_task.values() for k in names}
        pairs = {f"{t}/{k}" for t, names in teachers_per_task.items() for k in names
                 if k not in self.teachers_per_task[t]}
        gone = {k for names in teachers_per_task.values() for k in names} - kept
        stale = [key for key in cfg.teacher_weights if key in pairs or key in gone]
        if stale:
            raise ConfigError(f"distill.teacher_weights sets {stale}, but the student no longer distils from those "
                              f"teachers directly (distill.teacher_weighting '{teacher.name}' fuses them); remove them")

    @property
    def needs_rep_grads(self) -> bool:
        return self.task.needs_rep_grads

    def rep_grad_norm(self, grad: torch.Tensor) -> torch.Tensor:
        """``g_t`` from a task loss's gradient on the shared features, as the task strategy defines it."""
        norm = getattr(self.task, "rep_grad_norm", None)
        return norm(grad) if norm is not None else grad.float().norm()

    @property
    def needs_teacher_stats(self) -> bool:
        return self.teacher.needs_teacher_stats

    @property
    def needs_teacher_metrics(self) -> bool:
        return self.teacher.needs_teacher_metrics

    def teacher_targets(self, teacher_outputs: dict[str, dict[str, torch.Tensor]],
                        batch: dict) -> dict[str, dict[str, torch.Tensor]]:
        """The outputs the objective distils from: the teachers', plus what a teacher strategy fuses from them
        (feedback's connector, as teacher ``"connector"``)."""
        fuse = getattr(self.teacher, "fuse", None)
        return fuse(teacher_outputs, batch) if fuse is not None else teacher_outputs

    def pixel_weights(self, task_name: str, task: Task, targets: dict[str, torch.Tensor]):
        return self.teacher.pixel_weights(task_name, task, targets)

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        return self.teacher.param_groups(base_lr) + self.task.param_groups(base_lr)

    # ------------------------------------------------------------------------------------- phases

    def task_losses(self, table: LossTable, ctx: StepContext) -> TaskLosses:
        out = TaskLosses({}, {}, {})
        for name in self.tasks:
            parts = []
            gt = table.get((name, GT))
            if gt is not None:
                parts.append(self.cfg.gt_weight * gt.value)
                out.term_weights[(name, GT)] = self.cfg.gt_weight
            terms = {k: table[(name, k)] for k in self.teachers_per_task.get(name, []) if (name, k) in table}
            if terms:
                # rl's reward 'official' adds the student's own label loss (MTKD-RL's reward)
                extra = {"gt": gt} if getattr(self.teacher, "needs_gt_term", False) else {}
                weights, aux = self.teacher.sample_weights(name, terms, ctx, **extra)
                if aux is not None:
                    out.aux.append(aux)
                for k, term in terms.items():
                    static = self.cfg.teacher_weight * self.cfg.teacher_weights.get(
                        f"{name}/{k}", self.cfg.teacher_weights.get(k, 1.0))
                    parts.append(static * masked_mean(weights[k] * term.per_sample, term.mask))
                    shown = weights[k] * term.stats["pixel_weight"] if "pixel_weight" in term.stats else weights[k]
                    mean_w = float(masked_mean(shown.detach().float(), term.mask))
                    out.teacher_weights[(name, k)] = mean_w
                    out.term_weights[(name, k)] = static * mean_w
            traj = table.get((name, TRAJECTORY))
            if traj is not None:
                parts.append(self.trajectory_weight * traj.value)
                out.term_weights[(name, TRAJECTORY)] = self.trajectory_weight
            if parts:
                out.losses[name] = torch.stack(parts).sum()
        return out

    def total(self, phase: TaskLosses, ctx: StepContext, grad_norms: dict[str, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar to minimise and a flat log row (``weight/…``, ``task_weight/…``, ``teacher_weight/…``)."""
        if not phase.losses:
            raise ValueError("the loss table is empty: the batch carries no label and no teacher output")
        lambdas, aux = self.task.weights(phase.losses, ctx, grad_norms)
        total = sum(self.cfg.task_weights.get(t, 1.0) * lambdas[t] * loss for t, loss in phase.losses.items())
        extras = [*phase.aux, *([aux] if aux is not None else [])]
        for extra in extras:
            total = total + extra
        row: dict[str, float] = {}
        if extras:  # the strategies' own losses (they train only the strategies' parameters)
            row["aux_loss"] = float(sum(float(e.detach()) for e in extras))
        for t in phase.losses:
            row[f"task_weight/{t}"] = float(lambdas[t].detach())
        for (t, s), w in phase.term_weights.items():
            row[f"weight/{t}/{s}"] = self.cfg.task_weights.get(t, 1.0) * float(lambdas[t].detach()) * w
        for (t, k), w in phase.teacher_weights.items():
            row[f"teacher_weight/{t}/{k}"] = w
        return total, row

    # ----------------------------------------------------------------------------------- hooks

    def after_step(self, ctx: StepContext) -> None:
        self.teacher.after_step(ctx)
        self.task.after_step(ctx)

    def feedback(self, metrics: dict[str, dict[str, float]], step: int) -> dict[str, Any]:
        """Forward validation metrics; returns the updates the strategies made (for val.jsonl)."""
        records = {}
        for level, strategy in (("teacher", self.teacher), ("task", self.task)):
            record = strategy.feedback(metrics, step)
            if record:
                records[f"{level}_weighting"] = record
        return records

    def log_columns(self) -> list[str]:
        cols = ["aux_loss"] + [f"task_weight/{t}" for t in self.tasks]
        cols += [f"teacher_weight/{t}/{k}" for t in self.tasks for k in self.teachers_per_task.get(t, [])]
        return cols
