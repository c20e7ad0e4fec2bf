"""``confidence`` — per-pixel weighting of a task's teachers by how sure each one is.

A natural baseline none of the five papers ships. Per pixel, teacher k gets
``w_k = K · c_k^γ / Σ_j c_j^γ`` (mean 1 over the K teachers, so the scale matches ``static``), where
``c_k`` is the task's own confidence of the teacher's output (segmentation: 1 − normalised entropy).
Tasks whose outputs carry no confidence (metric depth) use agreement instead:
``c_k = exp(−|raw_k − median_j raw_j| / τ)`` in the task's raw space (log-depth), which down-weights an
outlier among three or more teachers and gives two teachers equal weights. One teacher: weight 1.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ...tasks import Task
from ..objective import LossTerm
from .base import Options, StepContext, TeacherWeighting, ones_like_terms


class ConfidenceOptions(Options):
    gamma: float = Field(1.0, gt=0, description="sharpness: weights ∝ confidence**gamma")
    tau: float = Field(0.1, gt=0, description="agreement scale in raw units for tasks without confidence")
    floor: float = Field(1e-3, gt=0, description="smallest confidence (keeps weights finite)")


class ConfidenceWeighting(TeacherWeighting):
    name = "confidence"
    Options = ConfidenceOptions

    def pixel_weights(self, task_name: str, task: Task, targets: dict[str, torch.Tensor]):
        if len(targets) < 2:
            return None
        confs = [task.confidence(t) for t in targets.values()]
        if any(c is None for c in confs):
            raws = torch.stack([task.raw_from_output(t).float() for t in targets.values()])  # (K, B, C, H, W)
            ordered = raws.sort(dim=0).values
            k = ordered.shape[0]
            median = (ordered[(k - 1) // 2] + ordered[k // 2]) / 2  # the true median, also for even K
            dev = (raws - median).abs().mean(2, keepdim=True)
            confs = list(torch.exp(-dev / self.opts.tau))
        c = torch.stack([x.float() for x in confs]).clamp_min(self.opts.floor) ** self.opts.gamma
        w = len(targets) * c / c.sum(0, keepdim=True)
        return {name: w[i].detach() for i, name in enumerate(targets)}

    def sample_weights(self, task: str, terms: dict[str, LossTerm], ctx: StepContext):
        return ones_like_terms(terms), None  # the weighting happened per pixel inside the losses
