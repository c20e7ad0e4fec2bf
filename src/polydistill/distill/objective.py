"""The objective: per batch, the table of loss terms ``L[task, source]``.

``source`` is ``"gt"`` (ground truth) or a teacher's name. Each term keeps its per-sample values and a
per-sample mask (label present / teacher output present), so that weighting methods can see exactly
what was measured and nothing is averaged over samples that carry no signal. The objective never calls
``backward``: turning the table into one scalar is the weighting's job, stepping is the engine's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..tasks import Task

GT = "gt"


@dataclass
class LossTerm:
    per_sample: torch.Tensor  # (B,)
    mask: torch.Tensor  # (B,) bool: the sample carries this signal

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def value(self) -> torch.Tensor:
        """Mean over the samples that carry the signal (0, with a graph, when none does)."""
        m = self.mask.to(self.per_sample.dtype)
        return (self.per_sample * m).sum() / m.sum().clamp(min=1.0)


LossTable = dict[tuple[str, str], LossTerm]


class Objective:
    """Computes the loss table from raw student outputs, the batch targets and teacher outputs."""

    def __init__(self, tasks: dict[str, Task], teachers_per_task: dict[str, list[str]]):
        self.tasks = tasks
        self.teachers_per_task = teachers_per_task

    def sources(self) -> list[tuple[str, str]]:
        """Every (task, source) pair this objective can produce, in a stable order (for logs)."""
        pairs = []
        for task in self.tasks:
            pairs.append((task, GT))
            pairs.extend((task, t) for t in self.teachers_per_task.get(task, []))
        return pairs

    def __call__(self, raw: dict[str, torch.Tensor], batch: dict,
                 teacher_outputs: dict[str, dict[str, torch.Tensor]] | None = None) -> LossTable:
        table: LossTable = {}
        teacher_outputs = teacher_outputs or {}
        for name, task in self.tasks.items():
            out = raw[name].float()
            valid = batch["valid"][name]
            if bool(valid.any()):
                table[(name, GT)] = LossTerm(task.supervised_loss(out, batch["targets"][name]), valid)
            for teacher in self.teachers_per_task.get(name, []):
                target = teacher_outputs.get(teacher, {}).get(name)
                if target is None:
                    continue
                mask = torch.ones(out.shape[0], dtype=torch.bool, device=out.device)
                table[(name, teacher)] = LossTerm(task.distill_loss(out, target.float()), mask)
        return table
