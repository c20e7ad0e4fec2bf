"""Tasks: one module per kind of prediction (see :mod:`polydistill.tasks.base`)."""

import inspect

from ..errors import ConfigError
from ..registry import Registry, did_you_mean
from .base import Metric, Task

TASKS: Registry[type[Task]] = Registry("task")

from . import depth, detection, features, normals, semseg  # noqa: E402,F401  (registers the built-in tasks)

__all__ = ["TASKS", "Metric", "Task", "build_task", "task_class", "task_type"]


def task_type(name: str, options: dict | None) -> str:
    """The registered task a config entry builds: its ``type`` option, else its name (``depth: {}``)."""
    return str((options or {}).get("type", name))


def build_task(name: str, **options) -> Task:
    """Instantiate a registered task with its options from the config (typos get a suggestion).

    ``type`` selects the task kind when the name is the user's own (``dino: {type: features}``).
    """
    kind = task_type(name, options)
    options = {k: v for k, v in options.items() if k != "type"}
    cls = TASKS.get(kind)
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in options:
        if key not in params:
            raise ConfigError(f"unknown option '{key}' for task '{name}'{did_you_mean(key, params)}")
    try:
        task = cls(**options)
    except TypeError as exc:
        raise ConfigError(f"task '{name}': {exc}") from None
    task.name = name
    return task


def task_class(name: str) -> type[Task]:
    """The kind of task a map of ``name`` belongs to, which says how it resamples and flips. A name the registry
    does not know is a features task with its own name (``dino: {type: features}``): plain maps, so the base
    class's behaviour."""
    return TASKS.get(name) if name in TASKS else Task
