"""``uncertainty`` — homoscedastic uncertainty task weighting (Kendall, Gal & Cipolla, CVPR 2018).

``L = Σ_t exp(−s_t)·L_t + s_t`` with learnable ``s_t = log σ_t²`` (initialised 0, so λ_t = 1 at the
start like ``equal``). This is the common simplified form (one formula for regression and
classification; the paper has factors ½ for regression). ``λ_t = exp(−s_t)`` is what gets logged.
The ``+ s_t`` regulariser is the auxiliary loss; the engine's optimizer updates ``s`` (own ``lr``).
"""

from __future__ import annotations

import torch
from pydantic import Field

from .base import Options, StepContext, TaskWeighting


class UncertaintyOptions(Options):
    lr: float | None = Field(None, gt=0, description="learning rate of the log-variances (default: train.lr)")


class UncertaintyWeighting(TaskWeighting):
    name = "uncertainty"
    Options = UncertaintyOptions

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        self.log_vars = torch.nn.Parameter(torch.zeros(len(task_names)))

    def weights(self, losses: dict[str, torch.Tensor], ctx: StepContext, grad_norms=None):
        lambdas, aux = {}, []
        for t, loss in losses.items():
            s = self.log_vars[self.task_names.index(t)].to(loss.device)
            lambdas[t] = torch.exp(-s)  # gradient reaches s through the task term
            aux.append(s)
        return lambdas, torch.stack(aux).sum()
