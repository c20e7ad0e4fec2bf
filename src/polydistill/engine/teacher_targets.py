"""Teacher outputs computed once per run on un-augmented images, kept in memory as fp16 maps.

Running the teachers on every training step costs as much as the student's own step (measured on
this project's machines), so by default they run once over the training images. The stored maps join
each sample *before* augmentation and go through the same flip / zoom as the image, so the targets stay
aligned. (A persistent on-disk cache keyed by fingerprints is the job of ``polydistill.cache``.)
"""

from __future__ import annotations

import torch
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from ..data.collate import collate, move_batch
from ..teachers import Teacher


class TeacherOutputStore:
    """``store(index) -> {teacher: {task: (C, H, W) float32}}`` for dataset item ``index``."""

    def __init__(self, maps: dict[str, dict[str, torch.Tensor]]):
        self.maps = maps

    def __call__(self, index: int) -> dict[str, dict[str, torch.Tensor]]:
        return {t: {task: m[index].float() for task, m in tasks.items()} for t, tasks in self.maps.items()}

    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for tasks in self.maps.values() for m in tasks.values())


@torch.no_grad()
def precompute_teacher_outputs(teachers: list[Teacher], dataset: Dataset, *, batch_size: int = 32,
                               device: torch.device | str = "cpu", progress: bool = True) -> TeacherOutputStore:
    """Run every teacher over ``dataset`` (which must not augment) and keep their maps in fp16."""
    maps: dict[str, dict[str, torch.Tensor]] = {t.name: {} for t in teachers}
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
    return TeacherOutputStore(maps)
