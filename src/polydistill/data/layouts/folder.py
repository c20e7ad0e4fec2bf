"""The generic folder layout: one folder per label kind beside ``images/``, so users' own data needs no code.

Every registered task with a :attr:`~polydistill.tasks.Task.label_folder` has its folder here, read by the task's
own :meth:`~polydistill.tasks.Task.read_label_file`; the built-in ones:

    root/
      classes.yaml          names: [floor, wall, ...]   ignore_index: 255   (needed for semseg and detection)
      images/<id>.png|.jpg|.jpeg
      depth/<id>.png        uint16 millimetres, 0 = no measurement
      depth/<id>.npy        float32 metres (H, W); 0, nan, inf and negatives = no measurement
      semseg/<id>.png       class ids (mode L or P); ignore_index = unlabelled
      boxes/<id>.json       {"boxes": [[x0, y0, x1, y1], ...], "labels": [class_id, ...]}  (pixel edges),
                            or COCO's {"annotations": [{"bbox": [x, y, w, h], "category_id": id}, ...]}
      meta/<id>.json        {"intrinsics": 3x3, "domain": "..."}  (other keys are ignored)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from ...errors import DataError
from ...files import image_tensor, one_line, open_image, read_json
from ...tasks import TASKS
from .base import Layout, LayoutOptions, file_signature

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
#: folders every folder dataset may have, whatever its tasks: boxes travel in the samples' meta (read whenever
#: present), camera metadata too
BOXES_FOLDER, META_FOLDER = "boxes", "meta"
EXTRA_FOLDERS = {BOXES_FOLDER: (".json",), META_FOLDER: (".json",)}


def label_folders() -> dict[str, str]:
    """``{task: folder}`` for every registered task with a label folder (asked at call time, so that a task
    registered later has its folder too)."""
    folders = {name: TASKS.get(name).label_folder for name in TASKS}
    return {name: folder for name, folder in folders.items() if folder is not None}


def label_extensions() -> dict[str, tuple[str, ...]]:
    """``{folder: accepted extensions}`` of the label folders and of ``boxes/`` and ``meta/``."""
    return {**{TASKS.get(t).label_folder: TASKS.get(t).label_extensions for t in label_folders()}, **EXTRA_FOLDERS}


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
        raw_labels = data.get("labels", [])
        if not isinstance(raw_labels, list):
            raise DataError(f"{path}: 'labels' must be a list of integer class ids, got {raw_labels!r}; {hint}")
        for k, value in enumerate(raw_labels):
            if not _is_class_id(value):  # torch would cast 1.7 and true to 1 without a word
                raise DataError(f"{path}: label {k} is {json.dumps(value)}, not an integer class id (an index "
                                f"into classes.yaml); {hint}")
        labels = torch.tensor(raw_labels, dtype=torch.int64).reshape(-1)
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
    if looks_normalised(boxes):
        raise DataError(f"{path}: every box lies within 0..1 and some coordinates are fractions, so they look "
                        "normalised; pixel units expected (x from 0 to the image width, y from 0 to its height): "
                        "multiply x by the width and y by the height")
    return boxes, labels


def _is_class_id(value: object) -> bool:
    """An integer (or a float with no fraction, as some JSON writers emit); never a bool, a fraction or a name."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def looks_normalised(boxes: torch.Tensor) -> bool:
    """Every coordinate within [0, 1] and at least one a fraction: normalised 0..1 boxes, not pixel edges (whole
    numbers in [0, 1] are 1-pixel boxes in the corner, which are allowed)."""
    return bool(len(boxes)) and bool((boxes >= 0).all() and (boxes <= 1).all() and (boxes != boxes.round()).any())


def box_problems(boxes: torch.Tensor, size: tuple[int, int]) -> list[str]:
    """What is wrong with well-formed boxes (x0 y0 x1 y1, pixel edges) of an image of ``size`` (H, W), one line
    per kind, each saying what training does with them (:func:`fit_boxes_to_image`)."""
    h, w = size
    x0, y0, x1, y1 = boxes.unbind(-1) if len(boxes) else (boxes.new_zeros(0),) * 4
    outside = (x0 >= w) | (y0 >= h) | (x1 <= 0) | (y1 <= 0)
    empty = ~outside & ((x1 == x0) | (y1 == y0))
    negative = ~outside & ~empty & ((x0 < 0) | (y0 < 0))
    past = ~outside & ~empty & ~negative & ((x1 > w) | (y1 > h))

    def example(mask: torch.Tensor) -> str:
        return ", ".join(f"{v:g}" for v in boxes[mask][0].tolist())

    found = []
    if outside.any():
        found.append(f"{int(outside.sum())} box(es) lie entirely outside the {h}x{w} (HxW) image, e.g. "
                     f"({example(outside)}); training drops them; fix the coordinates (pixel units)")
    if empty.any():
        found.append(f"{int(empty.sum())} box(es) have zero area, e.g. ({example(empty)}); training drops them; "
                     "give x1 > x0 and y1 > y0")
    if negative.any():
        found.append(f"{int(negative.sum())} box(es) have negative coordinates, e.g. ({example(negative)}); "
                     "training clips them to the image")
    if past.any():
        found.append(f"{int(past.sum())} box(es) extend past the {h}x{w} (HxW) image, e.g. ({example(past)}); "
                     "training clips them to the image")
    return found


def fit_boxes_to_image(boxes: torch.Tensor, labels: torch.Tensor,
                       size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Training's rule for boxes that do not fit their image, as the crop augmentation already does: clip to the
    image and drop those left without area (entirely outside, or zero area). Returns the boxes, their labels
    and how many were dropped; boxes that fit come back as the very same tensors (bit-identical training)."""
    h, w = size
    if not len(boxes):
        return boxes, labels, 0
    limit = torch.tensor([w, h, w, h], dtype=boxes.dtype)
    if bool((boxes >= 0).all() and (boxes <= limit).all() and (boxes[:, 2:] > boxes[:, :2]).all()):
        return boxes, labels, 0
    clipped = torch.minimum(boxes.clamp(min=0), limit)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped[keep], labels[keep], int((~keep).sum())


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
    # label_tasks: every registered task with a label folder (label_folders(); the registry can grow after import)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "images").is_dir()

    @classmethod
    def available_tasks(cls, path: Path) -> tuple[str, ...]:
        """The registered tasks whose label folder exists at ``path``."""
        return tuple(t for t, folder in label_folders().items() if (path / folder).is_dir())

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
        folders = label_folders()
        unknown = [t for t in self.tasks if t not in folders]
        if unknown:
            raise DataError(f"{root}: the folder layout has no label folder for task(s) {', '.join(unknown)}; it "
                            f"reads {', '.join(folders)}")
        path = root / "classes.yaml"
        self.classes_source = str(path)
        if path.is_file():
            self.class_names, self.ignore_index = _read_classes(path)
        elif needing := [t for t in self.tasks if TASKS.get(t).needs_class_names]:
            raise DataError(
                f"{path} is missing; {' and '.join(needing)} need{'s' if len(needing) == 1 else ''} it: write "
                "'names: [floor, wall, ...]' (and optionally 'ignore_index: 255')"
            )
        self.ids = tuple(sorted(images))
        self._images = images
        self._folders = {task: folders[task] for task in self.tasks}
        self._labels: dict[str, dict[str, Path]] = {}
        extensions = label_extensions()
        for folder in set(self._folders.values()) | set(EXTRA_FOLDERS):
            files, unused = _list_folder(root / folder, extensions[folder])
            self._labels[folder] = {i: p for i, p in files.items() if i in images}
            skipped += unused + [p for i, p in files.items() if i not in images]
        self.labelled = {task: frozenset(self._labels[self._folders[task]]) for task in self.tasks}
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
        path = self._labels[self._folders[task]][sample_id]
        return TASKS.get(task).read_label_file(path, num_classes, ignore_index)

    def read_boxes(self, sample_id: str, num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self._labels[BOXES_FOLDER].get(sample_id)
        return None if path is None else _read_boxes(path, num_classes, self.class_names)

    def read_meta(self, sample_id: str) -> tuple[str | None, torch.Tensor | None]:
        path = self._labels[META_FOLDER].get(sample_id)
        return (None, None) if path is None else _read_meta(path)

    def image_file(self, sample_id: str) -> str:
        return str(self._images[sample_id])

    def label_file(self, sample_id: str, task: str) -> str:
        return str(self._labels[self._folders[task]][sample_id])

    def signature(self, sample_id: str) -> str:
        return file_signature(self._images[sample_id])

    def identity(self) -> tuple:
        return ()  # fingerprints of folder datasets stay what they were before layouts existed

    def describe(self) -> str:
        return "folder"
