"""``polydistill data check``: read every file of a dataset once and report what is there and what is broken.

Unlike training, which stops at the first bad file, the check goes on: it lists every unreadable or
malformed file, every label whose size differs from its image, every box that cannot be right (outside the
image, zero area, negative coordinates) and an ignore index that is also a class. It counts images and labels
per type and asks each label type's task for its statistics (:meth:`~polydistill.tasks.Task.label_statistics`:
pixels per class for segmentation, boxes per class for detection, the range of valid depth). A dataset with
splits is checked split by split.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..tasks import TASKS
from .layouts import layout_class, open_layout
from .layouts.base import DEFAULT_IGNORE_INDEX
from .layouts.folder import box_problems


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
    #: ``{task: {class: count}}`` (segmentation: pixels, detection: boxes)
    histogram: dict[str, dict[str, int]] = field(default_factory=dict)
    #: ``{task: summary of its values}`` (depth: valid fraction and range); in JSON and as attributes under the
    #: task's own name (``report.depth``)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``{"task", "image", "label", "image_size", "label_size"}`` per label not the size of its image
    size_mismatches: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"file", "problem"}`` per file that could not be read or holds invalid values
    unreadable: list[dict[str, str]] = field(default_factory=list)
    #: ``{"file", "problem"}`` found while listing (missing files, files without an image)
    listing: list[dict[str, str]] = field(default_factory=list)
    #: ``{"file", "image", "problem"}`` per kind of impossible box in a file (outside the image, zero area,
    #: negative coordinates, past the border); see :func:`~polydistill.data.layouts.folder.box_problems`
    boxes: list[dict[str, str]] = field(default_factory=list)
    #: the value that marks unlabelled pixels (classes.yaml's, or the default), reported apart from the classes
    ignore_index: int | None = None
    #: what is wrong with the classes themselves (an ignore index that is also a class id)
    classes_problem: str | None = None
    #: a problem that stopped the split from being opened at all
    error: str | None = None

    @property
    def problem_count(self) -> int:
        return (len(self.size_mismatches) + len(self.unreadable) + len(self.listing) + len(self.boxes)
                + (self.error is not None) + (self.classes_problem is not None))

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def __getattr__(self, name: str) -> Any:
        summaries = self.__dict__.get("summaries", {})
        if name in summaries:
            return summaries[name]
        raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")

    def to_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        summaries = fields.pop("summaries")
        return {**fields, **summaries, "problems": self.problem_count, "ok": self.ok}


def check_split(path: Path, format: str, split: str | None, options: Mapping[str, Any] | None = None, *,
                limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> SplitReport:
    cls = layout_class(path, format)
    report = SplitReport(str(path), cls.name, split)
    tasks = cls.available_tasks(path)
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
    report.ignore_index = ignore
    if num_classes is not None and 0 <= ignore < num_classes:  # training refuses this (FolderDataset)
        name = report.classes[ignore]
        report.classes_problem = (
            f"{layout.classes_source}: ignore_index {ignore} is also class {ignore} '{name}', so its pixels would be "
            f"ignored rather than counted as '{name}' (training refuses this); choose an ignore_index outside "
            f"0..{num_classes - 1}, e.g. 255")
    box_names = list(layout.box_class_names if layout.box_class_names is not None else layout.class_names)
    kinds = {task: TASKS.get(task) for task in tasks}
    totals: dict[str, dict[str, Any]] = {task: {} for task in tasks}

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
            kind = kinds[task]
            try:
                if kind.box_targets:  # boxes: read with the sample's meta, no map to compare with the image
                    label = layout.read_boxes(sample_id, num_classes)
                    if label is not None and size is not None:
                        report.boxes += [{"file": layout.label_file(sample_id, task),
                                          "image": layout.image_file(sample_id), "problem": problem}
                                         for problem in box_problems(label[0], size)]
                    if label is not None:
                        counts = kind.label_statistics(label, layout.label_file(sample_id, task), num_classes)
                        totals[task] = kind.merge_label_statistics(totals[task], counts)
                    continue
                label = layout.read_label(sample_id, task, num_classes, ignore)
            except DataError as exc:
                unreadable(exc, layout.label_file(sample_id, task))
                continue
            label_size = tuple(label.shape[-2:])
            if size is not None and label_size != size:
                report.size_mismatches.append({"task": task, "image": layout.image_file(sample_id),
                                               "label": layout.label_file(sample_id, task),
                                               "image_size": list(size), "label_size": list(label_size)})
            counts = kind.label_statistics(label, layout.label_file(sample_id, task), num_classes)
            totals[task] = kind.merge_label_statistics(totals[task], counts)
        if progress is not None:
            progress(n + 1, len(ids))
    for task, kind in kinds.items():
        histogram, summary = kind.summarise_label_statistics(totals[task], layout.class_names, box_names)
        if histogram is not None:
            report.histogram[task] = histogram
        if summary is not None:
            report.summaries[task] = summary
    return report


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
