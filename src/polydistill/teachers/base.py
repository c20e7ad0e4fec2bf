"""The Teacher contract: a frozen model that answers, for a batch of images, in *student task space*.

A teacher declares which student tasks it teaches. ``predict`` returns ``{task: tensor}`` with depth in
metres ``(B, 1, H, W)`` and segmentation as logits over the student's classes ``(B, C, H, W)``; any
conversion from the teacher's native output (label space, depth convention, resolution) happens in
the teacher adapter, never in the task or the engine. Teachers are frozen, always in eval mode, run
under ``no_grad`` and are never wrapped for distributed training.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import torch
from torch import nn


class Teacher(nn.Module, ABC):
    """Base class: freezes parameters and pins eval mode; subclasses implement ``_predict``."""

    def __init__(self, name: str, tasks: tuple[str, ...]):
        super().__init__()
        self.name = name
        self.tasks = tuple(tasks)

    def freeze(self) -> Teacher:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """Teachers never leave eval mode (batch-norm statistics and dropout stay fixed)."""
        return super().train(False)

    def fingerprint(self) -> str:
        """Identifies the weights (so cached outputs are invalidated when the teacher changes)."""
        h = hashlib.sha256()
        for key, tensor in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    @abstractmethod
    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images``: ``(B, 3, H, W)`` RGB in ``[0, 1]`` → ``{task: task-space output}``."""
        out = self._predict(images)
        return {t: out[t] for t in self.tasks}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.predict(images)
