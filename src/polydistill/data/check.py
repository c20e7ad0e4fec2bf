"""``polydistill data check``: read every file of a dataset once and report what is there and what is broken.

Unlike training, which stops at the first bad file, the check goes on: it lists every unreadable or
malformed file and every label whose size differs from its image, counts images and labels per type, and
builds the class histogram (pixels per class for segmentation, boxes per class for detection) and the
range of valid depth. A dataset with splits is checked split by split.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .layouts import layout_class, open_layout
from .layouts.base import DEFAULT_IGNORE_INDEX, Layout
from .layouts.folder import LABEL_FOLDERS, FolderLayout


@dataclass
class SplitReport:
    """What :func:`check_dataset` found in one split."""

    path: str
    format: str
    split: str | None
    images: int = 0
    checked: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    #: ``{"semseg": {class: pixels}, "detection": {class: boxes}}``
    histogram: dict[str, dict[str, int]] = field(default_factory=dict)
    depth: dict[str, float] = field(default_factory=dict)
    #: ``{"task", "image", "label", "image_size", "label_size"}`` per label not the size of its image
    size_mismatches: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"file", "problem"}`` per file that could not be read or holds invalid values
    unreadable: list[dict[str, str]] = field(default_factory=list)
    #: ``{"file", "problem"}`` found while listing (missing files, files without an image)
    listing: list[dict[str, str]] = field(default_factory=list)
    #: a problem that stopped the split from being opened at all
    error: str | None = None

    @property
    def problem_count(self) -> int:
        return len(self.size_mismatches) + len(self.unreadable) + len(self.listing) + (self.error is not None)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "problems": self.problem_count, "ok": self.ok}


def _check_tasks(cls: type[Layout], path: Path) -> tuple[str, ...]:
    """The label types to check: all the format has (the folder layout: those whose folder exists)."""
    if cls is FolderLayout:
        return tuple(t for t in cls.label_tasks if (path / LABEL_FOLDERS[t]).is_dir())
    return cls.label_tasks


def check_split(path: Path, format: str, split: str | None, options: Mapping[str, Any] | None = None, *,
                limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> SplitReport:
    cls = layout_class(path, format)
    report = SplitReport(str(path), cls.name, split)
    tasks = _check_tasks(cls, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the folder layout's "ignoring files" warning: reported below
            layout = open_layout(path, tasks, format=cls.name, split=split, options=options, strict=False)
    except DataError as exc:
        report.error = str(exc)
        return report
    report.split = layout.split
    report.listing = [{"file": f, "problem": p} for f, p in layout.problems]
    report.listing += [{"file": str(p), "problem": "matches no image or has an unsupported extension (a typo in "
                        "the name?); rename or remove it"} for p in getattr(layout, "skipped", [])]
    report.images = len(layout.ids)
    report.labels = {t: len(layout.labelled.get(t, ())) for t in tasks}
    report.classes = list(layout.class_names)
    num_classes = len(layout.class_names) or None
    ignore = layout.ignore_index if layout.ignore_index is not None else DEFAULT_IGNORE_INDEX
    box_names = list(layout.box_class_names if layout.box_class_names is not None else layout.class_names)
    pixels = np.zeros(max(num_classes or 0, 1), dtype=np.int64)
    boxes = np.zeros(max(num_classes or 0, 1), dtype=np.int64)
    depth_valid, depth_total, depth_min, depth_max = 0, 0, np.inf, -np.inf
    nonfinite_pixels, nonfinite_files = 0, 0

    def unreadable(exc: DataError, file: str) -> None:
        report.unreadable.append({"file": file, "problem": str(exc)})

    ids = layout.ids if limit is None else layout.ids[:limit]
    for n, sample_id in enumerate(ids):
        report.checked += 1
        try:
            size = tuple(layout.read_image(sample_id).shape[-2:])
        except DataError as exc:
            unreadable(exc, layout.image_file(sample_id))
            size = None
        try:
            layout.read_meta(sample_id)
        except DataError as exc:
            unreadable(exc, layout.image_file(sample_id))
        for task in tasks:
            if sample_id not in layout.labelled.get(task, ()):
                continue
            try:
                if task == "detection":
                    found = layout.read_boxes(sample_id, num_classes)
                    if found is not None and len(found[1]):
                        boxes += np.bincount(found[1].numpy(), minlength=len(boxes))[: len(boxes)]
                    continue
                target = layout.read_label(sample_id, task, num_classes, ignore)
            except DataError as exc:
                unreadable(exc, layout.label_file(sample_id, task))
                continue
            label_size = tuple(target.shape[-2:])
            if size is not None and label_size != size:
                report.size_mismatches.append({"task": task, "image": layout.image_file(sample_id),
                                               "label": layout.label_file(sample_id, task),
                                               "image_size": list(size), "label_size": list(label_size)})
            if task == "semseg":
                ids_ = target.numpy().ravel()
                ids_ = ids_[(ids_ >= 0) & (ids_ < len(pixels))] if num_classes else ids_[:0]
                pixels += np.bincount(ids_, minlength=len(pixels))
            else:
                values = target.numpy()
                valid = values[values > 0]
                nonfinite = _nonfinite_depth(layout.label_file(sample_id, task))
                nonfinite_pixels += nonfinite
                nonfinite_files += nonfinite > 0
                depth_total += values.size
                depth_valid += valid.size
                if valid.size:
                    depth_min, depth_max = min(depth_min, float(valid.min())), max(depth_max, float(valid.max()))
        if progress is not None:
            progress(n + 1, len(ids))
    if "semseg" in tasks and num_classes:
        report.histogram["semseg"] = {name: int(pixels[k]) for k, name in enumerate(layout.class_names)}
    if "detection" in tasks and num_classes:
        index = {name: k for k, name in enumerate(layout.class_names)}
        report.histogram["detection"] = {name: int(boxes[index[name]]) for name in box_names if name in index}
    if "depth" in tasks and depth_total:
        report.depth = {"valid_fraction": depth_valid / depth_total,
                        "min_m": depth_min if depth_valid else 0.0, "max_m": depth_max if depth_valid else 0.0,
                        "non_finite_pixels": nonfinite_pixels, "non_finite_files": nonfinite_files}
    return report


def _nonfinite_depth(file: str) -> int:
    """NaN/Inf pixels of a float depth file (``.npy``); training reads them as "no measurement", the check
    counts them so that a broken export (a map of NaNs) does not pass unnoticed."""
    path = Path(file)
    if path.suffix.lower() != ".npy" or not path.is_file():
        return 0
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return 0  # reading the label already reported it
    return int((~np.isfinite(array)).sum()) if np.issubdtype(array.dtype, np.floating) else 0


def check_dataset(path: str | Path, format: str = "auto", splits: list[str] | None = None,
                  options: Mapping[str, Any] | None = None, *, limit: int | None = None,
                  progress: Callable[[str | None, int, int], None] | None = None) -> list[SplitReport]:
    """Check every split of the dataset at ``path`` (or the given ``splits``); one report per split."""
    path = Path(path)
    cls = layout_class(path, format)
    chosen: list[str | None] = list(splits) if splits else cls.splits(path) or [None]
    reports = []
    for split in chosen:
        def step(done: int, total: int, split: str | None = split) -> None:
            if progress is not None:
                progress(split, done, total)

        reports.append(check_split(path, cls.name, split, options, limit=limit, progress=step))
    return reports


def write_json(reports: list[SplitReport], path: Path) -> None:
    path.write_text(json.dumps([r.to_dict() for r in reports], indent=2))
