"""The objective: per batch, the table of loss terms ``L[task, source]``.

``source`` is ``"gt"`` (ground truth), a teacher's name, or ``"trajectory"`` (the student's own past,
see :mod:`.trajectory`). Each term keeps its per-sample values and a per-sample mask (label present /
teacher output present), so that weighting methods can see exactly what was measured and nothing is
averaged over samples that carry no signal. Teacher terms can also carry per-sample statistics that
adaptive strategies use as their state (the teacher's own error against the labels, its confidence).
The objective never calls ``backward``: turning the table into one scalar is the weighting's job,
stepping is the engine's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..tasks import Task

GT = "gt"
TRAJECTORY = "trajectory"

#: (task name, task, {teacher: task-space output}) -> {teacher: (B, 1, H, W) pixel weights} or None
PixelWeighting = Callable[[str, Task, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None]


@dataclass
class LossTerm:
    per_sample: torch.Tensor  # (B,)
    mask: torch.Tensor  # (B,) bool: the sample carries this signal
    #: teacher terms only, when requested: "teacher_error" (B,) (NaN where unlabelled), "confidence" (B,)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def value(self) -> torch.Tensor:
        """Mean over the samples that carry the signal (0, with a graph, when none does)."""
        return masked_mean(self.per_sample, self.mask)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


LossTable = dict[tuple[str, str], LossTerm]


def is_teacher(source: str) -> bool:
    return source not in (GT, TRAJECTORY)


class Objective:
    """Computes the loss table from raw student outputs, the batch targets and teacher outputs."""

    def __init__(self, tasks: dict[str, Task], teachers_per_task: dict[str, list[str]],
                 trajectory_tasks: list[str] | None = None, teacher_kinds: dict[tuple[str, str], str] | None = None,
                 teacher_targets: str = "all"):
        if teacher_targets not in ("all", "unlabelled"):
            raise ValueError(f"teacher_targets must be 'all' or 'unlabelled', got {teacher_targets!r}")
        #: "unlabelled": a teacher term counts only on the samples without that task's label
        self.teacher_targets = teacher_targets
        self.tasks = tasks
        self.teachers_per_task = teachers_per_task
        #: (task, teacher) -> the teacher's output convention (e.g. relative depth); "default" otherwise
        self.teacher_kinds = dict(teacher_kinds or {})
        self.trajectory_tasks = list(trajectory_tasks or [])

    def sources(self) -> list[tuple[str, str]]:
        """Every (task, source) pair this objective can produce, in a stable order (for logs)."""
        pairs = []
        for task in self.tasks:
            pairs.append((task, GT))
            pairs.extend((task, t) for t in self.teachers_per_task.get(task, []))
            if task in self.trajectory_tasks:
                pairs.append((task, TRAJECTORY))
        return pairs

    def __call__(self, raw: dict[str, torch.Tensor], batch: dict,
                 teacher_outputs: dict[str, dict[str, torch.Tensor]] | None = None, *,
                 memory_outputs: dict[str, torch.Tensor] | None = None,
                 pixel_weighting: PixelWeighting | None = None, teacher_stats: bool = False) -> LossTable:
        table: LossTable = {}
        teacher_outputs = teacher_outputs or {}
        for name, task in self.tasks.items():
            out = raw[name].float()
            valid = batch["valid"].get(name)  # None: a task without labels (features)
            if valid is not None and bool(valid.any()):
                table[(name, GT)] = LossTerm(task.supervised_loss(out, batch["targets"][name]), valid)
            targets = {}
            for teacher in self.teachers_per_task.get(name, []):
                target = teacher_outputs.get(teacher, {}).get(name)
                if target is not None:
                    targets[teacher] = target.float()
            pixel_weights = pixel_weighting(name, task, targets) if pixel_weighting and targets else None
            for teacher, target in targets.items():
                weight = None
                if pixel_weights is not None:
                    weight = pixel_weights[teacher]
                    if weight.shape[-2:] != out.shape[-2:]:
                        weight = F.interpolate(weight, size=out.shape[-2:], mode="bilinear", align_corners=False)
                by = getattr(task, "weight_by", None)  # feature imitation weighted by detection disagreement
                if by is not None and by in raw and by in teacher_outputs.get(teacher, {}):
                    weight = self.tasks[by].disagreement(raw[by], teacher_outputs[teacher][by])
                mask = torch.ones(out.shape[0], dtype=torch.bool, device=out.device)
                if self.teacher_targets == "unlabelled" and valid is not None:
                    mask = ~valid.to(out.device)
                kind = self.teacher_kinds.get((name, teacher), "default")
                term = LossTerm(task.distill_loss(out, target, weight, kind), mask)
                if teacher_stats and kind in ("default", "metric"):
                    term.stats.update(self._teacher_stats(task, target, batch["targets"][name], valid))
                if weight is not None:
                    term.stats["pixel_weight"] = weight.detach().flatten(1).mean(1)
                table[(name, teacher)] = term
            memory = (memory_outputs or {}).get(name)
            if memory is not None:
                mask = torch.ones(out.shape[0], dtype=torch.bool, device=out.device)
                table[(name, TRAJECTORY)] = LossTerm(task.distill_loss(out, memory.float()), mask)
        return table

    @staticmethod
    @torch.no_grad()
    def _teacher_stats(task: Task, target: torch.Tensor, label: torch.Tensor,
                       valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's own loss against the labels (NaN where a sample has none) and mean confidence."""
        teacher_raw = task.raw_from_output(target)
        if not task.box_targets and teacher_raw.shape[-2:] != label.shape[-2:]:
            teacher_raw = F.interpolate(teacher_raw, size=label.shape[-2:], mode="bilinear", align_corners=False)
        error = torch.full((target.shape[0],), float("nan"), device=target.device)
        if bool(valid.any()):
            error[valid] = task.supervised_loss(teacher_raw[valid], label[valid]).float()
        confidence = task.confidence(target)
        conf = confidence.flatten(1).mean(1) if confidence is not None else torch.ones_like(error)
        return {"teacher_error": error, "confidence": conf}
