"""The multi-task dataset every layout serves (:mod:`.layouts`: the generic folder layout, whose files are
described in :mod:`.layouts.folder`, NYUv2, Cityscapes and COCO), so users' own data needs no code.

A sample is ``{image, targets, valid, teacher, meta}``::

    {"image": (3, H, W) float in [0, 1],
     "targets": {task: target},        # requested tasks only; each task's class says what its target is, how it
                                       # is read, resampled and flipped; box tasks: (M, 5) [x0, y0, x1, y1, class]
     "valid": {task: bool},            # False: the image has no such label (the target is a placeholder)
     "teacher": {name: {task: (C, H, W) float}},                      # only once attached
     "meta": {"id", "index", "domain", "intrinsics", "boxes", "box_labels"}}

Decisions:

* Ids are image file stems, sorted, so index ``i`` is the same image on every machine and in every
  ``Subset``; ``meta["index"]`` is that index.
* A missing label gives ``valid[task] = False`` and the task's placeholder
  (:meth:`~polydistill.tasks.Task.placeholder_target`: masked everywhere), never a zero label.
* Files that match no image, or have an unsupported extension, are skipped with one warning at
  construction (a typo in a file name would otherwise silently become a missing label).
* Folders are listed and ``classes.yaml`` is checked eagerly; file contents are read and checked
  lazily in ``__getitem__``, and any bad file raises :class:`DataError` naming it.
* Which files make the samples is a :class:`~.layouts.base.Layout` (``format``); this module holds the
  dataset every layout shares.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..errors import DataError
from ..tasks import TASKS
from .layouts import layout_class, open_layout
from .layouts.base import DEFAULT_IGNORE_INDEX
from .layouts.folder import FolderLayout, fit_boxes_to_image
from .transforms import Resize

if TYPE_CHECKING:
    from ..config import DataConfig

TeacherMaps = dict[str, dict[str, torch.Tensor]]


def labelled_tasks() -> tuple[str, ...]:
    """The registered tasks datasets read labels for."""
    return tuple(name for name in TASKS if TASKS.get(name).has_labels)


def default_tasks() -> tuple[str, ...]:
    """What a dataset may read when not told: every registered task with dense labels in files of its own
    (a dataset reads those of them it has)."""
    return tuple(name for name in labelled_tasks()
                 if TASKS.get(name).label_folder is not None and not TASKS.get(name).box_targets)


class _StackedTeacherOutputs:
    """Indexes ``{teacher: {task: (N, C, h, w)}}`` per sample; a class so DataLoader workers can pickle it."""

    def __init__(self, outputs: Mapping[str, Mapping[str, torch.Tensor]]):
        self.outputs = outputs

    def __call__(self, index: int) -> TeacherMaps:
        return {name: {task: t[index] for task, t in maps.items()} for name, maps in self.outputs.items()}


class FolderDataset(torch.utils.data.Dataset):
    """Images with any subset of labels from the folder layout above, or from another ``format``
    (``auto``, ``folder``, ``nyuv2``, ``nyuv2_npy``, ``cityscapes``, ``coco``; see :mod:`.formats`) and
    its ``split``, configured by ``options``; see the module docstring for the sample.

    ``image_size`` (``int`` or ``(h, w)``) resizes every sample before ``transform`` so samples of
    different sizes can be batched. ``transform`` is called as ``transform(sample, rng)`` with
    ``rng = numpy.random.default_rng([seed, epoch, index])``, so augmentation is reproducible; call
    :meth:`set_epoch` before each epoch (with ``persistent_workers=False``, so workers see it).
    """

    def __init__(
        self,
        root: str | Path,
        tasks: Sequence[str] | None = None,
        *,
        transform: Callable[[dict, np.random.Generator], dict] | None = None,
        ignore_index: int | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        image_size: int | Sequence[int] | None = None,
        format: str = "folder",
        split: str | None = None,
        options: Mapping[str, Any] | None = None,
    ):
        if tasks is None:  # the dense labels this dataset has (the folder layout: whose folder exists)
            tasks = [t for t in layout_class(root, format).available_tasks(Path(root)) if t in default_tasks()]
        self.tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        readable = labelled_tasks()
        unknown = [t for t in self.tasks if t not in readable]
        if unknown:
            raise DataError(
                f"FolderDataset cannot read task(s) {', '.join(unknown)}; it reads {', '.join(readable)}"
            )
        self._task_classes = {task: TASKS.get(task) for task in self.tasks}
        self._box_tasks = tuple(task for task, cls in self._task_classes.items() if cls.box_targets)
        self.layout = open_layout(root, self.tasks, format=format, split=split, options=options)
        self.root = self.layout.root
        self.format = self.layout.name
        self.split = self.layout.split
        self.transform = transform
        self.seed = seed
        self._epoch = 0
        self._resize = None if image_size is None else Resize(image_size)
        self._teacher_source: Callable[[int], TeacherMaps] | None = None
        self._keep_grid: frozenset[str] = frozenset()
        self._read_class_info(ignore_index, num_classes)
        self._ids = self.layout.ids
        self._labelled = {task: self.layout.labelled.get(task, frozenset()) for task in self.tasks}

    def _read_class_info(self, ignore_index: int | None, num_classes: int | None) -> None:
        layout = self.layout
        names, source = tuple(layout.class_names), layout.classes_source
        if num_classes is not None and names and num_classes != len(names):
            raise DataError(f"{source} lists {len(names)} classes but num_classes={num_classes} was requested")
        self._class_names = names
        self._num_classes = num_classes if num_classes is not None else (len(names) or None)
        self._ignore_index = next(
            i for i in (ignore_index, layout.ignore_index, DEFAULT_IGNORE_INDEX) if i is not None
        )
        if self._num_classes is not None and 0 <= self._ignore_index < self._num_classes:
            raise DataError(
                f"ignore_index {self._ignore_index} is a class id (0..{self._num_classes - 1}); "
                f"choose a value outside that range in {source}"
            )

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    @property
    def box_class_names(self) -> tuple[str, ...]:
        """The classes boxes can have (COCO: its thing classes, not its stuff); default: all classes."""
        names = self.layout.box_class_names
        return self._class_names if names is None else tuple(names)

    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    @property
    def ignore_index(self) -> int:
        return self._ignore_index

    @property
    def ids(self) -> tuple[str, ...]:
        return self._ids

    def label_counts(self) -> dict[str, int]:
        """``{task: number of images with that label}``, from the files present (contents unchecked)."""
        return {task: len(self._labelled[task]) for task in self.tasks}

    def fingerprint(self) -> str:
        """Identifies the images as this dataset serves them (files, sizes, modification times, resize),
        so that anything computed from them (teacher outputs) can be cached and invalidated safely."""
        head = (str(self.root.resolve()), self._resize and self._resize.size) + self.layout.identity()
        h = hashlib.sha256(repr(head).encode())
        for sample_id in self._ids:
            h.update(f"{sample_id}:{self.layout.signature(sample_id)};".encode())
        return h.hexdigest()[:16]

    def has_label(self, index: int, task: str) -> bool:
        """Whether image ``index`` carries a label for ``task``."""
        return self._ids[index] in self._labelled[task]

    def has_any_label(self, index: int) -> bool:
        """Whether image ``index`` carries a label for at least one of the requested tasks."""
        sample_id = self._ids[index]
        return any(sample_id in self._labelled[task] for task in self.tasks)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream; each epoch sees a different, reproducible augmentation."""
        if epoch < 0:
            raise DataError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def attach_teacher_outputs(
        self, source: Callable[[int], TeacherMaps] | Mapping[str, Mapping[str, torch.Tensor]],
        keep_grid: Sequence[str] = (),
    ) -> None:
        """Join precomputed teacher maps to every sample *before* augmentation, so they move with the image.

        ``source`` is a callable ``(index) -> {teacher: {task: (C, h, w)}}`` (picklable, for workers), or
        ``{teacher: {task: (N, C, h, w)}}`` with ``N = len(self)``. Maps are resized bilinearly to the
        image grid, so every geometric transform applies to them exactly — except maps of the tasks in
        ``keep_grid`` (feature maps on a teacher's token grid, too large at image resolution), which the
        transforms resample in normalised image coordinates instead.
        """
        self._keep_grid = frozenset(keep_grid)
        if not callable(source):
            for name, maps in source.items():
                for task, t in maps.items():
                    if len(t) != len(self):
                        raise DataError(
                            f"teacher outputs '{name}/{task}' hold {len(t)} maps but the dataset has "
                            f"{len(self)} images"
                        )
            source = _StackedTeacherOutputs(source)
        self._teacher_source = source

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index = int(index) % len(self)
        sample_id = self._ids[index]
        image = self.layout.read_image(sample_id)
        size = tuple(image.shape[-2:])
        sample = {"image": image, "targets": {}, "valid": {}, "meta": self._meta(sample_id, index, size)}
        for task in self.tasks:
            labelled = sample_id in self._labelled[task]
            sample["valid"][task] = labelled
            if not self._task_classes[task].box_targets:  # boxes travel in meta through the transforms (see below)
                sample["targets"][task] = (self.read_target(sample_id, task, size) if labelled
                                           else self._placeholder(task, size))
        if self._resize is not None:
            sample = self._resize(sample)
        if self._teacher_source is not None:
            sample["teacher"] = self._teacher_maps(index, tuple(sample["image"].shape[-2:]))
        if self.transform is not None:
            sample = self.transform(sample, np.random.default_rng([self.seed, self._epoch, index]))
        for task in self._box_tasks:
            meta = sample["meta"]
            sample["targets"][task] = torch.cat([meta["boxes"], meta["box_labels"].float()[:, None]], dim=1)
        return sample

    def read_target(self, sample_id: str, task: str, size: tuple[int, int]) -> torch.Tensor:
        """The dense label of ``sample_id`` at its native size, checked to be pixel-aligned with the image."""
        target = self.layout.read_label(sample_id, task, self._num_classes, self._ignore_index)
        if tuple(target.shape[-2:]) != size:
            raise DataError(
                f"{self.layout.label_file(sample_id, task)} is {target.shape[-2]}x{target.shape[-1]} but "
                f"{self.layout.image_file(sample_id)} is {size[0]}x{size[1]} (HxW); labels must be pixel-aligned "
                f"with their image — re-export the label at {size[0]}x{size[1]} (labels are never stretched to fit)"
            )
        return target

    def _placeholder(self, task: str, size: tuple[int, int]) -> torch.Tensor:
        return self._task_classes[task].placeholder_target(size, self._ignore_index)

    def _meta(self, sample_id: str, index: int, size: tuple[int, int]) -> dict:
        no_boxes = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
        boxes, labels = self.layout.read_boxes(sample_id, self._num_classes) or no_boxes
        boxes, labels, dropped = fit_boxes_to_image(boxes, labels, size)  # clip; drop boxes left without area
        if dropped:
            warnings.warn(f"boxes of {self.layout.image_file(sample_id)}: dropped {dropped} box(es) entirely outside "
                          f"the {size[0]}x{size[1]} image or of zero area; `polydistill data check` lists them",
                          stacklevel=2)
        domain, intrinsics = self.layout.read_meta(sample_id)
        return {
            "id": sample_id,
            "index": index,
            "domain": domain,
            "intrinsics": intrinsics,
            "boxes": boxes,
            "box_labels": labels,
        }

    def _teacher_maps(self, index: int, size: tuple[int, int]) -> TeacherMaps:
        maps = self._teacher_source(index)
        out: TeacherMaps = {}
        for name, per_task in maps.items():
            out[name] = {}
            for task, t in per_task.items():
                if not isinstance(t, torch.Tensor) or t.ndim != 3:
                    raise DataError(
                        f"teacher output '{name}/{task}' for index {index} must be a (C, h, w) tensor"
                    )
                t = t.float()
                if tuple(t.shape[-2:]) != size and task not in self._keep_grid:
                    t = F.resize(t, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
                out[name][task] = t
        return out


_announced: set[tuple[str, str | None]] = set()


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
