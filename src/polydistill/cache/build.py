"""Run the teachers once over a training folder and keep their outputs in a cache (or reuse a valid one).

A teacher forward costs about as much as the student's own training step, and the teachers never change,
so by default they run once per (training folder, teacher set). The cache lives in
``<distill.teacher_cache>/<slot>``: the slot names the folder and the teachers (so different teacher
sets never evict each other); its manifest's fingerprint covers what makes the outputs what they are —
each teacher's weights, preprocessing, conventions and class map (``Teacher.fingerprint``), the encodings,
and the images as served (file list, sizes, modification times, resize). A cache whose fingerprint differs
is rebuilt in place (or refused with ``rebuild=False``); a truncated or corrupted shard is an error that
names the file, never a silent rebuild over a failing disk.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch.utils.data import DataLoader

from ..data import FolderDataset
from ..data.collate import collate, move_batch
from ..tasks import task_class
from ..teachers import Teacher
from .errors import CacheError, CacheMismatch, CacheMissing
from .format import normalise_fingerprint, read_manifest
from .reader import TeacherCache
from .writer import CacheWriter


def encodings_for(teachers: list[Teacher], encoding: str = "fp16", semseg_topk: int | None = None
                  ) -> dict[tuple[str, str], Any]:
    """Each task's outputs as its task says (:meth:`~polydistill.tasks.Task.cache_encoding`: depth stays fp16,
    segmentation logits may keep their top k classes); the rest, features included, follow ``encoding``."""
    return {(teacher.name, task): task_class(task).cache_encoding(encoding, semseg_topk)
            for teacher in teachers for task in teacher.tasks}


def cache_fingerprint(teachers: list[Teacher], dataset: FolderDataset,
                      encodings: dict[tuple[str, str], Any]) -> dict[str, Any]:
    return {
        "teachers": {t.name: {"fingerprint": t.fingerprint(), "tasks": list(t.tasks)} for t in teachers},
        "data": {"images": dataset.fingerprint(), "count": len(dataset)},
        "encodings": {f"{t}/{task}": enc if isinstance(enc, str) else list(enc)
                      for (t, task), enc in encodings.items()},
    }


def cache_slot(teachers: list[Teacher], dataset: FolderDataset) -> str:
    """The cache's folder name under ``teacher_cache``: which images and which teachers (not their weights)."""
    key = json.dumps({"root": str(dataset.root.resolve()),
                      "teachers": sorted((t.name, list(t.tasks), type(t).__name__) for t in teachers)})
    return f"{dataset.root.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


@torch.no_grad()
def build_cache(teachers: list[Teacher], dataset: FolderDataset, folder: Path, fingerprint: dict[str, Any],
                encodings: dict[tuple[str, str], Any], *, batch_size: int = 32, num_workers: int = 0,
                device: torch.device | str = "cpu", progress: bool = True) -> dict[str, float]:
    """Run every teacher over ``dataset`` (un-augmented) into a new cache at ``folder``; returns timings."""
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    for teacher in teachers:
        teacher.to(device)
    seconds = {t.name: 0.0 for t in teachers}
    try:
        with CacheWriter(folder, fingerprint, len(dataset), encodings=encodings) as writer, \
                Progress(disable=not progress, transient=True) as bar:
            job = bar.add_task("teacher outputs", total=len(dataset))
            for batch in loader:
                batch = move_batch(batch, device)
                index = batch["meta"]["index"].cpu()
                for teacher in teachers:
                    t0 = time.perf_counter()
                    outputs = teacher.predict(batch["image"])
                    seconds[teacher.name] += time.perf_counter() - t0
                    for task, value in outputs.items():
                        _check_finite(teacher.name, task, value, index, dataset, folder)
                        writer.add(teacher.name, task, index, value)
                bar.advance(job, len(index))
    except OSError as exc:  # disk full, read-only folder: the writer has removed its build folder
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        fix = (f"{blocker} is a file, not a folder: set distill.teacher_cache to a folder path" if blocker else
               "Free disk space or set distill.teacher_cache to a writable folder with room")
        raise CacheError(f"cannot write the teacher cache {folder} ({exc.strerror or exc}); nothing was cached and an "
                         f"earlier cache there is unchanged. {fix}") from exc
    return {"total_s": time.perf_counter() - start, **{f"teacher_s/{n}": s for n, s in seconds.items()}}


def _check_finite(teacher: str, task: str, value: torch.Tensor, index: torch.Tensor, dataset: FolderDataset,
                  folder: Path) -> None:
    """A teacher output with NaN or Inf is a broken teacher (an fp16 overflow, damaged weights, an image it cannot
    handle): refuse it naming the teacher and the images, rather than storing values no loss can use."""
    bad = ~torch.isfinite(value.detach().flatten(1)).all(1)
    if not bool(bad.any()):
        return
    rows = index[bad.cpu()].tolist()
    files = [dataset.layout.image_file(dataset.ids[i]) for i in rows[:3]]
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    raise CacheError(f"teacher '{teacher}' returned NaN or Inf values for '{task}' on {', '.join(files)}{more}; "
                     "check the teacher's weights and preprocessing on those images (or remove them). Nothing was "
                     f"cached: {folder} is unchanged")


def describe_change(stored: dict[str, Any], given: dict[str, Any]) -> str:
    """What differs between the fingerprint a cache was built for and the current one, in words."""
    parts = []
    old_t, new_t = stored.get("teachers") or {}, given.get("teachers") or {}
    for name in sorted(set(old_t) | set(new_t)):
        if name not in new_t:
            parts.append(f"teacher '{name}' is gone")
        elif name not in old_t:
            parts.append(f"teacher '{name}' is new")
        elif old_t[name] != new_t[name]:
            parts.append(f"teacher '{name}' has other weights, preprocessing or tasks")
    old_d, new_d = stored.get("data") or {}, given.get("data") or {}
    if old_d.get("count") != new_d.get("count"):
        parts.append(f"the training set has {new_d.get('count')} images, the cache {old_d.get('count')}")
    elif old_d != new_d:
        parts.append("the training images changed (files, sizes, modification times or the resize)")
    if stored.get("encodings") != given.get("encodings"):
        parts.append("the encodings changed")
    return "; ".join(parts)


def open_or_build_cache(teachers: list[Teacher], dataset: FolderDataset, root: str | Path, *,
                        encoding: str = "fp16", semseg_topk: int | None = None, rebuild: bool = True,
                        verify: str = "full", batch_size: int = 32, num_workers: int = 0,
                        device: torch.device | str = "cpu", progress: bool = True,
                        log: Callable[[str], None] = print) -> TeacherCache:
    """The valid cache for these teachers and images under ``root``, built first when missing or stale."""
    encodings = encodings_for(teachers, encoding, semseg_topk)
    fingerprint = cache_fingerprint(teachers, dataset, encodings)
    folder = Path(root) / cache_slot(teachers, dataset)
    check = True if verify == "full" else "size"
    try:
        return TeacherCache.open(folder, fingerprint, verify=check)
    except CacheMissing:
        log(f"teacher cache: building {folder} ({len(dataset)} images, {len(teachers)} teachers)")
    except CacheMismatch as exc:
        try:
            changed = describe_change(read_manifest(folder).get("fingerprint") or {},
                                      normalise_fingerprint(fingerprint))
        except CacheError:
            changed = ""
        why = f"{exc} [{changed}]" if changed else str(exc)
        if not rebuild:
            raise CacheError(f"{why} (rebuilding is off: set distill.cache.rebuild: true or run "
                             "`polydistill cache CONFIG --rebuild`; the cache is left as it is)") from None
        log(f"teacher cache: {why} — rebuilding")
    timings = build_cache(teachers, dataset, folder, fingerprint, encodings, batch_size=batch_size,
                          num_workers=num_workers, device=device, progress=progress)
    (folder / "build.json").write_text(json.dumps({**timings, "images": len(dataset)}, indent=2))
    return TeacherCache.open(folder, fingerprint, verify="size")
