"""The dataset formats by name (``data.format``), auto-detection, and opening a configured split.

``auto`` tries the formats in :data:`DETECT_ORDER` (the most specific first: Cityscapes, COCO and the NYUv2
files are recognised by their own folder and file names; the generic folder layout only needs an
``images/`` folder) and says which one it found; a folder no format recognises is an error that lists what
each format looks for.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from ..registry import did_you_mean
from .cityscapes import CityscapesLayout
from .coco import CocoLayout
from .folder import FolderDataset, FolderLayout
from .layout import Layout
from .nyuv2 import NYUv2Layout, NYUv2NpyLayout

if TYPE_CHECKING:
    from ..config import DataConfig

#: ``data.format`` -> layout
LAYOUTS: dict[str, type[Layout]] = {cls.name: cls for cls in (
    FolderLayout, NYUv2Layout, NYUv2NpyLayout, CityscapesLayout, CocoLayout)}
DETECT_ORDER = ("cityscapes", "coco", "nyuv2_npy", "nyuv2", "folder")
FORMATS = ("auto", *LAYOUTS)

_announced: set[tuple[str, str | None]] = set()


def layout_class(path: str | Path, format: str = "auto") -> type[Layout]:
    """The layout for ``format``, or the one that recognises ``path`` when ``format`` is ``auto``."""
    path = Path(path)
    if format != "auto":
        if format not in LAYOUTS:
            raise DataError(f"unknown data.format '{format}'{did_you_mean(format, list(FORMATS))}")
        return LAYOUTS[format]
    if not path.exists():
        raise DataError(f"dataset {path} does not exist; check the dataset root path")
    for name in DETECT_ORDER:
        if LAYOUTS[name].detect(path):
            return LAYOUTS[name]
    if any((path / part).exists() for part in ("depth", "semseg", "boxes", "meta", "classes.yaml")):
        return FolderLayout  # a folder dataset without images/: its own error says so
    looked = "; ".join(f"{name}: {LAYOUTS[name].looks_for}" for name in DETECT_ORDER)
    raise DataError(f"{path} is no dataset layout polydistill knows. It looked for — {looked}. "
                    "Fix the path, or set data.format to read it as one of them")


def open_layout(path: str | Path, tasks: Sequence[str], *, format: str = "auto", split: str | None = None,
                options: Mapping[str, Any] | None = None, role: str = "train", strict: bool = True) -> Layout:
    """The layout that serves ``split`` (default: the format's split for ``role``) of the dataset at ``path``."""
    cls = layout_class(path, format)
    if split is None:
        split = cls.default_split(Path(path), role)
    return cls(Path(path), tasks, split, cls.parse_options(options), strict=strict)


def open_dataset(cfg: DataConfig, role: str, tasks: Sequence[str], **kwargs: Any) -> FolderDataset:
    """The training (``role="train"``) or validation (``"val"``) set a :class:`DataConfig` describes.

    With ``data.format: auto`` it prints once which format it found for each path and split.
    """
    path = cfg.train if role == "train" else cfg.val
    if path is None:
        raise DataError(f"data.{role} is not set")
    split = cfg.train_split if role == "train" else cfg.val_split
    cls = layout_class(path, cfg.format)
    if split is None:
        split = cls.default_split(Path(path), role)
    dataset = FolderDataset(path, tasks, format=cls.name, split=split, options=cfg.format_options, **kwargs)
    key = (str(Path(path).resolve()), split)
    if cfg.format == "auto" and cls is not FolderLayout and key not in _announced:
        _announced.add(key)
        print(f"data.{role}: {path} is a {dataset.layout.describe()} dataset ({len(dataset)} images)", flush=True)
    if role == "val":
        check_labels(dataset, "val")
    return dataset


def _where(dataset: FolderDataset) -> str:
    split = f" (split {dataset.split})" if dataset.split else ""
    return f"{dataset.root}{split}"


def check_labels(dataset: FolderDataset, role: str, taught: Collection[str] = ()) -> None:
    """Refuse a split that can neither teach nor measure what the run asks for, before any work starts.

    ``role="train"``: every task must have labels in the split or a teacher (``taught``) — a task with
    neither would never learn, and a run without any signal would only write an untrained student.
    ``role="val"``: at least one task needs labels (validation measures against labels only); a task
    without any is warned about, since its metrics stay NaN (a teacher-only task on unlabelled data)."""
    counts = dataset.label_counts()
    where = _where(dataset)
    if role == "train":
        for task, count in counts.items():
            if count == 0 and task not in taught:
                raise DataError(
                    f"data.train {where}: none of its {len(dataset)} images carries a '{task}' label and no teacher "
                    f"teaches '{task}', so the task would never learn; add '{task}' labels, a teacher with "
                    f"tasks: [{task}], or remove tasks.{task}")
        return
    if counts and not any(counts.values()):
        raise DataError(
            f"data.{role} {where}: none of its {len(dataset)} images carries a label of the tasks "
            f"{', '.join(counts)}, so validation cannot measure anything; point data.{role} at a labelled split "
            "or remove it")
    for task, count in counts.items():
        if count == 0:
            warnings.warn(f"data.{role} {where} has no '{task}' labels: its '{task}' metrics will be NaN and model "
                          "selection uses the other tasks", stacklevel=3)
