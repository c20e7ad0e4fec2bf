"""Writing splits in the generic folder layout: one PNG/JSON per image and label kind, marked complete."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from polydistill.errors import DataError
from polydistill.registry import did_you_mean

from .common import CLASS_NAMES, IGNORE_INDEX
from .scenes import DOMAINS, check_domains, pick_domain, render_scene

LABEL_KINDS: tuple[str, ...] = ("depth", "semseg", "boxes", "normals")
DEFAULT_LABELS: tuple[str, ...] = ("depth", "semseg", "boxes")  # what a split gets unless asked otherwise

# Bump whenever the rendered output changes, so finished splits on disk are regenerated.
GENERATOR_VERSION = 2
COMPLETE_MARKER = ".complete"
#: written before the first file and removed after `.complete`: lets a re-run clean up an interrupted run
RUNNING_MARKER = ".generating"
_GENERATED_ENTRIES = ("images", *LABEL_KINDS, "meta", "classes.yaml")


def _normalise_labels(labels, num_images: int) -> list[tuple[str, ...]]:
    """Per-image sorted label tuples from either one collection for all images or one per image."""
    if isinstance(labels, str):
        labels = (labels,)
    labels = list(labels)
    if all(isinstance(item, str) for item in labels):
        per_image = [tuple(labels)] * num_images
    elif len(labels) != num_images:
        raise DataError(f"got {len(labels)} per-image label sets for {num_images} images; give one per image")
    else:
        per_image = [(item,) if isinstance(item, str) else tuple(item) for item in labels]
    for kinds in per_image:
        for kind in kinds:
            if kind not in LABEL_KINDS:
                raise DataError(f"unknown label kind '{kind}'{did_you_mean(str(kind), LABEL_KINDS)}")
    return [tuple(sorted(set(kinds))) for kinds in per_image]


def _depth_mm(depth: np.ndarray) -> np.ndarray:
    """Metres to uint16 millimetres (0 = no measurement, clipped at 65.535 m)."""
    return np.clip(np.rint(depth * 1000), 0, 65535).astype(np.uint16)


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) to 8-bit RGB round((n + 1) / 2 * 255) per channel. Pixels without a surface
    (all-zero normals) become (0, 0, 0), which no unit normal encodes to."""
    rgb = np.clip(np.rint((normals.astype(np.float64) + 1) / 2 * 255), 0, 255).astype(np.uint8)
    rgb[~normals.any(axis=-1)] = 0
    return rgb


def decode_normals(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_normals`: normals (H, W, 3) float32, each component within 1/255 of the
    rendered one (not renormalised) and zero where there is no surface, plus that surface mask (H, W)."""
    rgb = np.asarray(rgb)
    valid = rgb.any(axis=-1)
    normals = rgb.astype(np.float32) / np.float32(127.5) - np.float32(1)
    return np.where(valid[..., None], normals, np.float32(0)), valid


_Z_DEFAULT, _Z_RLE = 0, 3  # zlib strategies


def _save_png(path: Path, array: np.ndarray, strategy: int = _Z_DEFAULT) -> None:
    """Fast PNG: zlib level 1 keeps writing from dominating generation time. Run-length strategy is
    both faster and smaller for noisy RGB and flat label maps; smooth depth prefers the default."""
    Image.fromarray(array).save(path, compress_level=1, compress_type=strategy)


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload))


@dataclass(frozen=True)
class _SplitSpec:
    """What every worker needs to render and write one image of a split (small, so cheap to pickle)."""

    out_dir: str
    seed: int
    height: int
    width: int
    domains: tuple[str, ...]
    id_prefix: str


def _write_sample(spec: _SplitSpec, index: int, labels: tuple[str, ...]) -> None:
    domain = pick_domain(spec.seed, index, spec.domains)
    sample = render_scene(spec.seed, index, spec.height, spec.width, domain)
    out, name = Path(spec.out_dir), f"{spec.id_prefix}{index:06d}"
    _save_png(out / "images" / f"{name}.png", sample["image"], _Z_RLE)
    if "depth" in labels:
        _save_png(out / "depth" / f"{name}.png", _depth_mm(sample["depth"]))
    if "semseg" in labels:
        _save_png(out / "semseg" / f"{name}.png", sample["semseg"], _Z_RLE)
    if "boxes" in labels:
        boxes = {"boxes": sample["boxes"].astype(int).tolist(), "labels": sample["box_classes"].tolist()}
        _write_json(out / "boxes" / f"{name}.json", boxes)
    if "normals" in labels:
        _save_png(out / "normals" / f"{name}.png", encode_normals(sample["normals"]))
    meta = {"intrinsics": sample["intrinsics"].tolist(), "domain": domain, "seed": spec.seed, "index": index}
    _write_json(out / "meta" / f"{name}.json", meta)


def _write_chunk(task: tuple[_SplitSpec, list[tuple[int, tuple[str, ...]]]]) -> int:
    spec, items = task
    for index, labels in items:
        _write_sample(spec, index, labels)
    return len(items)


def _run_chunks(tasks: list, workers: int) -> None:
    """Render chunks in a process pool; 'fork' avoids re-importing the package in every worker."""
    if workers <= 1:
        for task in tasks:
            _write_chunk(task)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_chunk, tasks):
            pass


def _owned_files(params: dict) -> set[str]:
    """The files (relative to the split) that a run with these marker parameters writes: nothing else is ever
    removed. Derived from the parameters rather than listed, so the marker stays what it always was."""
    per_image = params["labels"]
    num_images, prefix = int(params["num_images"]), str(params["id_prefix"])
    if len(per_image) == 1:
        per_image = per_image * num_images
    if len(per_image) != num_images:
        raise ValueError("labels do not match num_images")
    owned = {"classes.yaml"}
    for index, kinds in enumerate(per_image):
        name = f"{prefix}{index:06d}"
        owned |= {f"images/{name}.png", f"meta/{name}.json"}
        owned |= {f"{kind}/{name}.{'json' if kind == 'boxes' else 'png'}" for kind in kinds}
    return owned


def _marker_params(out: Path) -> tuple[list[dict], list[str]]:
    """Parameters of every earlier run recorded in ``out`` (finished or in progress), and unreadable markers."""
    found, broken = [], []
    for name in (COMPLETE_MARKER, RUNNING_MARKER):
        path = out / name
        if not path.exists():
            continue
        try:
            params = json.loads(path.read_text())
            _owned_files(params)
        except (OSError, ValueError, KeyError, TypeError):
            broken.append(name)
            continue
        found.append(params)
    return found, broken


def _has_files(path: Path) -> bool:
    """Whether ``path`` is anything but a tree of empty folders."""
    if not path.is_dir() or path.is_symlink():
        return True
    return any(_has_files(child) for child in path.iterdir())


def _foreign_files(out: Path, owned: set[str]) -> list[str]:
    """Files inside the generated entries of ``out`` that no recorded run wrote (user files), relative paths."""
    foreign = []
    for entry in _GENERATED_ENTRIES:
        path = out / entry
        if entry == "classes.yaml":
            if path.exists() and (not path.is_file() or path.read_text(errors="replace") != _classes_yaml()):
                foreign.append(entry)
            continue
        if not path.exists():
            continue
        if not path.is_dir() or path.is_symlink():
            foreign.append(entry)
            continue
        foreign += sorted(f"{entry}/{child.name}" for child in path.iterdir()
                          if f"{entry}/{child.name}" not in owned or not child.is_file() or child.is_symlink())
    return foreign


def _refuse(out: Path, why: str, examples: list[str]) -> DataError:
    shown = ", ".join(examples[:5]) + (f", ... ({len(examples)} in all)" if len(examples) > 5 else "")
    return DataError(f"cannot generate into {out}: {why} ({shown}); generate only replaces its own earlier output "
                     "and never deletes other files: choose an empty or new folder, or move those files away")


def _clear_generated(out: Path) -> None:
    """Remove what earlier (possibly interrupted) runs wrote into ``out``, as recorded by their markers, and
    nothing else: a folder holding anything they did not write is refused before a file is touched."""
    if out.exists() and not out.is_dir():
        raise DataError(f"cannot generate into {out}: it is a file, not a folder; choose an empty or new folder")
    if not out.is_dir():
        return
    recorded, broken = _marker_params(out)
    if broken:
        raise _refuse(out, "its generate marker is unreadable, so which files generate wrote is unknown", broken)
    markers = {COMPLETE_MARKER, RUNNING_MARKER, COMPLETE_MARKER + ".tmp", RUNNING_MARKER + ".tmp"}
    if not recorded:  # not an earlier output: only an empty folder (or empty sub-folders) is taken
        found = sorted(p.name for p in out.iterdir() if p.name not in markers and _has_files(p))
        if found:
            raise _refuse(out, "the folder is not empty and is not the output of an earlier generate", found)
    else:
        owned = set().union(*(_owned_files(params) for params in recorded))
        foreign = _foreign_files(out, owned)
        if foreign:
            raise _refuse(out, "it holds files that generate did not write", foreign)
        for name in sorted(owned):
            (out / name).unlink(missing_ok=True)
    for entry in _GENERATED_ENTRIES:  # now without files of their own: the empty folders go too
        path = out / entry
        if path.is_dir() and not path.is_symlink() and not _has_files(path):
            shutil.rmtree(path)
    for name in sorted(markers):  # the record goes last, once what it lists is gone
        (out / name).unlink(missing_ok=True)


def _classes_yaml() -> str:
    classes = {"names": list(CLASS_NAMES), "ignore_index": IGNORE_INDEX}
    return yaml.safe_dump(classes, default_flow_style=None, sort_keys=False)


def _is_complete(out: Path, params: dict) -> bool:
    marker = out / COMPLETE_MARKER
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def generate_split(
    out_dir: str | os.PathLike,
    num_images: int,
    *,
    seed: int,
    height: int,
    width: int,
    labels: Collection[str] | Sequence[Collection[str]] = DEFAULT_LABELS,
    domains: Sequence[str] | None = None,
    workers: int | None = None,
    id_prefix: str = "",
) -> Path:
    """Render `num_images` scenes into the generic folder layout and return `out_dir`.

    `labels` is one collection of label kinds for all images or one collection per image (to simulate
    partially labelled data). `domains` restricts the per-image domain draw (None = all). A finished
    split is marked by `.complete` holding these parameters (a run in progress by `.generating`): calling
    again with the same parameters returns at once; the files an earlier run wrote (those its marker's
    parameters name) are cleared and regenerated. A folder holding anything else is refused with a
    DataError before a file is touched: generate never deletes what it did not write. The output does
    not depend on `workers`.
    """
    if num_images < 0 or height < 1 or width < 1:
        raise DataError(
            f"cannot generate {num_images} images of {height}x{width}: need num_images >= 0 and a positive size"
        )
    per_image = _normalise_labels(labels, num_images)
    domains = tuple(DOMAINS if domains is None else domains)
    check_domains(domains)
    out = Path(out_dir)
    params = {
        "generator_version": GENERATOR_VERSION,
        "num_images": int(num_images),
        "seed": int(seed),
        "height": int(height),
        "width": int(width),
        "labels": [list(per_image[0])] if len(set(per_image)) == 1 else [list(k) for k in per_image],
        "domains": list(domains),
        "id_prefix": id_prefix,
    }
    if _is_complete(out, params):
        return out
    _clear_generated(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / (RUNNING_MARKER + ".tmp"), params)
    os.replace(out / (RUNNING_MARKER + ".tmp"), out / RUNNING_MARKER)
    used = {kind for kinds in per_image for kind in kinds}
    for name in ("images", "meta", *sorted(used)):
        (out / name).mkdir(parents=True, exist_ok=True)

    workers = max(1, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    spec = _SplitSpec(str(out), int(seed), int(height), int(width), domains, id_prefix)
    items = list(enumerate(per_image))
    chunk = max(1, min(32, math.ceil(len(items) / (4 * workers))))
    tasks = [(spec, items[i : i + chunk]) for i in range(0, len(items), chunk)]
    _run_chunks(tasks, min(workers, len(tasks)))

    (out / "classes.yaml").write_text(_classes_yaml())
    tmp = out / (COMPLETE_MARKER + ".tmp")
    _write_json(tmp, params)
    os.replace(tmp, out / COMPLETE_MARKER)
    (out / RUNNING_MARKER).unlink()
    return out
