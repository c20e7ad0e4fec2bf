"""The student: timm backbone (``features_only``) → FPN neck → one head per task.

The student owns input normalisation so that deployed models take plain ``[0, 1]`` RGB and return
plain tensors (one per task) — no teacher, no config object needed at inference.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import did_you_mean
from ..tasks import Task, build_task
from .fpn import FPN

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
    return timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=indices)


class Student(nn.Module):
    """Shared encoder and neck, one light head per task; ``forward`` returns raw outputs per task."""

    def __init__(self, tasks: dict[str, Task], backbone: str = "mobilenetv3_small_100",
                 neck_channels: int = 64, head_channels: int | None = None, pretrained: bool = False):
        super().__init__()
        self.task_names = list(tasks)
        self.backbone = create_backbone(backbone, pretrained)
        self.neck = FPN(self.backbone.feature_info.channels(), neck_channels)
        self.heads = nn.ModuleDict({n: t.build_head(neck_channels, head_channels) for n, t in tasks.items()})
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image - self.mean) / self.std
        fused = self.neck(self.backbone(x))
        size = image.shape[-2:]
        return {
            name: F.interpolate(head(fused), size=size, mode="bilinear", align_corners=False)
            for name, head in self.heads.items()
        }


def build_student(spec: dict[str, Any]) -> tuple[Student, dict[str, Task]]:
    """Build a student from a *model spec* (the part of a config that defines the architecture).

    ``spec = {"tasks": {name: options}, "backbone": ..., "neck_channels": ..., "head_channels": ...,
    "pretrained": ...}``; the same spec is stored next to every checkpoint so it can be rebuilt.
    """
    tasks = {name: build_task(name, **opts) for name, opts in spec["tasks"].items()}
    model = Student(
        tasks,
        backbone=spec.get("backbone", "mobilenetv3_small_100"),
        neck_channels=spec.get("neck_channels", 64),
        head_channels=spec.get("head_channels"),
        pretrained=spec.get("pretrained", False),
    )
    return model, tasks
