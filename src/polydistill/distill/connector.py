"""JointDistill's connector (Cheng et al., 2025; digest §1(b).1): the teachers' outputs fused into one target
per task, learned during training, which the student distils from instead of the individual teachers.

The paper gives ``p_i = ω_i · h_i(ReLU(BN(Conv×2(concat_j f_j^T))))`` and nothing else (no code, no loss
form). Every choice below is ours:

* **inputs** (``f_j^T``): polydistill's teachers answer in task space and the cache stores only that, so the
  connector reads every map every teacher gives, whatever its task (depth as log-metres, segmentation logits,
  detection heat-maps and box distances, a features teacher's own feature map), each resized to one grid of
  ``stride`` input pixels per cell (area when shrinking, bilinear when growing), concatenated and normalised
  per channel by a batch norm without affine (log-depth, logits and pixel distances differ in scale);
* **fusion**: two 3×3 conv → BN → ReLU blocks of ``width`` channels (a literal Conv∘Conv without a
  non-linearity between them would be one linear 5×5 conv), then per served task a 1×1 conv head ``h_i``;
* **residual on the teachers**: a served task's output is a learned convex mix of its *own* teachers' raw maps
  at full resolution (softmax weights, initialised equal) plus the head's correction upsampled from the grid;
  the heads start at zero, so at step 0 the student distils from the mean of its teachers and the connector
  only adds what the labels support (an untrained connector would otherwise feed noise to the student);
* **training**: its own loss is the task's supervised loss against the labels of the samples that carry one
  (the teachers' outputs are inputs, detached; the student's terms do not reach it, which would pull the
  target towards the student). It is a training-only module: its parameters live in the teacher weighting
  (optimizer, checkpoints, exact resume), never in the student or its export;
* **ω** scales the student's distillation *term* towards the connector (the weighting's per-sample weight),
  not the logits: ``ω·logits`` would change a segmentation target's temperature and ``ω·log-depth`` the
  depth itself.

Small and local on purpose: a 5×5-cell receptive field over teacher outputs can calibrate and combine the
teachers, not memorise the labels of the training images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, TrainingError
from ..registry import did_you_mean
from ..tasks import Task
from .objective import masked_mean

#: the source name of the connector's terms in the loss table, logs and feedback records
CONNECTOR = "connector"


def servable(task: Task) -> bool:
    """Whether the connector can stand in for the teachers of ``task``: labels to learn from, a dense map."""
    return type(task).has_labels and type(task).dense_output


def served_tasks(tasks: dict[str, Task], teachers_per_task: dict[str, list[str]],
                 requested: Sequence[str] | None, where: str) -> list[str]:
    """The tasks the connector serves: ``requested``, checked, or (None) every servable task with a teacher."""
    if any(CONNECTOR in names for names in teachers_per_task.values()):
        raise ConfigError(f"{where}: a teacher is named '{CONNECTOR}', the name of the connector's own terms; "
                          "rename that teacher")
    if requested is None:
        served = [t for t, task in tasks.items() if servable(task) and teachers_per_task.get(t)]
        if not served:
            raise ConfigError(f"{where}: connector is on, but no task has both labels, a dense map and a teacher "
                              f"(tasks: {', '.join(tasks)}); set connector: false")
        return served
    for t in requested:
        if t not in tasks:
            raise ConfigError(f"{where}: connector_tasks names '{t}', which is not a student task"
                              f"{did_you_mean(t, list(tasks))}")
        if not servable(tasks[t]):
            raise ConfigError(f"{where}: the connector cannot serve '{t}': it learns a dense map from labels, and "
                              f"'{t}' has {'no labels' if not type(tasks[t]).has_labels else 'no dense map'}; "
                              "leave it out of connector_tasks (its teachers then teach it directly)")
        if not teachers_per_task.get(t):
            raise ConfigError(f"{where}: connector_tasks names '{t}', which no teacher teaches: the connector "
                              "fuses a task's teachers; leave it out or add a teacher for it")
    if len(set(requested)) != len(requested) or not requested:
        raise ConfigError(f"{where}: connector_tasks must list distinct tasks, at least one (got {list(requested)})")
    return list(requested)


def input_channels(task: Task) -> int:
    """Channels of a teacher's map for ``task`` as the connector reads it (a features teacher's own width)."""
    return int(getattr(task, "channels", None) or task.out_channels)


def to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    if x.shape[-2:] == grid:
        return x
    shrink = x.shape[-2] >= grid[0] and x.shape[-1] >= grid[1]
    return F.interpolate(x, size=grid, mode="area") if shrink else F.interpolate(
        x, size=grid, mode="bilinear", align_corners=False)


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Connector(nn.Module):
    """Teacher outputs ``{teacher: {task: map}}`` → ``{task: raw map}`` for the served tasks (see the module doc)."""

    def __init__(self, tasks: dict[str, Task], teachers_per_task: dict[str, list[str]], served: Sequence[str],
                 width: int = 32, stride: int = 4):
        super().__init__()
        self.tasks = tasks
        self.served = list(served)
        self.stride = int(stride)
        #: every (task, teacher) map, in a fixed order (the order of the input channels)
        self.inputs = [(t, k) for t in tasks for k in teachers_per_task.get(t, [])]
        self.channels = [input_channels(tasks[t]) for t, _ in self.inputs]
        c_in = sum(self.channels)
        self.norm = nn.BatchNorm2d(c_in, affine=False)
        self.fuse = nn.Sequential(*conv_bn_relu(c_in, width), *conv_bn_relu(width, width))
        self.heads = nn.ModuleList(nn.Conv2d(width, tasks[t].out_channels, 1) for t in self.served)
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        #: per served task, the indices (into ``inputs``) of its own teachers and their mixing logits
        self.own = [[self.inputs.index((t, k)) for k in teachers_per_task[t]] for t in self.served]
        self.mix = nn.ParameterList(nn.Parameter(torch.zeros(len(own))) for own in self.own)

    def mix_weights(self) -> dict[str, dict[str, float]]:
        """``{task: {teacher: weight}}`` of the residual mix (what the connector trusts; for the logs)."""
        return {t: {self.inputs[i][1]: round(float(w), 5) for i, w in zip(own, torch.softmax(m.detach(), 0))}
                for t, own, m in zip(self.served, self.own, self.mix)}

    def _read(self, teacher_outputs: dict[str, dict[str, torch.Tensor]]) -> list[torch.Tensor] | None:
        maps = []
        for (t, k), channels in zip(self.inputs, self.channels):
            out = teacher_outputs.get(k, {}).get(t)
            if out is None:
                return None
            x = out.float()
            if x.dim() == 3:
                x = x[:, None]
            if type(self.tasks[t]).dense_output:
                x = self.tasks[t].raw_from_output(x)
            if x.shape[1] != channels:
                raise TrainingError(f"the connector expects {channels} channels from teacher '{k}' for '{t}' but "
                                    f"got {x.shape[1]}; the teacher's output does not match the task's options")
            maps.append(x.detach())
        return maps

    def forward(self, teacher_outputs: dict[str, dict[str, torch.Tensor]],
                size: tuple[int, int]) -> dict[str, torch.Tensor] | None:
        """Raw maps ``(B, C_t, H, W)`` at ``size`` (the input size) per served task; None when a teacher output
        is missing from the batch (the served tasks then have no distillation term in it)."""
        maps = self._read(teacher_outputs)
        if maps is None:
            return None
        grid = (math.ceil(size[0] / self.stride), math.ceil(size[1] / self.stride))
        fused = self.fuse(self.norm(torch.cat([to_grid(x, grid) for x in maps], 1)))
        raws = {}
        for t, head, own, mix in zip(self.served, self.heads, self.own, self.mix):
            weights = torch.softmax(mix, 0)
            base = sum(w * F.interpolate(maps[i], size=size, mode="bilinear", align_corners=False)
                       if maps[i].shape[-2:] != size else w * maps[i] for w, i in zip(weights, own))
            correction = F.interpolate(head(fused), size=size, mode="bilinear", align_corners=False)
            raws[t] = base + correction
        return raws

    def fit_losses(self, raws: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        """Per served task, the supervised loss of the connector's map on the samples that carry a label."""
        losses = {}
        for t, raw in raws.items():
            valid = batch["valid"].get(t)
            if valid is None or not bool(valid.any()):
                continue
            per_sample = self.tasks[t].supervised_loss(raw[valid].float(), batch["targets"][t][valid])
            losses[t] = masked_mean(per_sample, torch.ones_like(per_sample, dtype=torch.bool))
        return losses

    def targets(self, raws: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The student's distillation targets: task-space maps, detached (the connector is a teacher)."""
        return {t: self.tasks[t].predict(raw.float()).detach() for t, raw in raws.items()}
