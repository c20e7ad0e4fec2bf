"""NYUv2 read in place: the official labelled ``.mat`` file, and the preprocessed ``.npy`` layout of MTAN/LibMTL.

``nyuv2`` — ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5, read with h5py). MATLAB stores arrays
column-major, so h5py sees them transposed: ``images`` (N, 3, W, H) uint8, ``depths`` / ``rawDepths``
(N, W, H) float metres, ``labels`` (N, W, H) with the 894 NYU object classes (0 = unlabelled). Labels are
mapped to 40 classes (Gupta et al., ``class_maps/nyuv2_894_to_40.yaml``) or, by default, on to 13 classes
(``class_maps/nyuv2_40_to_13.yaml``). Splits: ``train`` (795 images) and ``test`` (654; ``val`` is an
alias, NYUv2 has no separate validation set) come from the official ``splits.mat`` (``trainNdxs`` /
``testNdxs``, 1-based), which is a separate download: put it next to the labelled ``.mat`` or name it in
``data.format_options.split_file`` (a JSON/YAML ``{train: [...], test: [...]}`` of 1-based indices works
too); ``all`` serves all 1,449 images without one. Sample ids are the 1-based NYU indices, ``0001``…``1449``.

``nyuv2_npy`` — the preprocessed data of MTAN (and LibMTL): ``<split>/image/<i>.npy`` (H, W, 3) float in
[0, 1], ``<split>/label/<i>.npy`` (H, W) 13-class ids 0..12 with −1 = unlabelled, ``<split>/depth/<i>.npy``
(H, W, 1) metres with 0 = no measurement, and ``<split>/normal/<i>.npy`` (not used: polydistill has no
surface-normal task); splits ``train`` (795) and ``val`` (654, the official test images), 288×384.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from ...errors import DataError
from ...files import bad_values, one_line
from .base import Layout, LayoutOptions, file_signature, lookup_labels, numeric_order

CLASS_MAPS = Path(__file__).resolve().parents[2] / "class_maps"
NYU_CLASSES = 894
MAT_NAME = "nyu_depth_v2_labeled.mat"
SPLIT_FILE = "splits.mat"
MAT_V73 = b"MATLAB 7.3 MAT-file"


@cache
def nyu40_lookup() -> tuple[tuple[str, ...], np.ndarray]:
    """``(40 class names, table)`` with ``table[k]`` the 0-based 40-class id of NYU class k (−1 for k = 0)."""
    path = CLASS_MAPS / "nyuv2_894_to_40.yaml"
    data = yaml.safe_load(path.read_text())
    lookup = [v for row in data["lookup"] for v in row]
    names = tuple(data["classes"])
    if len(lookup) != NYU_CLASSES or len(names) != 40 or not all(1 <= v <= 40 for v in lookup):
        raise DataError(f"{path} is damaged: it must list 894 class ids in 1..40 and 40 names; reinstall polydistill")
    return names, np.array([-1] + [v - 1 for v in lookup], dtype=np.int64)


@cache
def nyu13_from_40() -> tuple[tuple[str, ...], np.ndarray]:
    """``(13 class names, table)`` with ``table[c]`` the 0-based 13-class id of 0-based 40-class id c."""
    path = CLASS_MAPS / "nyuv2_40_to_13.yaml"
    data = yaml.safe_load(path.read_text())
    names40, names13 = list(data["teacher_classes"]), tuple(data["student_classes"])
    table = np.full(len(names40), -1, dtype=np.int64)
    for target, members in data["map"].items():
        for member in members:
            table[names40.index(member)] = names13.index(target)
    if (table < 0).any() or names40 != list(nyu40_lookup()[0]):
        raise DataError(f"{path} is damaged: every NYU-40 class must map to one of 13; reinstall polydistill")
    return names13, table


def nyu_classes(classes: int) -> tuple[tuple[str, ...], np.ndarray]:
    """``(names, table)``: NYU 894-class id (0..894) -> 0-based id of the 13 or 40 classes (−1: unlabelled)."""
    names40, to40 = nyu40_lookup()
    if classes == 40:
        return names40, to40
    names13, to13 = nyu13_from_40()
    return names13, np.where(to40 >= 0, to13[np.maximum(to40, 0)], -1)


NYU13_NAMES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "painting", "sofa", "table",
               "tv", "wall", "window")


def _is_v73_mat(path: Path) -> bool:
    """MATLAB v7.3 files are HDF5 with a 512-byte header that starts with this text (v5 files do not)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAT_V73)) == MAT_V73
    except OSError:
        return False


def find_mat(path: Path) -> Path | None:
    """The labelled ``.mat`` at ``path`` (the file itself, or the v7.3 ``.mat`` in the folder)."""
    if path.is_file():
        return path if _is_v73_mat(path) else None
    if not path.is_dir():
        return None
    if _is_v73_mat(path / MAT_NAME):
        return path / MAT_NAME
    found = [p for p in sorted(path.glob("*.mat")) if _is_v73_mat(p)]
    return found[0] if len(found) == 1 else None


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise DataError("reading the NYUv2 .mat file (MATLAB v7.3 = HDF5) needs h5py: pip install h5py") from e
    return h5py


def read_split_file(path: Path, split: str, count: int) -> np.ndarray:
    """0-based indices of ``split`` (``train``/``test``) from ``splits.mat`` or a JSON/YAML file of 1-based ones."""
    key = {"train": "trainNdxs", "test": "testNdxs"}[split]
    hint = ("use the official splits.mat (trainNdxs/testNdxs) or a JSON/YAML file "
            "{train: [1-based indices], test: [...]}")
    try:
        if path.suffix.lower() == ".mat":
            if _is_v73_mat(path):
                with _h5py().File(path, "r") as f:
                    raw = np.asarray(f[key]) if key in f else None
            else:
                try:
                    from scipy.io import loadmat
                except ImportError as e:
                    raise DataError(f"reading {path} (a MATLAB v5 file) needs scipy: pip install scipy — or give "
                                    "the split as JSON {train: [...], test: [...]}") from e
                raw = loadmat(path).get(key)
        else:
            data = yaml.safe_load(path.read_text())
            raw = data.get(split) if isinstance(data, dict) else None
            key = split
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - scipy/h5py/yaml raise many types for a damaged file
        raise DataError(f"cannot read the split file {path}: {one_line(e)}; {hint}") from e
    if raw is None:
        raise DataError(f"split file {path} has no '{key}'; {hint}")
    try:
        indices = np.asarray(raw, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"split file {path}: '{key}' is not a list of indices; {hint}") from e
    bad = indices[(indices != np.round(indices)) | (indices < 1) | (indices > count)]
    if bad.size:
        raise DataError(f"split file {path}: '{key}' holds {bad_values(bad)}, not 1-based indices of the "
                        f"{count} labelled images; {hint}")
    indices = indices.astype(np.int64) - 1
    if len(np.unique(indices)) != len(indices):
        raise DataError(f"split file {path}: '{key}' lists an image twice; {hint}")
    return np.sort(indices)


class NYUv2Options(LayoutOptions):
    classes: Literal[13, 40] = 13
    split_file: str | None = None
    depth: Literal["depths", "rawDepths"] = "depths"


class NYUv2Layout(Layout):
    """The official labelled NYUv2 ``.mat``; see the module docstring."""

    name = "nyuv2"
    looks_for = f"a MATLAB v7.3 .mat file such as {MAT_NAME} (the path itself, or the only one in the folder)"
    label_tasks = ("depth", "semseg")
    Options = NYUv2Options

    @classmethod
    def detect(cls, path: Path) -> bool:
        return find_mat(path) is not None

    @classmethod
    def splits(cls, path: Path) -> list[str | None]:
        mat = find_mat(path)
        return ["train", "test"] if mat is not None and (mat.parent / SPLIT_FILE).is_file() else ["all"]

    @classmethod
    def default_split(cls, path: Path, role: str) -> str | None:
        return "train" if role == "train" else "test"

    def __init__(self, path: Path, tasks, split, options: NYUv2Options, *, strict: bool = True):
        super().__init__(path, tasks, split, options, strict=strict)
        mat = find_mat(self.path)
        if mat is None:
            raise DataError(f"{self.path} is not a MATLAB v7.3 .mat file and holds no {MAT_NAME}; give the path "
                            "of the official labelled NYUv2 file (nyu_depth_v2_labeled.mat)")
        self.mat = mat
        split = {"val": "test", None: "train"}.get(split, split)
        if split not in ("train", "test", "all"):
            raise DataError(f"NYUv2 has the splits train, test (alias val) and all, not '{split}'")
        self.split = split
        self.root = mat if split == "all" else mat.parent / f"{mat.name}@{split}"
        self._depth_key = options.depth
        count, self._size = self._check_file()
        if split == "all":
            indices = np.arange(count)
        else:
            split_file = Path(options.split_file) if options.split_file else mat.parent / SPLIT_FILE
            if not split_file.is_file():
                raise DataError(
                    f"NYUv2 split '{split}' needs the official {SPLIT_FILE} (trainNdxs/testNdxs, from the NYU Depth "
                    f"v2 website), which is not at {split_file}: put it next to {mat.name}, set "
                    "data.format_options.split_file, or use split 'all'")
            indices = read_split_file(split_file, split, count)
        self._index = {f"{i + 1:04d}": int(i) for i in indices}
        self.ids = tuple(self._index)
        self.class_names, self._table = nyu_classes(options.classes)
        self.classes_source = f"the NYUv2 {options.classes}-class mapping"
        self.labelled = {"depth": frozenset(self.ids), "semseg": frozenset(self.ids)}
        self._file, self._file_pid = None, None
        self._signature = file_signature(mat)

    def _check_file(self) -> tuple[int, tuple[int, int]]:
        """``(image count, (H, W))``, after checking that the expected datasets are there and agree."""
        h5py = _h5py()
        try:
            f = h5py.File(self.mat, "r")
        except OSError as e:
            raise DataError(f"cannot open {self.mat} as HDF5 (MATLAB v7.3): {one_line(e)}; the download is "
                            "incomplete or damaged — download nyu_depth_v2_labeled.mat again") from e
        with f:
            wanted = ("images", self._depth_key, "labels")
            missing = [k for k in wanted if k not in f]
            if missing:
                raise DataError(f"{self.mat} has no dataset(s) {', '.join(missing)} (it has: "
                                f"{', '.join(sorted(f.keys())) or 'none'}); it must be the official labelled NYUv2 "
                                "file nyu_depth_v2_labeled.mat")
            images, depths, labels = (f[k] for k in wanted)
            if images.ndim != 4 or images.shape[1] != 3:
                raise DataError(f"{self.mat}: 'images' has shape {images.shape}; expected (N, 3, W, H) "
                                "(MATLAB's H x W x 3 x N, transposed)")
            n, _, w, h = images.shape
            for key, ds in ((self._depth_key, depths), ("labels", labels)):
                if ds.shape != (n, w, h):
                    raise DataError(f"{self.mat}: '{key}' has shape {ds.shape} but 'images' is {images.shape}; "
                                    f"expected ({n}, {w}, {h})")
        return n, (h, w)

    def _h5(self):
        # one handle per process: an HDF5 handle survives neither pickling (spawned DataLoader workers) nor,
        # safely, a fork (forked workers), so a process that did not open it opens its own
        if self._file is None or self._file_pid != os.getpid():
            self._file, self._file_pid = _h5py().File(self.mat, "r"), os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}

    def _read(self, key: str, sample_id: str) -> np.ndarray:
        try:
            return np.asarray(self._h5()[key][self._index[sample_id]])
        except (OSError, KeyError, ValueError) as e:
            where = f"{self.mat}[{key}][{self._index[sample_id]}]"
            raise DataError(f"cannot read {where}: {one_line(e)}; the file is damaged — download it again") from e

    def read_image(self, sample_id: str) -> torch.Tensor:
        image = self._read("images", sample_id)  # (3, W, H)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(0, 2, 1))).float() / 255.0

    def read_label(self, sample_id: str, task: str, num_classes: int | None, ignore_index: int) -> torch.Tensor:
        if task == "depth":
            metres = self._read(self._depth_key, sample_id).T.astype(np.float32)
            metres[~np.isfinite(metres) | (metres <= 0)] = 0.0
            return torch.from_numpy(np.ascontiguousarray(metres))[None]
        labels = self._read("labels", sample_id).T
        table = np.where(self._table >= 0, self._table, ignore_index)
        return lookup_labels(np.ascontiguousarray(labels), table, self.label_file(sample_id, task),
                             "NYUv2 object classes (0..894)")

    def image_file(self, sample_id: str) -> str:
        return f"{self.mat}[images][{self._index[sample_id]}]"

    def label_file(self, sample_id: str, task: str) -> str:
        key = self._depth_key if task == "depth" else "labels"
        return f"{self.mat}[{key}][{self._index[sample_id]}]"

    def signature(self, sample_id: str) -> str:
        return f"{self._signature}:{self._index[sample_id]}"

    def identity(self) -> tuple:
        return (self.name, self.split)


class NYUv2NpyLayout(Layout):
    """The MTAN / LibMTL preprocessed NYUv2; see the module docstring."""

    name = "nyuv2_npy"
    looks_for = "train/image/*.npy or val/image/*.npy (the MTAN / LibMTL preprocessed NYUv2)"
    label_tasks = ("depth", "semseg")
    SPLITS = ("train", "val")

    @classmethod
    def detect(cls, path: Path) -> bool:
        return any(next((path / s / "image").glob("*.npy"), None) is not None for s in cls.SPLITS
                   if (path / s / "image").is_dir())

    @classmethod
    def splits(cls, path: Path) -> list[str | None]:
        return [s for s in cls.SPLITS if (path / s / "image").is_dir()]

    @classmethod
    def default_split(cls, path: Path, role: str) -> str | None:
        return role

    def __init__(self, path: Path, tasks, split, options: LayoutOptions, *, strict: bool = True):
        super().__init__(path, tasks, split, options, strict=strict)
        split = split or "train"
        folder = self.path / split
        if not (folder / "image").is_dir():
            present = [s for s in self.SPLITS if (self.path / s / "image").is_dir()]
            raise DataError(f"{folder / 'image'} does not exist; the MTAN/LibMTL NYUv2 layout has "
                            f"<split>/image/<i>.npy (splits here: {', '.join(present) or 'none'})")
        self.split, self.root, self._folder = split, folder, folder
        stems = {p.stem: p for p in (folder / "image").glob("*.npy")}
        if not stems:
            raise DataError(f"{folder / 'image'} holds no .npy images")
        self.ids = numeric_order(list(stems))
        self._files = {"image": stems}
        for sub in ("label", "depth"):
            found = {p.stem: p for p in (folder / sub).glob("*.npy")} if (folder / sub).is_dir() else {}
            for orphan in sorted(set(found) - set(stems))[:20]:
                self.problem(found[orphan], f"has no image {folder / 'image' / (orphan + '.npy')}; remove it or "
                             "restore the image")
            self._files[sub] = {k: v for k, v in found.items() if k in stems}
        self.class_names = NYU13_NAMES
        self.classes_source = "the NYUv2 13 classes (MTAN/LibMTL)"
        self.labelled = {"semseg": frozenset(self._files["label"]), "depth": frozenset(self._files["depth"])}

    def _load(self, path: Path) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"cannot read {path}: {one_line(e)}; the file is truncated or not a numpy array — "
                            "restore it from the dataset archive") from e

    def read_image(self, sample_id: str) -> torch.Tensor:
        path = self._files["image"][sample_id]
        image = self._load(path)
        if image.ndim != 3 or image.shape[-1] != 3 or not np.issubdtype(image.dtype, np.floating):
            raise DataError(f"{path} holds a {image.dtype} array of shape {image.shape}; MTAN/LibMTL images are "
                            "float (H, W, 3) in [0, 1]")
        if image.size and (np.nanmin(image) < -0.01 or np.nanmax(image) > 1.01 or not np.isfinite(image).all()):
            raise DataError(f"{path} holds values in [{np.nanmin(image):.3g}, {np.nanmax(image):.3g}]; MTAN/LibMTL "
                            "images are floats in [0, 1]")
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)).clamp_(0, 1)

    def read_label(self, sample_id: str, task: str, num_classes: int | None, ignore_index: int) -> torch.Tensor:
        path = self._files["depth" if task == "depth" else "label"][sample_id]
        array = self._load(path)
        if task == "depth":
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
                raise DataError(f"{path} holds a {array.dtype} array of shape {array.shape}; MTAN/LibMTL depth is "
                                "float metres (H, W, 1)")
            metres = array.astype(np.float32)
            metres[~np.isfinite(metres) | (metres <= 0)] = 0.0
            return torch.from_numpy(metres)[None]
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise DataError(f"{path} holds a {array.dtype} array of shape {array.shape}; MTAN/LibMTL labels are "
                            "(H, W) class ids 0..12 with -1 = unlabelled")
        values = np.unique(array)
        bad = values[(values != np.round(values)) | (values < -1) | (values > len(NYU13_NAMES) - 1)]
        if bad.size:
            raise DataError(f"{path} holds label values {bad_values(bad)}; MTAN/LibMTL labels are the 13 class ids "
                            "0..12 with -1 = unlabelled")
        ids = array.astype(np.int64)
        ids[ids < 0] = ignore_index
        return torch.from_numpy(ids)

    def image_file(self, sample_id: str) -> str:
        return str(self._files["image"][sample_id])

    def label_file(self, sample_id: str, task: str) -> str:
        return str(self._files["depth" if task == "depth" else "label"][sample_id])

    def signature(self, sample_id: str) -> str:
        return file_signature(self._files["image"][sample_id])

