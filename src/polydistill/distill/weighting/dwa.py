"""``dwa`` — Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019 "MTAN").

``λ_t = T_n · exp(w_t / T) / Σ_j exp(w_j / T)`` with ``w_t = L̄_t(p−1) / L̄_t(p−2)``, the ratio of the
task's mean loss over the last two completed periods (an epoch by default, as in the paper; ``period``
in steps for short runs), temperature ``T = 2`` and ``T_n`` tasks. Equal weights until two periods are
complete. A task whose loss falls slowly gets more weight. Losses are detached: no gradient, no aux.
With the default period these are LibMTL's ``weighting/DWA.py`` weights (its epoch means of the training
loss, equal weights for epochs 0 and 1; pinned by ``tests/test_parity_libmtl.py``).
"""

from __future__ import annotations

import torch
from pydantic import Field

from .base import Options, StepContext, TaskWeighting


class DWAOptions(Options):
    temperature: float = Field(2.0, gt=0)
    period: int | None = Field(None, gt=0, description="steps per averaging period (default: one epoch)")


class DWAWeighting(TaskWeighting):
    name = "dwa"
    Options = DWAOptions

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        n = len(task_names)
        self.register_buffer("sums", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("history", torch.full((2, n), float("nan"), dtype=torch.float64))  # [p−2, p−1]

    def current(self) -> torch.Tensor:
        if not torch.isfinite(self.history).all():
            return torch.ones(len(self.task_names), dtype=torch.float64)
        ratio = self.history[1] / self.history[0].clamp_min(1e-12)
        return len(self.task_names) * torch.softmax(ratio / self.opts.temperature, dim=0)

    def weights(self, losses: dict[str, torch.Tensor], ctx: StepContext, grad_norms=None):
        lam = self.current()
        out = {}
        for t, loss in losses.items():
            i = self.task_names.index(t)
            self.sums[i] += float(ctx.loss_value(t, loss))
            self.counts[i] += 1
            out[t] = lam[i].to(device=loss.device, dtype=torch.float32)
        return out, None

    def after_step(self, ctx: StepContext) -> None:
        period = self.opts.period or ctx.steps_per_epoch
        if ctx.step % period:
            return
        means = torch.where(self.counts > 0, self.sums / self.counts.clamp_min(1), self.history[1])
        self.history.copy_(torch.stack([self.history[1], means]))
        self.sums.zero_()
        self.counts.zero_()
