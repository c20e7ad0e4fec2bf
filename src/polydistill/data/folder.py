"""A multi-task dataset read from a plain folder, so users' own data needs no code — or, with ``format``, from
the upstream layouts of NYUv2, Cityscapes and COCO (see :mod:`.formats`), served the same way.

The folder layout (every label folder and every label file is optional)::

    root/
      classes.yaml          names: [floor, wall, ...]   ignore_index: 255   (needed for semseg)
      images/<id>.png|.jpg|.jpeg
      depth/<id>.png        uint16 millimetres, 0 = no measurement
      depth/<id>.npy        float32 metres (H, W); 0, nan, inf and negatives = no measurement
      semseg/<id>.png       class ids (mode L or P); ignore_index = unlabelled
      boxes/<id>.json       {"boxes": [[x0, y0, x1, y1], ...], "labels": [class_id, ...]}  (pixel edges),
                            or COCO's {"annotations": [{"bbox": [x, y, w, h], "category_id": id}, ...]}
      meta/<id>.json        {"intrinsics": 3x3, "domain": "..."}  (other keys are ignored)

A sample is::

    {"image": (3, H, W) float in [0, 1],
     "targets": {"depth": (1, H, W) metres, "semseg": (H, W) long,    # requested tasks only
                 "detection": (M, 5) [x0, y0, x1, y1, class_id]},      # the boxes after augmentation
     "valid": {"depth": bool, "semseg": bool},
     "teacher": {name: {task: (C, H, W) float}},                      # only once attached
     "meta": {"id", "index", "domain", "intrinsics", "boxes", "box_labels"}}

Decisions:

* Ids are image file stems, sorted, so index ``i`` is the same image on every machine and in every
  ``Subset``; ``meta["index"]`` is that index.
* A missing label gives ``valid[task] = False`` and a placeholder (depth zeros, semseg all
  ``ignore_index``), never a zero label.
* Files that match no image, or have an unsupported extension, are skipped with one warning at
  construction (a typo in a file name would otherwise silently become a missing label).
* Folders are listed and ``classes.yaml`` is checked eagerly; file contents are read and checked
  lazily in ``__getitem__``, and any bad file raises :class:`DataError` naming it.
* Which files make the samples is a :class:`~.layout.Layout` (``format``); this module holds the folder
  layout and the dataset every layout shares.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..errors import DataError
from .layout import (
    DEFAULT_IGNORE_INDEX,
    Layout,
    LayoutOptions,
    file_signature,
    image_tensor,
    one_line,
    open_image,
    read_json,
)
from .transforms import Resize

TeacherMaps = dict[str, dict[str, torch.Tensor]]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
#: label folder -> accepted extensions; a task reads the folder of the same name, detection reads boxes/
LABEL_EXTENSIONS = {"depth": (".png", ".npy"), "semseg": (".png",), "boxes": (".json",), "meta": (".json",)}
TASKS = ("depth", "semseg", "detection")
DEFAULT_TASKS = ("depth", "semseg")
LABEL_FOLDERS = {"depth": "depth", "semseg": "semseg", "detection": "boxes"}


def _list_folder(folder: Path, extensions: Sequence[str]) -> tuple[dict[str, Path], list[Path]]:
    """``{id: file}`` for files with a known extension, and the files skipped (hidden files aside)."""
    found: dict[str, Path] = {}
    skipped: list[Path] = []
    if not folder.is_dir():
        return found, skipped
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_file() or path.suffix.lower() not in extensions:
            skipped.append(path)
        elif path.stem in found:
            raise DataError(
                f"{found[path.stem]} and {path} both give id '{path.stem}'; keep only one of them"
            )
        else:
            found[path.stem] = path
    return found, skipped


def _read_classes(path: Path) -> tuple[tuple[str, ...], int | None]:
    """Class names and the optional ``ignore_index`` from ``classes.yaml``."""
    hint = "it must look like 'names: [floor, wall, ...]' with an optional 'ignore_index: 255'"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"cannot parse {path}: {one_line(e)}; {hint}") from e
    names = data.get("names") if isinstance(data, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path} has no valid 'names' list (a non-empty list of strings); {hint}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path} lists class names more than once: {', '.join(duplicates)}; make them unique")
    ignore_index = data.get("ignore_index")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise DataError(f"{path}: ignore_index must be an integer, got {ignore_index!r}; {hint}")
    return tuple(names), ignore_index


def _read_depth(path: Path) -> torch.Tensor:
    """Depth in metres ``(1, H, W)``; anything that is not a positive finite distance becomes 0."""
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path}: {one_line(e)}; save depth with numpy.save") from e
        if array.ndim != 2 or not (
            np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
        ):
            raise DataError(
                f"{path} holds a {array.dtype} array of shape {array.shape}; depth .npy files must be "
                "float32 metres of shape (H, W)"
            )
        metres = array.astype(np.float32)
    else:
        image = open_image(path)
        if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise DataError(
                f"{path} is a mode-{image.mode} PNG; depth PNGs must be 16-bit millimetres (uint16) — "
                f"or save float metres as {path.with_suffix('.npy').name}"
            )
        metres = np.asarray(image).astype(np.float32) / 1000.0
    metres[~np.isfinite(metres) | (metres <= 0)] = 0.0
    return torch.from_numpy(metres)[None]


def _read_semseg(path: Path, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Class ids ``(H, W)`` long, refusing ids that ``classes.yaml`` does not declare."""
    image = open_image(path)
    if image.mode not in ("L", "P"):
        raise DataError(
            f"{path} is a mode-{image.mode} PNG; semseg PNGs must hold one class id per pixel "
            "(mode L or P) — "
            "convert colour masks to class ids"
        )
    ids = np.asarray(image)
    present = np.flatnonzero(np.bincount(ids.ravel()))
    bad = present[(present >= num_classes) & (present != ignore_index)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
        raise DataError(
            f"{path} contains class ids {shown} outside 0..{num_classes - 1} (ignore_index {ignore_index} "
            "marks unlabelled pixels); add the classes to classes.yaml or relabel those pixels"
        )
    return torch.from_numpy(ids.astype(np.int64))


def _coco_annotations(data: dict, names: Sequence[str], path: Path) -> dict:
    """COCO-style ``{"annotations": [{"bbox": [x, y, w, h], "category_id": id | "category": name}]}`` ->
    ``{"boxes": [[x0, y0, x1, y1]], "labels": [...]}``; ids index ``classes.yaml``, names are looked up in it."""
    boxes, labels = [], []
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "bbox" not in ann:
            raise DataError(f"{path}: annotation {k} has no 'bbox' [x, y, width, height]")
        x, y, w, h = ann["bbox"]
        if "category" in ann:
            if ann["category"] not in names:
                raise DataError(f"{path}: annotation {k} has category '{ann['category']}', which classes.yaml does "
                                f"not list ({list(names)})")
            label = list(names).index(ann["category"])
        elif "category_id" in ann:
            label = ann["category_id"]
        else:
            raise DataError(f"{path}: annotation {k} needs 'category_id' (a classes.yaml index) or 'category'")
        boxes.append([x, y, x + w, y + h])
        labels.append(label)
    return {"boxes": boxes, "labels": labels}


def _read_boxes(path: Path, num_classes: int | None = None,
                names: Sequence[str] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    hint = ('it must look like {"boxes": [[x0, y0, x1, y1], ...], "labels": [class_id, ...]} in pixels, or COCO\'s '
            '{"annotations": [{"bbox": [x, y, w, h], "category_id": class_id}, ...]}')
    data = read_json(path)
    try:
        if isinstance(data, dict) and "annotations" in data:
            data = _coco_annotations(data, names, path)
        boxes = torch.tensor(data.get("boxes", []), dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor(data.get("labels", []), dtype=torch.int64).reshape(-1)
    except (TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise DataError(f"{path} is malformed ({one_line(e)}); {hint}") from e
    if len(boxes) != len(labels):
        raise DataError(f"{path} has {len(boxes)} boxes but {len(labels)} labels; {hint}")
    if not torch.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any() or (labels < 0).any():
        raise DataError(
            f"{path} has a non-finite box, a box with x1 < x0 or y1 < y0, or a negative label; {hint}"
        )
    if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
        bad = sorted({int(v) for v in labels[labels >= num_classes]})
        raise DataError(f"{path} has box labels {bad} outside 0..{num_classes - 1}, the classes of classes.yaml")
    return boxes, labels


def _read_meta(path: Path) -> tuple[str | None, torch.Tensor | None]:
    """``(domain, intrinsics)`` from a meta file."""
    data = read_json(path)
    domain = data.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise DataError(f"{path}: 'domain' must be a string, got {domain!r}")
    intrinsics = data.get("intrinsics")
    if intrinsics is not None:
        try:
            intrinsics = torch.tensor(intrinsics, dtype=torch.float32)
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: 'intrinsics' must be a 3x3 list of numbers ({one_line(e)})") from e
        if intrinsics.shape != (3, 3):
            raise DataError(
                f"{path}: 'intrinsics' must be a 3x3 list of numbers, got shape {tuple(intrinsics.shape)}"
            )
    return domain, intrinsics


class FolderLayout(Layout):
    """The generic folder layout of the module docstring."""

    name = "folder"
    looks_for = "an images/ folder (with optional depth/, semseg/, boxes/, meta/ and classes.yaml)"
    label_tasks = TASKS

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "images").is_dir()

    def __init__(self, path: Path, tasks: Sequence[str], split: str | None, options: LayoutOptions,
                 *, strict: bool = True):
        super().__init__(path, tasks, split, options, strict=strict)
        if split is not None:
            raise DataError(f"{path}: the folder layout has no splits (got split '{split}'); put each split in "
                            "its own folder and point data.train and data.val at them")
        self.root = root = self.path
        if not root.is_dir():
            raise DataError(f"dataset folder {root} does not exist; check the dataset root path")
        if not (root / "images").is_dir():
            raise DataError(f"{root} has no images/ folder; put the input images in {root / 'images'}")
        images, skipped = _list_folder(root / "images", IMAGE_EXTENSIONS)
        if not images:
            others = [p.name for p in skipped]
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            found = f" (it has {len(others)} other file(s): {shown}; convert them to PNG or JPEG)" if others else ""
            raise DataError(f"{root / 'images'} holds no .png/.jpg/.jpeg images{found}; put the dataset's images "
                            "there, or point the config at the folder that has them")
        path = root / "classes.yaml"
        self.classes_source = str(path)
        if path.is_file():
            self.class_names, self.ignore_index = _read_classes(path)
        elif "semseg" in self.tasks or "detection" in self.tasks:
            raise DataError(
                f"{path} is missing; segmentation and detection need it: write 'names: [floor, wall, ...]' "
                "(and optionally 'ignore_index: 255')"
            )
        self.ids = tuple(sorted(images))
        self._images = images
        self._labels: dict[str, dict[str, Path]] = {}
        for folder in {LABEL_FOLDERS[t] for t in self.tasks} | {"boxes", "meta"}:
            files, unused = _list_folder(root / folder, LABEL_EXTENSIONS[folder])
            self._labels[folder] = {i: p for i, p in files.items() if i in images}
            skipped += unused + [p for i, p in files.items() if i not in images]
        self.labelled = {task: frozenset(self._labels[LABEL_FOLDERS[task]]) for task in self.tasks}
        self.skipped = skipped
        if skipped:
            shown = ", ".join(str(p.relative_to(root)) for p in skipped[:5])
            warnings.warn(
                f"{root}: ignoring {len(skipped)} file(s) that match no image or have an unsupported "
                f"extension: {shown}{', ...' if len(skipped) > 5 else ''}",
                stacklevel=4,
            )

    def read_image(self, sample_id: str) -> torch.Tensor:
        return image_tensor(open_image(self._images[sample_id]))

    def read_label(self, sample_id: str, task: str, num_classes: int | None, ignore_index: int) -> torch.Tensor:
        path = self._labels[LABEL_FOLDERS[task]][sample_id]
        return _read_depth(path) if task == "depth" else _read_semseg(path, num_classes, ignore_index)

    def read_boxes(self, sample_id: str, num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self._labels["boxes"].get(sample_id)
        return None if path is None else _read_boxes(path, num_classes, self.class_names)

    def read_meta(self, sample_id: str) -> tuple[str | None, torch.Tensor | None]:
        path = self._labels["meta"].get(sample_id)
        return (None, None) if path is None else _read_meta(path)

    def image_file(self, sample_id: str) -> str:
        return str(self._images[sample_id])

    def label_file(self, sample_id: str, task: str) -> str:
        return str(self._labels[LABEL_FOLDERS[task]][sample_id])

    def signature(self, sample_id: str) -> str:
        return file_signature(self._images[sample_id])

    def identity(self) -> tuple:
        return ()  # fingerprints of folder datasets stay what they were before layouts existed

    def describe(self) -> str:
        return "folder"


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
        tasks: Sequence[str] = DEFAULT_TASKS,
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
        from .formats import open_layout  # the formats import this module

        self.tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise DataError(
                f"FolderDataset cannot read task(s) {', '.join(unknown)}; it reads {', '.join(TASKS)}"
            )
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
        sample = {"image": image, "targets": {}, "valid": {}, "meta": self._meta(sample_id, index)}
        for task in self.tasks:
            labelled = sample_id in self._labelled[task]
            sample["valid"][task] = labelled
            if task != "detection":  # boxes travel in meta through the transforms (see below)
                sample["targets"][task] = (self.read_target(sample_id, task, size) if labelled
                                           else self._placeholder(task, size))
        if self._resize is not None:
            sample = self._resize(sample)
        if self._teacher_source is not None:
            sample["teacher"] = self._teacher_maps(index, tuple(sample["image"].shape[-2:]))
        if self.transform is not None:
            sample = self.transform(sample, np.random.default_rng([self.seed, self._epoch, index]))
        if "detection" in self.tasks:
            meta = sample["meta"]
            sample["targets"]["detection"] = torch.cat([meta["boxes"], meta["box_labels"].float()[:, None]], dim=1)
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
        if task == "depth":
            return torch.zeros(1, *size)
        return torch.full(size, self._ignore_index, dtype=torch.int64)

    def _meta(self, sample_id: str, index: int) -> dict:
        no_boxes = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
        boxes, labels = self.layout.read_boxes(sample_id, self._num_classes) or no_boxes
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
