"""Data: samples as ``{image, targets, valid, teacher, meta}``; ShapeScenes; the generic folder layout and the
upstream layouts of NYUv2, Cityscapes and COCO (:mod:`.formats`)."""

from __future__ import annotations

from ..config import AugmentConfig
from .collate import collate, move_batch
from .dataset import FolderDataset, check_labels, open_dataset
from .layouts import FORMATS
from .transforms import ColorJitter, Compose, RandomHorizontalFlip, RandomScaleCrop, Resize

__all__ = ["FORMATS", "ColorJitter", "Compose", "FolderDataset", "RandomHorizontalFlip", "RandomScaleCrop", "Resize",
           "build_train_transform", "check_labels", "collate", "move_batch", "open_dataset"]


def build_train_transform(cfg: AugmentConfig) -> Compose | None:
    """Paired geometric augmentation, then photometric jitter of the student's input (None when it would do
    nothing)."""
    steps = []
    if cfg.hflip > 0:
        steps.append(RandomHorizontalFlip(cfg.hflip))
    if cfg.scale[1] > 1.0 or cfg.crop is not None:
        steps.append(RandomScaleCrop(cfg.scale, size=cfg.crop))
    if cfg.color_jitter > 0:
        steps.append(ColorJitter(cfg.color_jitter))  # after the geometry: both images share it
    return Compose(steps) if steps else None
