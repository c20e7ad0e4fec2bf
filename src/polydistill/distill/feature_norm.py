"""Teacher-feature normalisation: put every teacher's features on one scale before the student regresses them.

Why: foundation-model features differ wildly in scale and shape (a few CLIP channels carry most of the
energy, SAM's are tiny, DINOv2's heavy-tailed), so a shared student would listen mostly to whichever
teacher has the largest values. Two remedies from the literature; their statistics are buffers, so the
normaliser lives in the student's state dict (saved, resumed exactly, dropped with the projector at export):

* ``standardize`` — per-channel ``(t − μ) / max(σ, 1e-3)`` with *running* statistics in training too: a
  cumulative average over the first ``1 / min_momentum`` batches, then an exponential average with momentum
  ``min_momentum``, of the mean and the (biased) variance. This differs from DUNE on purpose: our batches
  are small, and one batch's statistics would make the target jump from step to step.
* ``standardize_batch`` — DUNE's TeacherNorm (``model/teacher_norm.py``, parity test in
  ``tests/test_parity_dune.py``): a training batch is standardised with *its own* mean and unbiased std over
  all its tokens; the mean and the std (not the variance) are tracked by an exponential average whose
  momentum follows DUNE's cosine schedule from 1.0 at the first step to 0.001 at the last, and evaluation
  uses the tracked values. The schedule needs the run's progress (:func:`set_training_progress`, called by
  the trainer each step); without it the momentum is ``max(1/n, min_momentum)`` after ``n`` batches.
* ``phi_s`` — RADIO's PHI-S (arXiv 2410.01680, ``examples/common/phi_s.py``): rotate the centred features
  into the eigenbasis of their covariance, then by a normalised Hadamard matrix, which spreads the variance
  equally over all dimensions; one scalar ``α = sqrt(trace Σ / D)`` makes it unit variance. Running
  statistics as in ``standardize`` (RADIO computes the covariance once, unbiased, over a data set; ours is the
  biased running one, so outputs agree up to ``sqrt(N / (N − 1))`` on one batch — parity test in
  ``tests/test_parity_radio.py``). :func:`hadamard` builds an exact Hadamard matrix of order ``C`` where a
  construction is known here (Sylvester, Paley I and II, and their Kronecker products with Sylvester: 384,
  768, 1152, 1280, 1536 …); only for the other sizes (any ``C`` not a multiple of 4 but 1 and 2, and
  multiples of 4 without a construction here, e.g. 92) are the features padded to
  ``D = 2^ceil(log2 C)`` dimensions, which carry no signal of their own but receive an equal share of the
  variance (RADIO uses an approximate random orthogonal matrix there instead).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

NORMS = ("none", "standardize", "standardize_batch", "phi_s")

#: DUNE's teacher-norm momentum schedule (``--tnorm_ema_momentum_start`` / ``_end``)
DUNE_MOMENTUM_START, DUNE_MOMENTUM_END = 1.0, 0.001


# ------------------------------------------------------------------------------------------ Hadamard


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _sylvester(n: int) -> torch.Tensor:
    """``H_{2m} = [[H_m, H_m], [H_m, −H_m]]`` from ``H_1 = [1]``; ±1 entries, ``n`` a power of two."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _jacobsthal(q: int) -> torch.Tensor:
    """``Q[a, b] = χ(a − b)`` over GF(q), q prime: χ the quadratic character (0, +1 on squares, −1 else)."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if r in squares else -1.0 for r in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    return chi[(idx[:, None] - idx[None, :]) % q]


def _paley_one(q: int) -> torch.Tensor:
    """Order ``q + 1`` for a prime ``q ≡ 3 (mod 4)``: ``I + [[0, 1ᵀ], [−1, Q]]`` (Q is skew then)."""
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
    return torch.eye(q + 1, dtype=torch.float64) + s


def _paley_two(q: int) -> torch.Tensor:
    """Order ``2(q + 1)`` for a prime ``q ≡ 1 (mod 4)``: in the symmetric ``C = [[0, 1ᵀ], [1, Q]]`` every 0
    (the diagonal) becomes ``[[1, −1], [−1, −1]]`` and every ±1 becomes ``±[[1, 1], [1, −1]]``."""
    c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
    on = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, on) + torch.kron(torch.eye(q + 1, dtype=torch.float64), zero)


def _paley_kind(m: int) -> str | None:
    """Which Paley construction gives order ``m`` ("I", "II") or None."""
    if _is_prime(m - 1) and (m - 1) % 4 == 3:
        return "I"
    if m % 2 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return "II"
    return None


def _recipe(n: int) -> tuple[int, int, str | None] | None:
    """``(2^i, core order, Paley kind)`` for order ``n``, or None: Sylvester alone for powers of two, else
    ``Sylvester(2^i) ⊗ Paley(n / 2^i)`` with the largest ``2^i`` (the smallest core) that has a Paley matrix."""
    if n < 1:
        return None
    if n & (n - 1) == 0:
        return n, 1, None
    twos = (n & -n).bit_length() - 1  # n = 2^twos · odd
    for i in range(twos, -1, -1):
        kind = _paley_kind(n >> i)
        if kind is not None:
            return 1 << i, n >> i, kind
    return None


@functools.lru_cache(maxsize=4)
def _construct(n: int) -> torch.Tensor:
    """The ±1 Hadamard matrix of order ``n`` that :func:`_recipe` describes (cached: PHI-S asks every step)."""
    recipe = _recipe(n)
    assert recipe is not None
    syl, m, kind = recipe
    if kind is None:
        return _sylvester(syl)
    core = _paley_one(m - 1) if kind == "I" else _paley_two(m // 2 - 1)
    return torch.kron(_sylvester(syl), core)


def has_hadamard(n: int) -> bool:
    """Whether :func:`hadamard` constructs a matrix of order ``n``."""
    return _recipe(n) is not None


def padded_dim(channels: int) -> int:
    """PHI-S's output dimension: ``channels`` itself when :func:`hadamard` has that order, else the next
    power of two (the features are zero-padded to it)."""
    return channels if has_hadamard(channels) else 1 << math.ceil(math.log2(channels))


def hadamard(n: int) -> torch.Tensor:
    """An ``n × n`` Hadamard matrix divided by ``sqrt(n)`` (orthogonal, every entry ±1/√n), float64.

    Sylvester for powers of two, Paley I (``q + 1``, q prime ≡ 3 mod 4), Paley II (``2(q + 1)``, q prime
    ≡ 1 mod 4), and Kronecker products of Sylvester with either; other orders raise ValueError (see
    :func:`has_hadamard`)."""
    if not has_hadamard(n):
        raise ValueError(f"no Hadamard matrix of order {n} is constructed here (Sylvester 2^k, Paley I q+1 with "
                         f"q prime ≡ 3 mod 4, Paley II 2(q+1) with q prime ≡ 1 mod 4, times 2^k); "
                         f"use padded_dim({n}) = {padded_dim(n) if n >= 1 else '?'} dimensions")
    return _construct(n) / math.sqrt(n)


# ------------------------------------------------------------------------------------------ the norm


def dune_momentum(progress: float, start: float = DUNE_MOMENTUM_START, end: float = DUNE_MOMENTUM_END) -> float:
    """DUNE's cosine schedule at ``progress = step / total_steps`` ∈ [0, 1): ``start`` at 0, ``end`` at 1."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def set_training_progress(module: nn.Module, step: int, total_steps: int) -> None:
    """Tell every :class:`TeacherNorm` in ``module`` where training is (``step`` 0-based, before the step):
    ``standardize_batch`` takes its momentum from it. Called by the trainer before each step; cheap."""
    for m in module.modules():
        if isinstance(m, TeacherNorm):
            m.progress = step / max(total_steps, 1)


class TeacherNorm(nn.Module):
    """Normalises ``(B, C, h, w)`` teacher features; updates its statistics in training mode."""

    def __init__(self, channels: int, mode: str = "standardize", min_momentum: float = 0.01, eps: float = 1e-3):
        super().__init__()
        if mode not in NORMS:
            raise ValueError(f"feature norm must be one of {NORMS}, got '{mode}'")
        self.channels, self.mode, self.min_momentum, self.eps = channels, mode, min_momentum, eps
        self.out_channels = padded_dim(channels) if mode == "phi_s" else channels
        #: ``standardize_batch``: training progress in [0, 1) set by :func:`set_training_progress` (None: unset)
        self.progress: float | None = None
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("mean", torch.zeros(channels))
        if mode == "standardize":
            self.register_buffer("var", torch.ones(channels))
        elif mode == "standardize_batch":
            self.register_buffer("std", torch.ones(channels))
        elif mode == "phi_s":
            self.register_buffer("cov", torch.eye(channels))
            self.register_buffer("transform", torch.eye(self.out_channels, channels))

    def extra_repr(self) -> str:
        return f"{self.channels} -> {self.out_channels}, mode={self.mode}"

    def _tokens(self, features: torch.Tensor) -> torch.Tensor:
        return features.detach().float().transpose(0, 1).reshape(self.channels, -1)  # (C, tokens)

    def _batch_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased std over the tokens of ``(C, tokens)`` (std 0 for a single token)."""
        std = x.std(1) if x.shape[1] > 1 else torch.zeros_like(x[:, 0])
        return x.mean(1), std

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        """Fold a batch of features into the tracked statistics (and refresh the PHI-S rotation)."""
        if self.mode == "none":
            return
        self._fold(self._tokens(features))

    def _fold(self, x: torch.Tensor) -> None:
        self.count += 1
        momentum = max(1.0 / float(self.count), self.min_momentum)
        if self.mode == "standardize_batch":
            self._track(*self._batch_moments(x))
            return
        mean = x.mean(1)
        centred = x - mean[:, None]
        if self.mode == "standardize":
            var = centred.pow(2).mean(1)
            # the running variance also absorbs the spread of batch means around the running mean
            shift = (mean - self.mean).pow(2) * (1 - momentum)
            self.var.mul_(1 - momentum).add_(momentum * (var + shift))
            self.mean.mul_(1 - momentum).add_(momentum * mean)
            return
        cov = centred @ centred.T / x.shape[1]
        delta = (mean - self.mean)[:, None]
        self.cov.mul_(1 - momentum).add_(momentum * (cov + (1 - momentum) * delta @ delta.T))
        self.mean.mul_(1 - momentum).add_(momentum * mean)
        self._refresh_transform()

    def _track(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """``standardize_batch``: exponential averages of the batch mean and std (DUNE's cosine momentum)."""
        momentum = dune_momentum(self.progress) if self.progress is not None else max(
            1.0 / float(self.count), self.min_momentum)
        self.mean.mul_(1 - momentum).add_(momentum * mean)
        self.std.mul_(1 - momentum).add_(momentum * std)

    def _refresh_transform(self) -> None:
        cov = self.cov.double()
        eigenvalues, eigenvectors = torch.linalg.eigh((cov + cov.T) / 2)
        d = self.out_channels
        alpha = math.sqrt(max(float(eigenvalues.clamp_min(0).sum()) / d, self.eps**2))
        rotation = hadamard(d)[:, : self.channels] @ eigenvectors.T  # (D, C): eigenbasis, then Hadamard
        self.transform.copy_((rotation / alpha).float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` → normalised ``(B, out_channels, h, w)``; statistics update in training mode."""
        if self.mode == "none":
            return features.float()
        if self.mode == "standardize_batch":
            return self._standardize_batch(features)
        if self.training:
            self.update(features)
        x = features.float() - self.mean.view(1, -1, 1, 1)
        if self.mode == "standardize":
            return x / self.var.sqrt().clamp_min(self.eps).view(1, -1, 1, 1)
        return torch.einsum("dc,bchw->bdhw", self.transform, x)

    def _standardize_batch(self, features: torch.Tensor) -> torch.Tensor:
        """Training: the batch's own statistics (then tracked); eval: the tracked ones."""
        if self.training:
            with torch.no_grad():
                mean, std = self._batch_moments(self._tokens(features))
                self.count += 1
                self._track(mean, std)
        else:
            mean, std = self.mean, self.std
        return (features.float() - mean.view(1, -1, 1, 1)) / std.clamp_min(self.eps).view(1, -1, 1, 1)
