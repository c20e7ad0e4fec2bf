"""Weighting: turn the loss table into one scalar, and adapt as training goes.

The engine owns backward, mixed precision and gradient synchronisation; a weighting only returns
weights (and may learn from validation feedback through :meth:`Weighting.feedback`). This is the seam
for adaptive strategies (validation feedback, RL policies, teacher dropping, uncertainty...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from ..objective import LossTable


class Weighting(ABC):
    name: str = "base"

    @abstractmethod
    def weights(self, table: LossTable, step: int) -> dict[tuple[str, str], float]:
        """Weight of every term present in ``table``."""

    def combine(self, table: LossTable, step: int) -> tuple[torch.Tensor, dict[tuple[str, str], float]]:
        """The scalar to minimise and the weights used (for logging)."""
        weights = self.weights(table, step)
        total = sum(weights[key] * term.value for key, term in table.items())
        if not isinstance(total, torch.Tensor):
            raise ValueError("the loss table is empty: the batch carries no label and no teacher output")
        return total, weights

    def feedback(self, metrics: dict[str, dict[str, float]], step: int) -> None:
        """Validation metrics after a periodic evaluation (adaptive strategies override this)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
