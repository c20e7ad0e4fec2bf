"""Static weights: w[task, source] = task weight × (gt weight | teacher weight × per-teacher weight)."""

from __future__ import annotations

from ...config import DistillConfig
from ..objective import GT, LossTable
from .base import Weighting


class StaticWeighting(Weighting):
    name = "static"

    def __init__(self, cfg: DistillConfig):
        self.cfg = cfg

    def weight_of(self, task: str, source: str) -> float:
        task_w = self.cfg.task_weights.get(task, 1.0)
        if source == GT:
            return task_w * self.cfg.gt_weight
        return task_w * self.cfg.teacher_weight * self.cfg.teacher_weights.get(source, 1.0)

    def weights(self, table: LossTable, step: int) -> dict[tuple[str, str], float]:
        return {key: self.weight_of(*key) for key in table}
