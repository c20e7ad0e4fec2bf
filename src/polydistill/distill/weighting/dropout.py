"""``dropout`` — teacher dropping of UNIC/DUNE (Sariyildiz et al., CVPR 2025; digest §2(b).6).

Per image and per task, the teacher with the *highest* loss always keeps coefficient 1 (the student is
furthest from it, so it has the most left to teach); every other teacher is dropped with probability
``p`` (default 0.5, DUNE's). The keep coefficients ``c`` are detached; ``normalise`` says how they become
weights, both scaled by the number of teachers K so that keeping everyone matches ``static``:

* ``image`` (default): per image, ``K·c / Σ_k c`` — every image weighs the same, however many teachers it
  kept. This differs from DUNE.
* ``batch``: DUNE's ``Σ c·ℓ / Σ c`` over the whole batch (``model/teacher_dropping.py``; parity test in
  ``tests/test_parity_dune.py``: the task's teacher term is K times DUNE's loss), so an image that kept more
  teachers weighs more. Samples a teacher does not cover (its term's mask) get no coefficient and cannot
  be the highest-loss teacher.

The keep draws are the same in both modes and come from a generator seeded by (seed, step): resume is
exact. A task with one teacher is unaffected.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..objective import LossTerm
from .base import Options, StepContext, TeacherWeighting, ones_like_terms, stacked_losses


class DropoutOptions(Options):
    p: float = Field(0.5, ge=0.0, le=1.0, description="probability of dropping a non-highest-loss teacher")
    normalise: Literal["image", "batch"] = Field(
        "image", description="image: K·c/Σ_k c per image (every image weighs 1/B); batch: DUNE's Σ c·ℓ / Σ c")


def dropout_weights(keep: torch.Tensor, normalise: str = "image", mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, K)`` per-sample weights from keep coefficients ``keep`` (1 kept, 0 dropped).

    The engine averages each teacher's ``w·ℓ`` over the samples its mask covers (``n_k`` of them) and sums
    over teachers; ``batch`` therefore uses ``w = K·n_k·c / Σ c`` so the sum is ``K·Σ c·ℓ / Σ c``."""
    b, k = keep.shape
    coef = keep.float()
    if normalise == "image":
        return k * coef / coef.sum(1, keepdim=True)
    if mask is not None:
        coef = coef * mask.float()
    counts = mask.float().sum(0, keepdim=True) if mask is not None else coef.new_full((1, k), float(b))
    return k * counts * coef / coef.sum().clamp(min=1.0)


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
        mask = None
        if self.opts.normalise == "batch":
            mask = torch.stack([t.mask.to(losses.device) for t in terms.values()], dim=1)
            losses = losses.masked_fill(~mask, float("-inf"))
        keep[torch.arange(b, device=losses.device), losses.argmax(1)] = True
        coef = dropout_weights(keep, self.opts.normalise, mask)
        return {name: coef[:, i] for i, name in enumerate(terms)}, None
