"""``python:`` teachers: your own model, built by a factory function you name by its import path.

A deliberate opt-in for code you trust: ``source: python`` (or the ``python:`` prefix) with
``path: "package.module:factory"`` imports ``package.module`` by its dotted name (it must be importable:
installed, or on ``PYTHONPATH``; never a file path) and calls ``factory(**options)``. The factory returns a
:class:`~polydistill.teachers.Teacher`, or a ``torch.nn.Module`` mapping ``(B, 3, H, W)`` RGB in ``[0, 1]`` to
``{task: tensor}`` (one tensor for one task), which is wrapped with :meth:`Teacher.from_module` using the
config's ``tasks``, ``depth_convention`` and ``class_map``. YAML tags (``!!python/...``) stay refused: a
config names code, it never carries it.

The fingerprint covers the weights, the factory's import path and its ``options``, so changing them
rebuilds cached outputs::

    teachers:
      - name: mine
        source: python
        path: my_models.teachers:make_depth_teacher
        tasks: [depth]
        options: {width: 32}          # make_depth_teacher(width=32)
"""

from __future__ import annotations

import importlib
import re

from torch import nn

from ..config import TeacherConfig
from ..errors import ConfigError
from .base import Teacher
from .sources import TaskClasses

#: ``package.module:function`` (dotted names only: never a file path)
FACTORY_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def import_factory(teacher: str, path: str):
    """The callable ``path`` names (``package.module:factory``)."""
    if not FACTORY_PATH.match(path):
        raise ConfigError(f"teacher '{teacher}': a python teacher's path is 'package.module:factory' (an importable "
                          f"module's dotted name and a function in it), got '{path}'")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"teacher '{teacher}': cannot import '{module_name}' ({exc}); install the package or "
                          "put its folder on PYTHONPATH") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"teacher '{teacher}': '{module_name}' has no function '{attr}'")
    return factory


def build(cfg: TeacherConfig, classes: TaskClasses) -> Teacher:
    """Your own model: ``package.module:factory`` called with the options (a Teacher or a torch module)."""
    factory = import_factory(cfg.name, cfg.path)
    try:
        made = factory(**cfg.options)
    except TypeError as exc:  # options the factory does not take
        raise ConfigError(f"teacher '{cfg.name}': {cfg.path}(**options) failed: {exc}") from exc
    recipe = {"factory": cfg.path}
    if isinstance(made, Teacher):
        if cfg.tasks is not None and list(cfg.tasks) != list(made.tasks):
            raise ConfigError(f"teacher '{cfg.name}': {cfg.path} returned a teacher of {list(made.tasks)}, but the "
                              f"config says tasks: {cfg.tasks}")
        if cfg.class_map is not None or cfg.depth_convention is not None:
            raise ConfigError(f"teacher '{cfg.name}': {cfg.path} returned a Teacher, which sets its own class map "
                              "and depth convention; remove them from the config (or return an nn.Module)")
        made.name = cfg.name
        made.user_recipe = {**recipe, **made.user_recipe}
        return made.freeze()
    if isinstance(made, nn.Module):
        if not cfg.tasks:
            raise ConfigError(f"teacher '{cfg.name}': {cfg.path} returned a torch module; say which student tasks "
                              "it teaches with tasks: [...]")
        return Teacher.from_module(made, name=cfg.name, tasks=cfg.tasks,
                                   depth_convention=cfg.depth_convention or "metric", class_map=cfg.class_map,
                                   recipe=recipe)
    raise ConfigError(f"teacher '{cfg.name}': {cfg.path} returned {type(made).__name__}; it must return a "
                      "polydistill Teacher or a torch.nn.Module")
