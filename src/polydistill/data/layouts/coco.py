"""COCO read in place: boxes from the instances JSON, semantic labels from the panoptic PNGs.

Layout (the official archives unpacked into one root; ``<split>`` is e.g. ``train2017`` or ``val2017``)::

    <split>/*.jpg  (or images/<split>/*.jpg)       the images (sample id: the file name's stem)
    annotations/instances_<split>.json              boxes (optional when panoptic labels are there)
    annotations/panoptic_<split>.json               panoptic segments (optional)
    annotations/panoptic_<split>/*.png              their PNGs (panoptic_annotations_trainval2017.zip)

* Classes: the panoptic categories when the split has panoptic labels (133: 80 things and 53 stuff),
  else the instances categories (80), ordered by category id; ids become contiguous class indices. Boxes
  use the thing classes (:attr:`box_class_names`), which is what a detection task defaults to.
* Boxes: COCO's ``[x, y, width, height]`` become ``[x0, y0, x0 + width, y0 + height]`` in pixel edges.
  Crowd annotations (``iscrowd: 1``, a region of many objects) are skipped by default, as detectors are
  trained without them (``data.format_options.crowd: keep`` keeps them as boxes). Every image the
  instances JSON lists carries a detection label, also when it has no objects.
* Semantic labels: a panoptic PNG's pixel ``(R, G, B)`` is segment ``R + 256 G + 256² B``; the segment's
  ``category_id`` (from ``segments_info``) is the pixel's class, crowd segments included; segment 0
  (void) is unlabelled.
* The COCO-Stuff PNGs (``stuffthingmaps``) are not read: they name no classes, so the panoptic labels are
  the supported semantic source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ...errors import DataError
from ...files import bad_values, image_tensor, open_image, read_json
from .base import Layout, LayoutOptions, file_signature

ANNOTATIONS = "annotations"


class CocoOptions(LayoutOptions):
    crowd: Literal["skip", "keep"] = "skip"


def _splits(path: Path) -> list[str]:
    folder = path / ANNOTATIONS
    if not folder.is_dir():
        return []
    found = set()
    for prefix in ("instances_", "panoptic_"):
        found |= {p.stem[len(prefix):] for p in folder.glob(f"{prefix}*.json")}
    return sorted(found)


def _categories(data: dict, path: Path) -> dict[int, str]:
    """``{category id: name}``, checked."""
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DataError(f"{path} has no 'categories' list; it is not a COCO annotation file")
    out: dict[int, str] = {}
    for k, cat in enumerate(categories):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise DataError(f"{path}: categories[{k}] needs an integer 'id' and a string 'name'")
        if cat["id"] in out:
            raise DataError(f"{path}: category id {cat['id']} is listed twice")
        out[cat["id"]] = cat["name"]
    names = list(out.values())
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{path}: category names {', '.join(twice)} are used by more than one id")
    return dict(sorted(out.items()))


def _list_of_dicts(data: dict, key: str, path: Path, required: tuple[str, ...]) -> list[dict]:
    items = data.get(key)
    if not isinstance(items, list):
        raise DataError(f"{path} has no '{key}' list; it is not a COCO annotation file")
    for k, item in enumerate(items):
        if not isinstance(item, dict) or any(r not in item for r in required):
            raise DataError(f"{path}: {key}[{k}] needs {', '.join(repr(r) for r in required)}")
    return items


class CocoLayout(Layout):
    """COCO; see the module docstring."""

    name = "coco"
    looks_for = "annotations/instances_<split>.json or annotations/panoptic_<split>.json"
    label_tasks = ("detection", "semseg")
    Options = CocoOptions

    @classmethod
    def detect(cls, path: Path) -> bool:
        return bool(_splits(path))

    @classmethod
    def splits(cls, path: Path) -> list[str | None]:
        return list(_splits(path))

    @classmethod
    def default_split(cls, path: Path, role: str) -> str | None:
        present = _splits(path)
        matches = [s for s in present if s.startswith("train" if role == "train" else "val")]
        if len(matches) == 1:
            return matches[0]
        return present[0] if len(present) == 1 else None

    def __init__(self, path: Path, tasks, split, options: CocoOptions, *, strict: bool = True):
        super().__init__(path, tasks, split, options, strict=strict)
        present = _splits(self.path)
        if split is None or split not in present:
            what = "no split was given and none is unambiguous" if split is None else f"there is no split '{split}'"
            raise DataError(f"{self.path}: {what}; the COCO splits here are {', '.join(present) or 'none'} "
                            f"(from {self.path / ANNOTATIONS}/instances_<split>.json and panoptic_<split>.json) — "
                            "set data.train_split / data.val_split")
        self.split = split
        images_dir = next((d for d in (self.path / split, self.path / "images" / split) if d.is_dir()), None)
        if images_dir is None:
            raise DataError(f"the COCO images of split '{split}' are neither in {self.path / split} nor in "
                            f"{self.path / 'images' / split}; unpack {split}.zip into the dataset root")
        self.root = images_dir
        annotations = self.path / ANNOTATIONS
        self._instances_path = annotations / f"instances_{split}.json"
        self._panoptic_path = annotations / f"panoptic_{split}.json"
        instances = read_json(self._instances_path) if self._instances_path.is_file() else None
        panoptic = read_json(self._panoptic_path) if self._panoptic_path.is_file() else None

        # images: every image either file lists, by COCO image id
        files: dict[int, str] = {}
        for data, source in ((instances, self._instances_path), (panoptic, self._panoptic_path)):
            if data is not None:
                for image in _list_of_dicts(data, "images", source, ("id", "file_name")):
                    files.setdefault(image["id"], image["file_name"])
        on_disk = set(os.listdir(images_dir))
        self._images: dict[str, Path] = {}
        self._image_ids: dict[int, str] = {}
        for image_id, file_name in files.items():
            if file_name not in on_disk:
                self.problem(images_dir / file_name, "is listed in the annotations but missing; restore it "
                             "(or unpack the whole image archive)")
                continue
            sample_id = Path(file_name).stem
            self._images[sample_id] = images_dir / file_name
            self._image_ids[image_id] = sample_id
        if not self._images:
            raise DataError(f"none of the images the COCO annotations of split '{split}' list is in {images_dir}")
        self.ids = tuple(sorted(self._images))

        # classes
        thing_categories = _categories(instances, self._instances_path) if instances is not None else {}
        categories = _categories(panoptic, self._panoptic_path) if panoptic is not None else thing_categories
        self._class_of = {cat_id: k for k, cat_id in enumerate(categories)}
        self.class_names = tuple(categories.values())
        self.classes_source = str(self._panoptic_path if panoptic is not None else self._instances_path)
        self.box_class_names = tuple(thing_categories.values()) if thing_categories else self.class_names
        for cat_id, name in thing_categories.items():
            if categories.get(cat_id) != name:
                raise DataError(f"{self._instances_path}: category {cat_id} '{name}' is not category {cat_id} of "
                                f"{self._panoptic_path}; use the instances and panoptic files of one COCO release")
        self.ignore_index = 255 if len(self.class_names) < 255 else 65535

        self._boxes = self._index_boxes(instances) if instances is not None else {}
        self._segments = self._index_panoptic(panoptic) if panoptic is not None else {}
        self.labelled = {"detection": frozenset(self._boxes), "semseg": frozenset(self._segments)}

    def _index_boxes(self, data: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{id: (boxes (M, 4) xyxy float32, class indices (M,))}`` for every image the file lists."""
        path = self._instances_path
        per_image: dict[str, tuple[list, list]] = {sid: ([], []) for sid in self._image_ids.values()}
        keep_crowd = self.options.crowd == "keep"
        for k, ann in enumerate(_list_of_dicts(data, "annotations", path, ("image_id", "bbox", "category_id"))):
            if ann.get("iscrowd", 0) and not keep_crowd:
                continue
            sample_id = self._image_ids.get(ann["image_id"])
            if sample_id is None:
                continue  # its image is missing: reported above
            bbox, cat = ann["bbox"], ann["category_id"]
            if (not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox)
                    or not np.isfinite(bbox).all() or bbox[2] < 0 or bbox[3] < 0):
                self.problem(path, f"annotation {k} (id {ann.get('id')}) has bbox {bbox!r}; COCO boxes are "
                             "[x, y, width, height] with width, height >= 0")
                continue
            if cat not in self._class_of:
                self.problem(path, f"annotation {k} (id {ann.get('id')}) has category_id {cat!r}, which 'categories' "
                             "does not list")
                continue
            x, y, w, h = (float(v) for v in bbox)
            per_image[sample_id][0].append([x, y, x + w, y + h])
            per_image[sample_id][1].append(self._class_of[cat])
        return {sid: (np.asarray(b, dtype=np.float32).reshape(-1, 4), np.asarray(c, dtype=np.int64))
                for sid, (b, c) in per_image.items()}

    def _index_panoptic(self, data: dict) -> dict[str, tuple[Path, np.ndarray, np.ndarray]]:
        """``{id: (PNG, sorted segment ids, their class indices)}`` for every image with a panoptic PNG."""
        path, folder = self._panoptic_path, self._panoptic_path.with_suffix("")
        if not folder.is_dir():
            self.problem(folder, f"does not exist; {path.name} needs its PNGs there — unpack "
                         f"{folder.name}.zip (in panoptic_annotations_trainval2017.zip) into {folder.parent}")
            return {}
        on_disk = set(os.listdir(folder))
        out = {}
        for k, ann in enumerate(_list_of_dicts(data, "annotations", path, ("image_id", "file_name", "segments_info"))):
            sample_id = self._image_ids.get(ann["image_id"])
            if sample_id is None:
                continue
            if ann["file_name"] not in on_disk:
                self.problem(folder / ann["file_name"], f"is missing (annotations[{k}] of {path.name}); restore it")
                continue
            segments = ann["segments_info"]
            try:
                ids = np.array([s["id"] for s in segments], dtype=np.int64)
                cats = [s["category_id"] for s in segments]
            except (TypeError, KeyError, ValueError):
                self.problem(path, f"annotations[{k}].segments_info entries need an integer 'id' and 'category_id'")
                continue
            unknown = [c for c in cats if c not in self._class_of]
            if unknown:
                self.problem(path, f"annotations[{k}] has segments of category {unknown[0]!r}, which 'categories' does "
                             "not list")
                continue
            order = np.argsort(ids)
            out[sample_id] = (folder / ann["file_name"], ids[order],
                              np.array([self._class_of[c] for c in cats], dtype=np.int64)[order])
        return out

    def read_image(self, sample_id: str) -> torch.Tensor:
        return image_tensor(open_image(self._images[sample_id]))

    def read_label(self, sample_id: str, task: str, num_classes: int | None, ignore_index: int) -> torch.Tensor:
        path, segment_ids, classes = self._segments[sample_id]
        image = open_image(path)
        if image.mode != "RGB":
            raise DataError(f"{path} is a mode-{image.mode} PNG; COCO panoptic PNGs are RGB segment ids")
        rgb = np.asarray(image).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        present = np.unique(ids)
        present = present[present != 0]
        unknown = present[~np.isin(present, segment_ids)]
        if unknown.size:
            raise DataError(f"{path} holds segment ids {bad_values(unknown)} that segments_info in "
                            f"{self._panoptic_path.name} does not list; the PNG and the JSON do not belong together")
        out = np.full(ids.shape, ignore_index, dtype=np.int64)
        labelled = ids != 0
        if segment_ids.size:
            out[labelled] = classes[np.searchsorted(segment_ids, ids[labelled])]
        return torch.from_numpy(out)

    def read_boxes(self, sample_id: str, num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        found = self._boxes.get(sample_id)
        if found is None:
            return None
        return torch.from_numpy(found[0].copy()), torch.from_numpy(found[1].copy())

    def image_file(self, sample_id: str) -> str:
        return str(self._images[sample_id])

    def label_file(self, sample_id: str, task: str) -> str:
        if task == "semseg":
            return str(self._segments[sample_id][0])
        return f"{self._instances_path} (image {sample_id})"

    def signature(self, sample_id: str) -> str:
        return file_signature(self._images[sample_id])

    def identity(self) -> tuple:
        return (self.name, self.split)
