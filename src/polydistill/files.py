"""Reading image, JSON and label files, with errors that name the file: shared by tasks (their label readers), the
dataset layouts and ``predict``'s inputs.

It sits at the top level, below both ``tasks`` and ``data``, because ``data`` asks the tasks how to read their
labels: a task importing the ``data`` package for these helpers would close an import cycle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from .errors import DataError


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def open_image(path: Path) -> Image.Image:
    """Decode the whole file now, so that a corrupt or truncated file fails here, naming itself."""
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty (0 bytes), not an image — an interrupted copy or download? "
                            "Copy the file again or remove it")
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(
            f"cannot read {path}: {one_line(e)}; the file is corrupt or not an image — "
            "re-export or remove it"
        ) from e
    return image


#: Pillow's modes of 16-bit (and 32-bit integer) single-channel images
WIDE_GREY = ("I;16", "I;16B", "I;16L", "I")


def image_tensor(image: Image.Image) -> torch.Tensor:
    """``(3, H, W)`` float in [0, 1] from any PIL image (grey, palette and RGBA become RGB; alpha is dropped).

    16-bit grey images are scaled by 65535, not clipped: Pillow's ``convert("RGB")`` would saturate every
    value above 255 to white."""
    if image.mode in WIDE_GREY:
        grey = torch.from_numpy(np.asarray(image).astype(np.float32) / 65535.0).clamp_(0.0, 1.0)
        return grey[None].expand(3, -1, -1).contiguous()
    return F.to_dtype(F.pil_to_tensor(image.convert("RGB")), torch.float32, scale=True)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot parse {path}: {one_line(e)}; fix the JSON or remove the file") from e
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_uint16_png(path: Path, what: str) -> np.ndarray:
    """A 16-bit single-channel PNG as ``uint16`` (Pillow opens it as mode ``I;16`` or ``I``)."""
    image = open_image(path)
    if image.mode not in WIDE_GREY:
        raise DataError(f"{path} is a mode-{image.mode} PNG; {what} PNGs are 16-bit single-channel (uint16)")
    return np.asarray(image).astype(np.uint16)


def read_id_png(path: Path, what: str) -> np.ndarray:
    """An 8-bit id map (mode ``L`` or ``P``) as ``uint8``."""
    image = open_image(path)
    if image.mode not in ("L", "P"):
        raise DataError(f"{path} is a mode-{image.mode} PNG; {what} PNGs hold one 8-bit id per pixel (mode L or P)")
    return np.asarray(image)


def bad_values(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")
