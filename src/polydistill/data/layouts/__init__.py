"""The dataset formats by name (``data.format``), auto-detection, and opening a configured split.

``auto`` tries the formats in :data:`DETECT_ORDER` (the most specific first: Cityscapes, COCO and the NYUv2
files are recognised by their own folder and file names; the generic folder layout only needs an
``images/`` folder) and says which one it found; a folder no format recognises is an error that lists what
each format looks for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import DataError
from ...registry import did_you_mean
from .base import Layout
from .cityscapes import CityscapesLayout
from .coco import CocoLayout
from .folder import EXTRA_FOLDERS, FolderLayout, label_folders
from .nyuv2 import NYUv2Layout, NYUv2NpyLayout

#: ``data.format`` -> layout
LAYOUTS: dict[str, type[Layout]] = {cls.name: cls for cls in (
    FolderLayout, NYUv2Layout, NYUv2NpyLayout, CityscapesLayout, CocoLayout)}
DETECT_ORDER = ("cityscapes", "coco", "nyuv2_npy", "nyuv2", "folder")
FORMATS = ("auto", *LAYOUTS)


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
    parts = {*label_folders().values(), *EXTRA_FOLDERS, "classes.yaml"}
    if any((path / part).exists() for part in parts):
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
