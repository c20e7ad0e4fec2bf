"""The Teacher contract: a frozen model that answers, for a batch of images, in *student task space*.

A teacher declares which student tasks it teaches. ``predict`` returns ``{task: tensor}`` with depth in
metres ``(B, 1, H, W)`` and segmentation as logits over the student's classes ``(B, C, H, W)``; any
conversion from the teacher's native output (label space, depth convention, resolution) happens in
the teacher adapter, never in the task or the engine. Teachers are frozen, always in eval mode, run
under ``no_grad`` and are never wrapped for distributed training.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import ConfigError, PolydistillError
from ..registry import parse_options
from ..tasks import task_class
from .class_map import ClassMap

DEPTH_CONVENTIONS = ("metric", "relative", "inverse_relative")


class TeacherOutputError(PolydistillError):
    """A teacher broke its output contract (wrong batch, changing channels or grid): a bug in the teacher, its
    options or its code, reported with the teacher's name instead of a shape error deep inside a loss."""


#: a positive integer, as YAML writes it (no strings, floats or booleans)
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
#: ``[H, W]`` in pixels
PixelSize = Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]


class SourceOptions(BaseModel):
    """A teacher source's ``options:`` (typed, validated by pydantic); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def source_options(options_cls: type[SourceOptions], options: SourceOptions | Mapping[str, Any] | None,
                   teacher: str, source: str) -> Any:
    """``options`` parsed into ``options_cls``; errors name the teacher, the source and the option (with a
    did-you-mean for an unknown key)."""
    if isinstance(options, options_cls):
        return options
    return parse_options(options_cls, dict(options or {}), f"teacher '{teacher}' ({source} options)")


class Teacher(nn.Module, ABC):
    """Base class: freezes parameters and pins eval mode; subclasses implement ``_predict``.

    Subclasses' ``_predict`` may return maps at any resolution and segmentation logits over the teacher's
    own classes; :meth:`predict` resizes every map to the input size and, when a ``class_map`` is given,
    maps segmentation to the student's classes (C + 1 channels of log-probabilities, the last one the mass
    of unmapped classes, which the segmentation loss treats as "no opinion"). ``depth_convention`` says
    what a depth map means: ``metric`` (metres), ``relative`` (depth up to scale and shift) or
    ``inverse_relative`` (disparity up to scale and shift, e.g. MiDaS, Depth Anything relative).

    Your own model in Python: subclass and implement ``_predict``, or wrap any module with
    :meth:`from_module`.
    """

    #: whether :meth:`recipe` already lists everything in the config's ``options`` that changes the outputs
    #: (the built-in sources); otherwise the options themselves are part of the fingerprint
    recipe_covers_options: ClassVar[bool] = False

    def __init__(self, name: str, tasks: tuple[str, ...], *, depth_convention: str = "metric",
                 class_map=None, feature_channels: dict[str, int] | None = None):
        super().__init__()
        if depth_convention not in DEPTH_CONVENTIONS:
            raise ValueError(f"teacher '{name}': depth_convention must be one of {DEPTH_CONVENTIONS}, "
                             f"got '{depth_convention}'")
        self.name = name
        self.tasks = tuple(tasks)
        self.depth_convention = depth_convention
        self.class_map = class_map
        #: features tasks this teacher teaches -> channels of its feature map (kept at the teacher's own grid)
        self.feature_channels = dict(feature_channels or {})
        #: the config's ``options`` (set by :func:`~polydistill.teachers.build_teacher`); fingerprinted unless
        #: :attr:`recipe_covers_options`
        self.options: dict[str, Any] = {}
        #: what the user says changes the outputs besides the weights (``from_module(recipe=...)``)
        self.user_recipe: dict[str, Any] = {}

    @classmethod
    def from_module(cls, module: nn.Module, *, name: str, tasks: Sequence[str], depth_convention: str = "metric",
                    class_names: Sequence[str] | None = None, class_map: ClassMap | str | Path | None = None,
                    feature_channels: Mapping[str, int] | None = None,
                    recipe: Mapping[str, Any] | None = None) -> Teacher:
        """A frozen teacher around any ``module`` mapping ``(B, 3, H, W)`` RGB in ``[0, 1]`` to ``{task: tensor}``
        (or one tensor when it teaches one task).

        ``class_names`` names the channels of its segmentation logits; ``class_map`` (a map file or shipped
        map name, or a :class:`ClassMap`) maps them onto the student's classes, resolved when the student's
        classes are known (:meth:`bind_classes`). ``recipe``: anything besides the weights that changes the
        outputs (it is part of the fingerprint, so changing it rebuilds cached outputs).
        """
        return ModuleTeacher(module, name=name, tasks=tasks, depth_convention=depth_convention,
                             class_names=class_names, class_map=class_map, feature_channels=feature_channels,
                             recipe=recipe)

    def bind_classes(self, classes: Mapping[str, Sequence[str]] | None) -> Teacher:
        """Learn the student's class names per task (``{task: names}``) before teaching; the built-in sources
        take them when built, so by default there is nothing to do."""
        return self

    def output_kind(self, task: str) -> str:
        """How the objective must compare the student with this teacher's output for ``task``."""
        if task in self.feature_channels:
            return "features"
        return task_class(task).teacher_output_kind(self.depth_convention)

    def freeze(self) -> Teacher:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """Teachers never leave eval mode (batch-norm statistics and dropout stay fixed)."""
        return super().train(False)

    def weights_fingerprint(self) -> str:
        """Identifies the weights (hash of the state dict)."""
        h = hashlib.sha256()
        for key, tensor in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def recipe(self) -> dict[str, Any]:
        """Everything besides the weights that changes the outputs (preprocessing, conventions, class map)."""
        cmap = None if self.class_map is None else self.class_map.matrix.tolist()
        recipe = {"tasks": list(self.tasks), "depth_convention": self.depth_convention, "class_map": cmap}
        if self.feature_channels:
            recipe["feature_channels"] = self.feature_channels
        if self.options and not self.recipe_covers_options:
            recipe["options"] = self.options
        if self.user_recipe:
            recipe["user_recipe"] = self.user_recipe
        return recipe

    def fingerprint(self) -> str:
        """Identifies weights *and* recipe, so cached outputs are invalidated when either changes."""
        blob = json.dumps({"weights": self.weights_fingerprint(), "recipe": self.recipe()}, sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @abstractmethod
    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images``: ``(B, 3, H, W)`` RGB in ``[0, 1]`` → ``{task: task-space output}``.

        Feature maps ``(B, C, h, w)`` keep the teacher's own token grid (the features task aligns the
        student to it); every other map is what its task makes of it at the input size
        (:meth:`~polydistill.tasks.Task.resize_output`: resized, or detection's kept on its stride grid),
        over the student's classes (:meth:`~polydistill.tasks.Task.apply_class_map`).
        """
        out = self._predict(images)
        size = images.shape[-2:]
        result = {}
        for t in self.tasks:
            if t not in out:
                raise TeacherOutputError(f"teacher '{self.name}' returned no '{t}' output (it returned "
                                         f"{sorted(out)}); a teacher must answer every task it teaches")
            value = out[t].float()
            self._check_output(t, value, images)
            if t in self.feature_channels:
                if value.dim() != 4 or value.shape[1] != self.feature_channels[t]:
                    raise TeacherOutputError(f"teacher '{self.name}' returned features of shape {tuple(value.shape)} "
                                             f"for '{t}'; expected (B, {self.feature_channels[t]}, h, w)")
                result[t] = value
                continue
            kind = task_class(t)  # a teacher's other tasks are student tasks, named by their type
            value = kind.resize_output(value, size)
            if self.class_map is not None:
                value = kind.apply_class_map(value, self.class_map)
            result[t] = value
        return result

    def _check_output(self, task: str, value: torch.Tensor, images: torch.Tensor) -> None:
        """One answer per image, and for every batch the same channels (and, for maps kept on the teacher's own
        grid, the same grid for the same input size) as on the first batch: the cache stores one shape per
        output and the losses compare channel by channel, so a drifting output is an error naming the teacher."""
        shape = tuple(value.shape)
        if value.dim() not in (3, 4) or shape[0] != images.shape[0]:
            raise TeacherOutputError(
                f"teacher '{self.name}' returned '{task}' of shape {shape} for a batch of {images.shape[0]} images; "
                "expected (B, C, h, w) (or (B, h, w) for one channel) with B = the batch size")
        channels = shape[1] if value.dim() == 4 else 1
        seen = self.__dict__.setdefault("_output_contract", {})
        first = seen.setdefault(task, channels)
        if channels != first:
            raise TeacherOutputError(
                f"teacher '{self.name}' returned '{task}' with {channels} channels (shape {shape}) after {first} "
                "channels on earlier batches; a teacher must give the same channels for every batch — check its "
                "options (classes, class map, layer) or the model's code")
        if value.dim() == 4 and (task in self.feature_channels or not task_class(task).dense_output):
            key = (task, tuple(images.shape[-2:]))
            grid = seen.setdefault(key, shape[-2:])
            if shape[-2:] != grid:
                raise TeacherOutputError(
                    f"teacher '{self.name}' returned '{task}' on a {shape[-2]}x{shape[-1]} grid after "
                    f"{grid[0]}x{grid[1]} for the same {images.shape[-2]}x{images.shape[-1]} input; its grid "
                    "must depend on the input size only — check options such as input_size and grid_stride")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.predict(images)


class ModuleTeacher(Teacher):
    """A teacher around a plain ``nn.Module`` (see :meth:`Teacher.from_module`)."""

    def __init__(self, module: nn.Module, *, name: str, tasks: Sequence[str], depth_convention: str = "metric",
                 class_names: Sequence[str] | None = None, class_map: ClassMap | str | Path | None = None,
                 feature_channels: Mapping[str, int] | None = None, recipe: Mapping[str, Any] | None = None):
        if not isinstance(module, nn.Module):
            raise ConfigError(f"teacher '{name}': from_module needs a torch.nn.Module, got {type(module).__name__}")
        if isinstance(tasks, str) or not tasks:
            raise ConfigError(f"teacher '{name}': from_module needs tasks=[...], the student tasks it teaches")
        super().__init__(name, tuple(tasks), depth_convention=depth_convention,
                         class_map=class_map if isinstance(class_map, ClassMap) else None,
                         feature_channels=feature_channels)
        self.module = module
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.class_map_file = None if class_map is None or isinstance(class_map, ClassMap) else str(class_map)
        self.user_recipe = dict(recipe or {})
        self.freeze()

    def bind_classes(self, classes: Mapping[str, Sequence[str]] | None) -> Teacher:
        """Resolve a class map given by file against the student's classes of the task it maps."""
        if self.class_map_file is None:
            return self
        students = [list(v) for t, v in (classes or {}).items() if t in self.tasks]
        if len(students) != 1:
            raise ConfigError(f"teacher '{self.name}': class_map needs exactly one task with class names among its "
                              f"tasks {list(self.tasks)} in the student")
        self.class_map = ClassMap.from_file(self.class_map_file, self.class_names, students[0])
        return self

    def recipe(self) -> dict[str, Any]:
        return {**super().recipe(), "module": type(self.module).__qualname__, "class_names": self.class_names}

    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.module(images)
        if isinstance(out, torch.Tensor):
            if len(self.tasks) != 1:
                raise TeacherOutputError(f"teacher '{self.name}' returned one tensor but teaches {list(self.tasks)}; "
                                         "return {task: tensor}")
            return {self.tasks[0]: out}
        if not isinstance(out, Mapping):
            raise TeacherOutputError(f"teacher '{self.name}' returned {type(out).__name__}; a wrapped module must "
                                     "return {task: tensor} (or one tensor when it teaches one task)")
        return dict(out)
