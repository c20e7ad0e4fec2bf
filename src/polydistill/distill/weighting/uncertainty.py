"""``uncertainty`` — homoscedastic uncertainty task weighting (Kendall, Gal & Cipolla, CVPR 2018).

Learnable ``s_t = log σ_t²``, one per task; the ``s`` term is the auxiliary loss (the engine's optimizer
updates ``s`` with its own ``lr``); ``λ_t`` is what gets logged. Two conventions, same stationary point
``s* = log L_t``:

* ``kendall`` (default): ``L = Σ_t exp(−s_t)·L_t + s_t``, ``s_t`` initialised 0 (``λ_t = 1`` at the start,
  like ``equal``). The common simplified form: one formula for regression and classification (the paper
  has factors ½ for regression).
* ``libmtl``: ``L = Σ_t L_t / (2·exp(s_t)) + s_t / 2`` with ``s_t`` initialised −0.5 (``λ_t ≈ 0.824``), as
  LibMTL's ``weighting/UW.py`` (loss, weights and gradients pinned by ``tests/test_parity_libmtl.py``).
  Exactly half of ``kendall`` at the same ``s``: under SGD it acts like half the learning rate on ``s`` and
  on the student; Adam is nearly invariant to the factor.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from .base import Options, StepContext, TaskWeighting


class UncertaintyOptions(Options):
    lr: float | None = Field(None, gt=0, description="learning rate of the log-variances (default: train.lr)")
    convention: Literal["kendall", "libmtl"] = Field(
        "kendall", description="kendall: exp(−s)·L + s, s₀ = 0; libmtl: L/(2·exp(s)) + s/2, s₀ = −0.5 (LibMTL's UW)")


class UncertaintyWeighting(TaskWeighting):
    name = "uncertainty"
    Options = UncertaintyOptions

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        start = -0.5 if self.opts.convention == "libmtl" else 0.0
        self.log_vars = torch.nn.Parameter(torch.full((len(task_names),), start))

    def weights(self, losses: dict[str, torch.Tensor], ctx: StepContext, grad_norms=None):
        half = self.opts.convention == "libmtl"
        lambdas, aux = {}, []
        for t, loss in losses.items():
            s = self.log_vars[self.task_names.index(t)].to(loss.device)
            lambdas[t] = 0.5 * torch.exp(-s) if half else torch.exp(-s)  # gradient reaches s through the task term
            aux.append(0.5 * s if half else s)
        return lambdas, torch.stack(aux).sum()
