"""Cityscapes read in place: images, fine labels as the 19 training classes, and depth from disparity.

Layout (the official archives unpacked into one root)::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png     the images (sample id: <city>_<seq>_<frame>)
    gtFine/<split>/<city>/<id>_gtFine_labelIds.png                      label ids 0..33 (optional)
    disparity/<split>/<city>/<id>_disparity.png                         uint16 disparity (optional)
    camera/<split>/<city>/<id>_camera.json                              needed for every disparity file

* Label ids become the 19 training ids through the official label table (``cityscapesScripts``'
  ``labels.py``: road 7 -> 0, ..., bicycle 33 -> 18); every other id (void, parking, rail track, guard rail,
  bridge, tunnel, polegroup, caravan, trailer; 255 for the licence plate's −1) is unlabelled.
* Depth: a disparity pixel ``p > 0`` is ``d = (p − 1) / 256`` pixels, and depth ``= baseline · fx / d``
  metres with ``extrinsic.baseline`` and ``intrinsic.fx`` of the camera file; ``p = 0`` (no measurement)
  and ``p = 1`` (zero disparity, infinitely far) give 0 = no measurement.
* The camera file also gives the sample's intrinsics (``fx, fy, u0, v0``), which the transforms keep
  consistent with resizing, flips and crops.
* Splits are the folders under ``leftImg8bit/`` (``train``, ``val``, ``test``, ``train_extra``); boxes are
  not read (Cityscapes' own boxes come from its instance polygons, which this loader does not convert).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import DataError
from ...files import image_tensor, open_image, read_id_png, read_json, read_uint16_png
from .base import Layout, LayoutOptions, file_signature, lookup_labels

CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
#: label id -> training id, from the official label table (ids 0..33; every id not listed is unlabelled)
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NUM_LABEL_IDS = 34
IMAGE_SUFFIX = "_leftImg8bit.png"
SUFFIXES = {"semseg": ("gtFine", "_gtFine_labelIds.png"), "depth": ("disparity", "_disparity.png"),
            "camera": ("camera", "_camera.json")}


def label_table(ignore_index: int) -> np.ndarray:
    """``table[label id]`` -> training id; unlabelled ids -> ``ignore_index``; 255 (licence plate) too; −2 = no
    such label id."""
    table = np.full(256, -2, dtype=np.int64)
    table[:NUM_LABEL_IDS] = ignore_index
    table[255] = ignore_index
    for label_id, train_id in TRAIN_IDS.items():
        table[label_id] = train_id
    return table


def read_camera(path: Path) -> tuple[float, float, torch.Tensor]:
    """``(baseline metres, fx pixels, 3x3 intrinsics)`` from a Cityscapes camera file."""
    data = read_json(path)
    hint = ('a Cityscapes camera file looks like {"extrinsic": {"baseline": 0.22, ...}, '
            '"intrinsic": {"fx": 2262.5, "fy": 2265.3, "u0": 1096.9, "v0": 513.1}}')
    try:
        baseline = float(data["extrinsic"]["baseline"])
        fx, fy, u0, v0 = (float(data["intrinsic"][k]) for k in ("fx", "fy", "u0", "v0"))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} lacks or has a non-number {e}; {hint}") from e
    if not (baseline > 0 and fx > 0 and fy > 0 and np.isfinite([baseline, fx, fy, u0, v0]).all()):
        raise DataError(f"{path}: baseline {baseline} and focal lengths fx {fx}, fy {fy} must be positive; {hint}")
    intrinsics = torch.tensor([[fx, 0.0, u0], [0.0, fy, v0], [0.0, 0.0, 1.0]])
    return baseline, fx, intrinsics


def disparity_to_depth(raw: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Cityscapes' uint16 disparity PNG values -> depth in metres (0 where there is no finite depth)."""
    disparity = (raw.astype(np.float64) - 1.0) / 256.0
    depth = np.zeros(raw.shape, dtype=np.float32)
    valid = disparity > 0  # p = 0: invalid; p = 1: zero disparity (no finite depth)
    depth[valid] = baseline * fx / disparity[valid]
    return depth


class CityscapesLayout(Layout):
    """Cityscapes; see the module docstring."""

    name = "cityscapes"
    looks_for = "leftImg8bit/<split>/<city>/*_leftImg8bit.png (with optional gtFine/, disparity/, camera/)"
    label_tasks = ("depth", "semseg")

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "leftImg8bit").is_dir()

    @classmethod
    def splits(cls, path: Path) -> list[str | None]:
        folder = path / "leftImg8bit"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    @classmethod
    def default_split(cls, path: Path, role: str) -> str | None:
        return role

    def __init__(self, path: Path, tasks, split, options: LayoutOptions, *, strict: bool = True):
        super().__init__(path, tasks, split, options, strict=strict)
        self.split = split = split or "train"
        images_dir = self.path / "leftImg8bit" / split
        if not images_dir.is_dir():
            present = self.splits(self.path)
            raise DataError(f"{images_dir} does not exist; Cityscapes images are in leftImg8bit/<split>/<city>/ "
                            f"(splits here: {', '.join(present) or 'none'}) — unpack leftImg8bit_trainvaltest.zip "
                            "into the dataset root or choose another split")
        self.root = images_dir
        self._images: dict[str, Path] = {}
        for file in sorted(images_dir.glob(f"*/*{IMAGE_SUFFIX}")):
            self._images[file.name[: -len(IMAGE_SUFFIX)]] = file
        if not self._images:
            raise DataError(f"{images_dir} holds no <city>/*{IMAGE_SUFFIX} images")
        self.ids = tuple(sorted(self._images))
        self._files = {kind: self._list(kind) for kind in SUFFIXES}
        for sample_id, disparity in self._files["depth"].items():
            if sample_id not in self._files["camera"]:
                self.problem(disparity, f"has no camera file {self._expected('camera', sample_id)}, which depth needs "
                             "(baseline and focal length); unpack camera_trainvaltest.zip into the dataset root")
        self.labelled = {"semseg": frozenset(self._files["semseg"]),
                         "depth": frozenset(i for i in self._files["depth"] if i in self._files["camera"])}
        self.class_names = CLASSES
        self.ignore_index = 255
        self.classes_source = "the Cityscapes 19 training classes"

    def _expected(self, kind: str, sample_id: str) -> Path:
        folder, suffix = SUFFIXES[kind]
        city = self._images[sample_id].parent.name
        return self.path / folder / self.split / city / f"{sample_id}{suffix}"

    def _list(self, kind: str) -> dict[str, Path]:
        """``{id: file}`` of one label kind; a file whose image is missing is a problem."""
        folder, suffix = SUFFIXES[kind]
        found = {}
        for file in sorted((self.path / folder / self.split).glob(f"*/*{suffix}")):
            sample_id = file.name[: -len(suffix)]
            if sample_id in self._images:
                found[sample_id] = file
            else:
                self.problem(file, f"has no image {sample_id}{IMAGE_SUFFIX} in {self.root}; restore the image or "
                             "remove the file")
        return found

    def read_image(self, sample_id: str) -> torch.Tensor:
        return image_tensor(open_image(self._images[sample_id]))

    def read_label(self, sample_id: str, task: str, num_classes: int | None, ignore_index: int) -> torch.Tensor:
        path = self._files["depth" if task == "depth" else "semseg"][sample_id]
        if task == "depth":
            baseline, fx, _ = read_camera(self._files["camera"][sample_id])
            raw = read_uint16_png(path, "Cityscapes disparity")
            return torch.from_numpy(disparity_to_depth(raw, baseline, fx))[None]
        ids = read_id_png(path, "Cityscapes gtFine labelIds")
        return lookup_labels(ids, label_table(ignore_index), str(path), "Cityscapes label ids (0..33)")

    def read_meta(self, sample_id: str) -> tuple[str | None, torch.Tensor | None]:
        camera = self._files["camera"].get(sample_id)
        return None, (read_camera(camera)[2] if camera is not None else None)

    def image_file(self, sample_id: str) -> str:
        return str(self._images[sample_id])

    def label_file(self, sample_id: str, task: str) -> str:
        return str(self._files["depth" if task == "depth" else "semseg"][sample_id])

    def signature(self, sample_id: str) -> str:
        return file_signature(self._images[sample_id])
