"""``dropout`` — teacher dropping of UNIC/DUNE (Sariyildiz et al., CVPR 2025; digest §2(b).6).

Per image and per task, the teacher with the *highest* loss always keeps coefficient 1 (the student is
furthest from it, so it has the most left to teach); every other teacher is dropped with probability
``p`` (default 0.5, DUNE's). Coefficients are detached and normalised by the kept count, as in DUNE
(``Σ c·ℓ / Σ c``), then multiplied by the number of teachers K so that the scale matches ``static``.
A task with one teacher is unaffected. Draws come from a generator seeded by (seed, step): resume is exact.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..objective import LossTerm
from .base import Options, StepContext, TeacherWeighting, ones_like_terms, stacked_losses


class DropoutOptions(Options):
    p: float = Field(0.5, ge=0.0, le=1.0, description="probability of dropping a non-highest-loss teacher")


class TeacherDropout(TeacherWeighting):
    name = "dropout"
    Options = DropoutOptions

    def sample_weights(self, task: str, terms: dict[str, LossTerm], ctx: StepContext):
        if len(terms) < 2:
            return ones_like_terms(terms), None
        losses = stacked_losses(terms)  # (B, K)
        b, k = losses.shape
        salt = list(self.tasks).index(task) + 1
        keep = torch.rand(b, k, generator=ctx.generator(salt)).to(losses.device) >= self.opts.p
        keep[torch.arange(b, device=losses.device), losses.argmax(1)] = True
        coef = keep.float()
        coef = k * coef / coef.sum(1, keepdim=True)
        return {name: coef[:, i] for i, name in enumerate(terms)}, None
