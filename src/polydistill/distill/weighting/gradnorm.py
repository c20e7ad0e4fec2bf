"""``gradnorm`` — GradNorm (Chen et al., ICML 2018), on the shared representation ("rep_grad" as LibMTL).

Learnable weights ``λ_t`` (initialised 1). Each step the engine passes ``g_t = ‖∇_z L_t‖``, the norm of
the gradient of each task loss on the shared feature map ``z`` (the neck output). With
``G_t = λ_t·g_t``, the relative inverse training rate ``r_t = (L_t/L_t(0)) / mean_j(L_j/L_j(0))`` and
the asymmetry ``α`` (paper default 1.5), the auxiliary loss ``Σ_t |G_t − mean(G)·r_t^α|`` (target held
constant) moves the weights towards equal gradient norms scaled by how far behind each task is. The
task losses use ``λ`` detached, so only the auxiliary loss trains it. After every optimizer step the
weights are renormalised to sum to the number of tasks. With several processes the losses (``ctx.loss_value``)
and gradient norms it receives are all-rank means and the engine averages the weights' gradients, so ``L(0)``,
the targets and the weights agree on every rank.
"""

from __future__ import annotations

import torch
from pydantic import Field

from .base import Options, StepContext, TaskWeighting


class GradNormOptions(Options):
    alpha: float = Field(1.5, ge=0, description="asymmetry: how much lagging tasks are favoured")
    lr: float | None = Field(None, gt=0, description="learning rate of the weights (default: train.lr)")


class GradNormWeighting(TaskWeighting):
    name = "gradnorm"
    Options = GradNormOptions
    needs_rep_grads = True

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        n = len(task_names)
        self.task_w = torch.nn.Parameter(torch.ones(n))
        self.register_buffer("initial", torch.full((n,), float("nan")))

    def weights(self, losses: dict[str, torch.Tensor], ctx: StepContext, grad_norms=None):
        idx = [self.task_names.index(t) for t in losses]
        lambdas = {t: self.task_w[i].detach().to(losses[t].device) for t, i in zip(losses, idx)}
        current = torch.stack([ctx.loss_value(t, losses[t]) for t in losses]).to(self.initial.device)
        for j, i in enumerate(idx):
            if torch.isnan(self.initial[i]):
                self.initial[i] = current[j]
        if grad_norms is None or len(losses) < 2:
            return lambdas, None
        g = torch.stack([grad_norms[t].detach().float().to(self.task_w.device) for t in losses])
        w = self.task_w[idx]
        G = w * g
        ratio = current / self.initial[idx].clamp_min(1e-12)
        r = ratio / ratio.mean()
        target = (G.mean() * r**self.opts.alpha).detach()
        return lambdas, (G - target).abs().sum()

    def after_step(self, ctx: StepContext) -> None:
        with torch.no_grad():
            self.task_w.clamp_(min=1e-3)
            self.task_w.mul_(len(self.task_names) / self.task_w.sum())
