"""What ``predict`` and the export's parity check read: image files, folders, globs and videos, as tensors."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import DataError
from ..files import image_tensor, open_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv"}


# ----------------------------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    #: files named directly on the command line: unreadable ones are errors, not skips
    explicit: set[Path] = field(default_factory=set)


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def collect_inputs(inputs: list[Path], videos: bool = True) -> Inputs:
    """Expand files, folders (their images and videos, sorted; a dataset folder's ``images/``) and glob
    patterns (``'photos/*.jpg'``, ``'**'`` recursive) into image and video files."""
    found = Inputs()
    wanted = IMAGE_SUFFIXES | (VIDEO_SUFFIXES if videos else set())

    def add(path: Path, explicit: bool) -> None:
        kind = found.videos if path.suffix.lower() in VIDEO_SUFFIXES else found.images
        if path not in kind:
            kind.append(path)
        if explicit:
            found.explicit.add(path)

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            folder = p / "images" if (p / "images").is_dir() else p
            for f in sorted(folder.iterdir()):
                if f.is_file() and f.suffix.lower() in wanted and not f.name.startswith("."):
                    add(f, False)
        elif p.is_file():
            if p.suffix.lower() in VIDEO_SUFFIXES and not videos:
                raise DataError(f"'{p}' is a video; give images here")
            add(p, True)
        elif _has_magic(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in wanted]
            if not files:
                raise DataError(f"the pattern '{item}' matches no image{' or video' if videos else ''} files "
                                f"({', '.join(sorted(wanted))})")
            for f in files:
                add(f, False)
        else:
            raise DataError(f"input '{p}' does not exist; give image or video files, folders or quoted glob "
                            "patterns such as 'photos/*.jpg'")
    if not found.images and not found.videos:
        raise DataError(f"no images{' or videos' if videos else ''} ({', '.join(sorted(wanted))}) found in "
                        f"{[str(p) for p in inputs]}")
    return found


def load_image(path: Path) -> torch.Tensor:
    """``(3, H, W)`` float RGB in [0, 1]; a :class:`DataError` naming the file when it cannot be decoded (the
    datasets' reader, so prediction and training accept and refuse the same files)."""
    return image_tensor(open_image(path))


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(3, H, W)`` → ``(3, h, w)`` bilinear, antialiased when shrinking (as the datasets resize for evaluation)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)[0]
