"""``gradnorm`` — GradNorm (Chen et al., ICML 2018), on the shared representation.

Each step the engine passes ``g_t``, the norm of the gradient of each task loss on the shared feature map
``z`` (the neck output). With learnable weights ``λ_t``, ``G_t = λ_t·g_t``, the relative inverse training
rate ``r_t = (L_t/L_t(0)) / mean_j(L_j/L_j(0))`` and the asymmetry ``α`` (paper default 1.5), the auxiliary
loss ``Σ_t |G_t − mean(G)·r_t^α|`` (target held constant) moves the weights towards equal gradient norms
scaled by how far behind each task is. The task losses use ``λ`` detached, so only the auxiliary loss
trains it. With several processes the losses (``ctx.loss_value``) and gradient norms it receives are
all-rank means and the engine averages the weights' gradients, so ``L(0)``, the targets and the weights
agree on every rank. Two conventions:

* ``paper`` (default): raw weights ``λ_t`` initialised 1, clamped at 1e-3 and renormalised to sum to the
  number of tasks after every optimizer step; ``L(0)`` is the task's loss at its first step; GradNorm acts
  from the first step; ``g_t = ‖∇_z L_t‖`` over the whole ``(B, C, H, W)`` map.
* ``libmtl``: LibMTL's ``weighting/GradNorm.py`` with ``rep_grad=True``: ``λ = T·softmax(θ)`` with logits
  ``θ`` initialised 1 (no renormalisation needed); a warm-up of one ``period`` (default one epoch) with
  equal weights and no auxiliary loss, whose mean loss per task is ``L(0)``; ``g_t = ‖Σ_b ∇_{z_b} L_t‖``, the
  gradient summed over the batch before the norm (:meth:`GradNormWeighting.rep_grad_norm`, which the engine
  must use for that). G, the auxiliary loss, the weights and the logits are pinned against LibMTL for
  B = 1 and B = 8 and through a warm-up by ``tests/test_parity_libmtl.py``.

  Left different from LibMTL (engine and bookkeeping, not this formula): its epoch is its data loader's,
  here it is ``period`` optimizer steps (one epoch of this trainer by default; with gradient accumulation
  every micro-batch counts towards ``L(0)``); it weights ``L(0)`` by batch size (batches are equal here);
  it trains ``θ`` with the model's optimizer, learning rate and weight decay, here with ``lr`` and no weight
  decay; it assumes every task in every batch (here a task missing from the warm-up gets its ``L(0)`` from
  the first period it appears in, and stays out of the auxiliary loss until then). LibMTL's rep_grad=True
  backward also differs from this engine's: there ``λ`` scales only the gradient reaching the shared encoder
  (task heads get the unweighted ``∇L_t``), and during the warm-up epoch no gradient reaches the encoder;
  here the whole ``λ_t·L_t`` is backpropagated and the warm-up trains the whole student.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from .base import Options, StepContext, TaskWeighting


class GradNormOptions(Options):
    alpha: float = Field(1.5, ge=0, description="asymmetry: how much lagging tasks are favoured")
    lr: float | None = Field(None, gt=0, description="learning rate of the weights (default: train.lr)")
    convention: Literal["paper", "libmtl"] = Field(
        "paper", description="paper: raw weights renormalised, L(0) = first step; libmtl: LibMTL's GradNorm")
    period: int | None = Field(
        None, gt=0, description="libmtl only: warm-up steps whose mean loss is L(0) (default: one epoch)")

    @model_validator(mode="after")
    def _period_needs_libmtl(self) -> GradNormOptions:
        if self.period is not None and self.convention != "libmtl":
            raise ValueError("option 'period' applies only to convention: libmtl (the paper convention takes "
                             "L(0) from the first step); remove it or set convention: libmtl")
        return self


class GradNormWeighting(TaskWeighting):
    name = "gradnorm"
    Options = GradNormOptions
    needs_rep_grads = True

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        n = len(task_names)
        self.register_buffer("initial", torch.full((n,), float("nan")))
        if self.opts.convention == "libmtl":
            self.logits = torch.nn.Parameter(torch.ones(n))
            self.register_buffer("sums", torch.zeros(n, dtype=torch.float64))
            self.register_buffer("counts", torch.zeros(n, dtype=torch.float64))
        else:
            self.task_w = torch.nn.Parameter(torch.ones(n))

    def rep_grad_norm(self, grad: torch.Tensor) -> torch.Tensor:
        """``g_t`` from ``∇_z L_t`` of shape ``(B, …)``: the whole map's norm, or (libmtl) the batch sum's."""
        grad = grad.float()
        return grad.sum(0).norm() if self.opts.convention == "libmtl" else grad.norm()

    def weights(self, losses: dict[str, torch.Tensor], ctx: StepContext, grad_norms=None):
        if self.opts.convention == "libmtl":
            return self._libmtl_weights(losses, ctx, grad_norms)
        idx = [self.task_names.index(t) for t in losses]
        lambdas = {t: self.task_w[i].detach().to(losses[t].device) for t, i in zip(losses, idx)}
        current = torch.stack([ctx.loss_value(t, losses[t]) for t in losses]).to(self.initial.device)
        for j, i in enumerate(idx):
            if torch.isnan(self.initial[i]):
                self.initial[i] = current[j]
        if grad_norms is None or len(losses) < 2:
            return lambdas, None
        g = torch.stack([grad_norms[t].detach().float().to(self.task_w.device) for t in losses])
        return lambdas, self._aux(self.task_w[idx], g, current, idx)

    def _aux(self, w: torch.Tensor, g: torch.Tensor, current: torch.Tensor, idx: list[int]) -> torch.Tensor:
        G = w * g
        ratio = current / self.initial[idx].clamp_min(1e-12)
        r = ratio / ratio.mean()
        target = (G.mean() * r**self.opts.alpha).detach()
        return (G - target).abs().sum()

    def _period(self, ctx: StepContext) -> int:
        return self.opts.period or max(ctx.steps_per_epoch, 1)

    def _libmtl_weights(self, losses: dict[str, torch.Tensor], ctx: StepContext, grad_norms):
        idx = [self.task_names.index(t) for t in losses]
        current = torch.stack([ctx.loss_value(t, losses[t]) for t in losses]).to(self.initial.device)
        for j, i in enumerate(idx):  # L(0): the mean over the warm-up (or the first period the task is seen in)
            if torch.isnan(self.initial[i]):
                self.sums[i] += float(current[j])
                self.counts[i] += 1
        if ctx.step < self._period(ctx):
            return {t: losses[t].new_ones((), dtype=torch.float32) for t in losses}, None
        w = len(self.task_names) * torch.softmax(self.logits, dim=0)
        lambdas = {t: w[i].detach().to(losses[t].device) for t, i in zip(losses, idx)}
        known = [j for j, i in enumerate(idx) if not torch.isnan(self.initial[i])]
        if grad_norms is None or len(known) < 2:
            return lambdas, None
        sel = [idx[j] for j in known]
        g = torch.stack([grad_norms[t].detach().float().to(self.logits.device) for t in losses])[known]
        return lambdas, self._aux(w[sel], g, current[known], sel)

    def after_step(self, ctx: StepContext) -> None:
        if self.opts.convention == "libmtl":
            if ctx.step % self._period(ctx) == 0:
                with torch.no_grad():
                    fill = torch.isnan(self.initial) & (self.counts > 0)
                    means = (self.sums / self.counts.clamp_min(1)).to(self.initial.dtype)
                    self.initial.copy_(torch.where(fill, means, self.initial))
                    self.sums.zero_()
                    self.counts.zero_()
            return
        with torch.no_grad():
            self.task_w.clamp_(min=1e-3)
            self.task_w.mul_(len(self.task_names) / self.task_w.sum())
