"""Teacher outputs computed once on un-augmented images, kept in memory as fp16 maps.

Running the teachers on every training step costs as much as the student's own step (measured on
this project's machines), so by default they run once over the training images. The stored maps join
each sample *before* augmentation and go through the same flip / zoom as the image, so the targets stay
aligned. With a cache folder, the maps are also kept on disk between runs, keyed by a fingerprint of
the teachers' weights and of the images, so a changed teacher or dataset is never served stale maps.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import torch
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from ..data import FolderDataset
from ..data.collate import collate, move_batch
from ..teachers import Teacher


class TeacherOutputStore:
    """``store(index) -> {teacher: {task: (C, H, W) float32}}`` for dataset item ``index``."""

    def __init__(self, maps: dict[str, dict[str, torch.Tensor]]):
        self.maps = maps

    def __call__(self, index: int) -> dict[str, dict[str, torch.Tensor]]:
        return {t: {task: m[index].float() for task, m in tasks.items()} for t, tasks in self.maps.items()}


def outputs_fingerprint(teachers: list[Teacher], dataset: FolderDataset) -> str:
    h = hashlib.sha256(dataset.fingerprint().encode())
    for teacher in teachers:
        h.update(f"{teacher.name}:{','.join(teacher.tasks)}:{teacher.fingerprint()};".encode())
    return h.hexdigest()[:20]


@torch.no_grad()
def precompute_teacher_outputs(teachers: list[Teacher], dataset: FolderDataset, *, batch_size: int = 32,
                               device: torch.device | str = "cpu", progress: bool = True,
                               cache_dir: str | Path | None = None) -> TeacherOutputStore:
    """Run every teacher over ``dataset`` (which must not augment) and keep their maps in fp16."""
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{outputs_fingerprint(teachers, dataset)}.safetensors"
        if cache_file.is_file():
            flat = load_file(str(cache_file))
            maps: dict[str, dict[str, torch.Tensor]] = {}
            for key, tensor in flat.items():
                name, task = key.split("/", 1)
                maps.setdefault(name, {})[task] = tensor
            return TeacherOutputStore(maps)
    maps = {t.name: {} for t in teachers}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for teacher in teachers:
        teacher.to(device)
    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task("teacher targets", total=len(dataset))
        for batch in loader:
            batch = move_batch(batch, device)
            index = batch["meta"]["index"].cpu()
            for teacher in teachers:
                for task, out in teacher.predict(batch["image"]).items():
                    if task not in maps[teacher.name]:
                        maps[teacher.name][task] = torch.empty((len(dataset), *out.shape[1:]), dtype=torch.float16)
                    maps[teacher.name][task][index] = out.to("cpu", torch.float16)
            bar.advance(job, len(index))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{cache_file.name}")
        save_file({f"{n}/{t}": m for n, tasks in maps.items() for t, m in tasks.items()}, str(tmp))
        os.replace(tmp, cache_file)
    return TeacherOutputStore(maps)
