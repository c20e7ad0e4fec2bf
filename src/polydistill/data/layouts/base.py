"""What a dataset format must provide so that :class:`~polydistill.data.dataset.FolderDataset` can serve it.

Every on-disk format (the generic folder layout, NYUv2, Cityscapes, COCO) is one :class:`Layout`: it lists
the sample ids of one split, says which ids carry which label, and reads an image, a dense label, boxes and
camera metadata for an id. Everything else — resizing, augmentation, teacher maps, placeholders for missing
labels, cache fingerprints, the per-task sampler — lives once in ``FolderDataset`` and works the same for
every format. Layouts read the upstream files in place (no conversion step).

Problems found while listing (a missing camera file, an image a JSON names but the folder lacks) raise
:class:`DataError` at once, unless the layout is opened with ``strict=False`` (``polydistill data check``),
which collects them in :attr:`Layout.problems` so that one run reports all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ...errors import DataError
from ...files import bad_values
from ...registry import did_you_mean

DEFAULT_IGNORE_INDEX = 255


def lookup_labels(ids: np.ndarray, table: np.ndarray, path: str, what: str) -> torch.Tensor:
    """Map raw label ids through ``table`` (−2 marks ids the format does not define) to a long tensor."""
    ids = ids.astype(np.int64)
    present = np.unique(ids)
    unknown = present[(present < 0) | (present >= len(table))]
    if not unknown.size:
        unknown = present[table[present] == -2]
    if unknown.size:
        raise DataError(f"{path} holds label ids {bad_values(unknown)}, which are not {what}; "
                        "the file is not an original label image of this dataset — re-extract it")
    return torch.from_numpy(table[ids])


def numeric_order(ids: Sequence[str]) -> tuple[str, ...]:
    """Sort ids numerically when they are all numbers (``2`` before ``10``), else as strings."""
    if all(i.isdigit() for i in ids):
        return tuple(sorted(ids, key=int))
    return tuple(sorted(ids))


class LayoutOptions(BaseModel):
    """A layout's settings (``data.format_options``); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Layout:
    """One on-disk format: lists the samples of one split and reads them (see the module docstring).

    Subclasses set the class attributes, implement :meth:`detect`, ``__init__`` and the ``read_*`` methods,
    and fill the instance attributes below in ``__init__``.
    """

    #: the ``data.format`` value
    name: ClassVar[str]
    #: what :meth:`detect` looks for, shown when no layout recognises a folder
    looks_for: ClassVar[str]
    #: label types the format has
    label_tasks: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[LayoutOptions]] = LayoutOptions

    # filled by __init__
    #: identifies the images served (dataset *and* split): two layouts serve the same images iff equal roots.
    #: Teacher caches are keyed by it; for a single-file dataset it need not exist as a folder.
    root: Path
    split: str | None
    ids: tuple[str, ...]
    #: ids that carry each label type (types the format lacks are empty)
    labelled: dict[str, frozenset[str]]
    class_names: tuple[str, ...] = ()
    #: the classes boxes use (COCO: the thing classes); default: all classes
    box_class_names: tuple[str, ...] | None = None
    #: the ignore index the format implies (None: the dataset default, 255)
    ignore_index: int | None = None
    #: where the class list comes from, for messages
    classes_source: str = ""
    #: ``(file, problem)`` found while listing, collected when ``strict=False``
    problems: list[tuple[str, str]]

    def __init__(self, path: Path, tasks: Sequence[str], split: str | None, options: LayoutOptions,
                 *, strict: bool = True):
        self.path = Path(path)
        self.tasks = tuple(tasks)
        self.split = split
        self.options = options
        self.strict = strict
        self.problems = []

    # ---------------------------------------------------------------- discovery
    @classmethod
    def detect(cls, path: Path) -> bool:
        """Whether ``path`` looks like this format (cheap: a few directory listings)."""
        raise NotImplementedError

    @classmethod
    def available_tasks(cls, path: Path) -> tuple[str, ...]:
        """The label types to look for at ``path`` (``polydistill data check``); default: all the format has."""
        return cls.label_tasks

    @classmethod
    def splits(cls, path: Path) -> list[str | None]:
        """The splits present at ``path`` (``[None]`` for a format without splits)."""
        return [None]

    @classmethod
    def default_split(cls, path: Path, role: str) -> str | None:
        """The split used for ``role`` (``"train"`` or ``"val"``) when the config names none."""
        return None

    @classmethod
    def parse_options(cls, options: Mapping[str, Any] | None) -> LayoutOptions:
        try:
            return cls.Options(**dict(options or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            if first["type"] == "extra_forbidden":
                known = list(cls.Options.model_fields)
                hint = did_you_mean(key, known) if known else " (this format has no options)"
                raise DataError(f"data.format_options: unknown option '{key}' for format '{cls.name}'{hint}") from None
            raise DataError(f"data.format_options.{key} (format '{cls.name}'): {first['msg']}") from None

    def problem(self, where: Path | str, message: str) -> None:
        """Raise a :class:`DataError` naming ``where``, or record it when the layout is not strict."""
        if self.strict:
            raise DataError(f"{where}: {message}")
        self.problems.append((str(where), message))

    # ---------------------------------------------------------------- reading
    def read_image(self, sample_id: str) -> torch.Tensor:
        """``(3, H, W)`` float in [0, 1]."""
        raise NotImplementedError

    def read_label(self, sample_id: str, task: str, num_classes: int | None, ignore_index: int) -> torch.Tensor:
        """Depth ``(1, H, W)`` metres (0 = no measurement) or class ids ``(H, W)`` long (``ignore_index`` =
        unlabelled) for an id in ``labelled[task]``."""
        raise NotImplementedError

    def read_boxes(self, sample_id: str, num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(boxes (M, 4) x0 y0 x1 y1 in pixel edges, labels (M,))`` or None when the id has no boxes."""
        return None

    def read_meta(self, sample_id: str) -> tuple[str | None, torch.Tensor | None]:
        """``(domain, intrinsics 3x3)``; either may be None."""
        return None, None

    def image_file(self, sample_id: str) -> str:
        """Where the image comes from, for messages."""
        raise NotImplementedError

    def label_file(self, sample_id: str, task: str) -> str:
        """Where a label comes from, for messages."""
        raise NotImplementedError

    def signature(self, sample_id: str) -> str:
        """Changes whenever the image of ``sample_id`` may have changed (size and modification time)."""
        raise NotImplementedError

    def identity(self) -> tuple:
        """Extra fingerprint parts besides the root and the resize (the folder layout adds none)."""
        return (self.name, self.split)

    def describe(self) -> str:
        return f"{self.name}" + (f" (split {self.split})" if self.split else "")


def file_signature(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"
