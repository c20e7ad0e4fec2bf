"""The student: timm backbone (``features_only``) → FPN neck → one head per task.

The student owns input normalisation so that deployed models take plain ``[0, 1]`` RGB and return
plain tensors (one per task) — no teacher, no config object needed at inference.
"""

from __future__ import annotations

import copy
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelSpec, StudentConfig
from ..errors import ConfigError
from ..registry import did_you_mean
from ..tasks import Task, build_task
from .fpn import FPN
from .sak import AdapterPath, MoRRouter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def create_backbone(name: str, pretrained: bool = False) -> nn.Module:
    """A timm backbone returning its pyramid levels from stride 4 down (at most 4 levels)."""
    if name not in timm.list_models() and not pretrained:
        # timm also accepts names with a pretrained tag ('resnet18.a1_in1k'); check the architecture part
        arch = name.split(".")[0]
        if arch not in timm.list_models():
            raise ConfigError(f"unknown timm backbone '{name}'{did_you_mean(arch, timm.list_models())}")
    probe = timm.create_model(name, pretrained=False, features_only=True)
    reductions = probe.feature_info.reduction()
    indices = tuple(i for i, r in enumerate(reductions) if r >= 4)[-4:]
    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=indices)
    except (OSError, RuntimeError) as exc:  # hub errors (offline, not cached) are OSError subclasses
        if not pretrained:
            raise
        raise ConfigError(f"cannot load timm's pretrained weights for '{name}' ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); without network they must be in the "
                          "Hugging Face cache (download them once online), or set student.pretrained: false") from None


class Student(nn.Module):
    """Shared encoder and neck, one light head per task; ``forward`` returns raw outputs per task.

    ``layout="plain"``: every head reads the one fused neck map. ``layout="sak"``: one adapter path per
    ``features`` task beside the backbone and a router per dense task mixing the stem and the paths
    (:mod:`.sak`), each path and each mixture through its own neck (a shared neck's batch-norm statistics
    would average over inputs with different distributions and be wrong for all of them at inference).
    Dense outputs are upsampled to the input size; features maps keep their token grid and detection its
    stride grid.
    """

    def __init__(self, tasks: dict[str, Task], architecture: StudentConfig | None = None):
        super().__init__()
        arch = architecture or StudentConfig()
        backbone, neck_channels, head_channels = arch.backbone, arch.neck_channels, arch.head_channels
        layout, adapter_ratio, pretrained = arch.layout, arch.adapter_ratio, arch.pretrained
        self.task_names = list(tasks)
        self.feature_tasks = [n for n, t in tasks.items() if not t.has_labels]  # teachers' representations
        self.label_tasks = [n for n, t in tasks.items() if t.has_labels]  # what the deployed model predicts
        self.upsampled = [n for n, t in tasks.items() if t.dense_output]  # outputs at the input size
        self.layout = layout
        self.backbone = create_backbone(backbone, pretrained)
        channels = self.backbone.feature_info.channels()
        stride = self.backbone.feature_info.reduction()[0]
        if layout == "plain":
            self.neck = FPN(channels, neck_channels)
        else:  # every path and every task mixture has its own distribution: one neck (and BN statistics) each
            self.necks = nn.ModuleDict({n: FPN(channels, neck_channels) for n in tasks})
        self.heads = nn.ModuleDict(
            {n: t.build_head(neck_channels, head_channels, input_stride=stride) for n, t in tasks.items()}
        )
        if layout == "sak":
            if not self.feature_tasks:
                raise ConfigError("student layout 'sak' needs at least one features task (one adapter path per "
                                  "teacher representation); add e.g. tasks: {dino: {type: features}}")
            self.paths = nn.ModuleDict({n: AdapterPath(channels, adapter_ratio) for n in self.feature_tasks})
            experts = 1 + len(self.feature_tasks)
            self.routers = nn.ModuleDict(
                {n: nn.ModuleList(MoRRouter(c, experts, arch.router_noise) for c in channels) for n in self.label_tasks}
            )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image - self.mean) / self.std
        feats = self.backbone(x)
        size = image.shape[-2:]
        out: dict[str, torch.Tensor] = {}
        if self.layout == "plain":
            fused = self.neck(feats)
            inputs = {name: fused for name in self.heads}
        else:
            paths = {name: path(feats) for name, path in self.paths.items()}
            inputs = {name: self.necks[name](paths[name]) for name in self.feature_tasks if name in self.heads}
            for name in self.label_tasks:
                mixed = [router(f, [f, *(p[level] for p in paths.values())])
                         for level, (router, f) in enumerate(zip(self.routers[name], feats))]
                inputs[name] = self.necks[name](mixed)
        for name, head in self.heads.items():
            y = head(inputs[name])
            if name in self.upsampled:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out[name] = y
        return out

    def inference_model(self) -> Student:
        """A copy without the training-only parts (feature projectors and their teacher norms), for export
        and deployment: it returns the dense tasks only. SAK's adapter paths stay (the routers mix them)."""
        model = copy.deepcopy(self)
        for name in self.feature_tasks:
            del model.heads[name]
            if self.layout == "sak":
                del model.necks[name]
        model.task_names = list(self.label_tasks)
        return model


def build_student(spec: ModelSpec | dict[str, Any]) -> tuple[Student, dict[str, Task]]:
    """Build a student from a *model spec* (:class:`~polydistill.config.ModelSpec`, or its JSON form from
    ``model.json``): the same spec is stored next to every checkpoint so it can be rebuilt."""
    spec = ModelSpec.of(spec)
    tasks = {name: build_task(name, **opts) for name, opts in spec.tasks.items()}
    return Student(tasks, spec), tasks
