"""Weighting strategies, looked up by name from ``distill.weighting`` in the config."""

from __future__ import annotations

from collections.abc import Callable

from ...config import DistillConfig
from ...registry import Registry
from .base import Weighting
from .static import StaticWeighting

WEIGHTINGS: Registry[Callable[[DistillConfig], Weighting]] = Registry("weighting")
WEIGHTINGS.register("static")(StaticWeighting)

__all__ = ["WEIGHTINGS", "StaticWeighting", "Weighting", "build_weighting"]


def build_weighting(cfg: DistillConfig) -> Weighting:
    return WEIGHTINGS.get(cfg.weighting)(cfg)
