"""Tasks: one module per kind of prediction (see :mod:`polydistill.tasks.base`)."""

import inspect

from ..errors import ConfigError
from ..registry import Registry, did_you_mean
from .base import Metric, Task

TASKS: Registry[type[Task]] = Registry("task")

from . import depth, semseg  # noqa: E402,F401  (registers the built-in tasks)

__all__ = ["TASKS", "Metric", "Task", "build_task"]


def build_task(name: str, **options) -> Task:
    """Instantiate a registered task with its options from the config (typos get a suggestion)."""
    cls = TASKS.get(name)
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in options:
        if key not in params:
            raise ConfigError(f"unknown option '{key}' for task '{name}'{did_you_mean(key, params)}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"task '{name}': {exc}") from None
