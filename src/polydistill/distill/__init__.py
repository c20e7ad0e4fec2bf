"""Distillation: the loss table (objective) and the strategies that weight it."""

from .objective import GT, LossTable, LossTerm, Objective

__all__ = ["GT", "LossTable", "LossTerm", "Objective"]
