"""Feature distillation: the student regresses a teacher's feature map (DINOv2, CLIP, SAM, any encoder).

Foundation models teach through representations, not task outputs (DUNE, SAK, RADIO). A ``features`` task
is declared per teacher representation, with a name of its own::

    tasks:
      dino: {type: features}            # channels come from the teacher that teaches it
    teachers:
      - {name: dinov2, path: "hf:facebook/dinov2-small", tasks: [dino]}

Its head is a *projector* (DUNE): it pools the student's stride-4 neck map to a token grid of
``grid_stride`` pixels and maps it to the teacher's channels — ``linear`` (a 1×1 convolution, i.e. a
per-token linear map), ``mlp`` (two 1×1 convolutions, RADIO's adaptor) or ``transformer`` (one pre-norm
transformer block over all tokens, then a linear map, as DUNE's TP). Projectors exist for training only:
:meth:`polydistill.students.Student.inference_model` drops them.

The teacher's features are normalised by a :class:`~polydistill.distill.feature_norm.TeacherNorm` that lives
inside the head (running statistics saved with the student); the student's map is resized bilinearly to the
teacher's token grid (patch 14 vs 16 alignment), and the per-token loss is DUNE's
``cos_weight · (1 − cos) + l1_weight · SmoothL1(β=1)`` averaged over tokens. ``cosine: map`` takes instead one
cosine per image over the whole flattened map, as SAK's ``DistillLoss("cos+l1")`` (with ``norm: none``,
``cos_weight: 0.9``, ``l1_weight: 0.1``; ``tests/test_parity_sak.py``): a per-token cosine ignores how token
norms vary across the map, the map cosine does not. The task has no labels and no metrics: its value is what it
adds to the other tasks (and the loss curve in ``steps.csv``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..distill.feature_norm import NORMS, TeacherNorm, padded_dim
from ..errors import ConfigError
from ..registry import did_you_mean
from . import TASKS
from .base import DataFacts, Metric, Task

PROJECTORS = ("linear", "mlp", "transformer")
COSINES = ("token", "map")


class TransformerProjector(nn.Module):
    """DUNE's TP: one pre-norm transformer block (LayerScale 1e-4) over the tokens, then a linear map."""

    def __init__(self, dim: int, out: int, heads: int = 4, mlp_ratio: int = 4):
        super().__init__()
        heads = max(h for h in range(1, heads + 1) if dim % h == 0)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))
        self.gamma1 = nn.Parameter(torch.full((dim,), 1e-4))
        self.gamma2 = nn.Parameter(torch.full((dim,), 1e-4))
        self.out = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        y = self.norm1(tokens)
        tokens = tokens + self.gamma1 * self.attn(y, y, y, need_weights=False)[0]
        tokens = tokens + self.gamma2 * self.mlp(self.norm2(tokens))
        return self.out(tokens).transpose(1, 2).reshape(b, -1, h, w)


class FeatureHead(nn.Module):
    """Pool to the token grid, project to the teacher's (normalised) channels; holds the teacher's norm."""

    def __init__(self, in_channels: int, channels: int, projector: str, pool: int, norm: str):
        super().__init__()
        self.target_norm = TeacherNorm(channels, norm)
        out = self.target_norm.out_channels
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        if projector == "linear":
            self.projector = nn.Conv2d(in_channels, out, 1)
        elif projector == "mlp":
            hidden = max(in_channels, out)
            self.projector = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, out, 1))
        else:
            self.projector = TransformerProjector(in_channels, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.pool(x))


def feature_loss(student: torch.Tensor, target: torch.Tensor, cos_weight: float, l1_weight: float,
                 token_weight: torch.Tensor | None = None, mse_weight: float = 0.0,
                 cosine: str = "token") -> torch.Tensor:
    """Per-sample loss between ``(B, D, h, w)`` maps on the same grid, averaged over tokens: cosine + smooth-L1
    (DUNE's), plus ``mse_weight`` · mean squared error over channels (FPN feature imitation).

    ``cosine="token"``: ``1 − cos`` per token, averaged; ``"map"``: one ``1 − cos`` per image between the
    flattened maps (SAK's). A ``token_weight`` ``(B, 1, h, w)`` weights every per-token term; the map cosine,
    having no tokens, is scaled by the image's mean token weight."""
    s, t = student.float(), target.float()
    per_token = l1_weight * F.smooth_l1_loss(s, t, reduction="none", beta=1.0).mean(1)
    if cosine == "token":
        per_token = per_token + cos_weight * (1 - F.cosine_similarity(s, t, dim=1))
    if mse_weight:
        per_token = per_token + mse_weight * (s - t).pow(2).mean(1)
    if token_weight is not None:
        per_token = per_token * token_weight[:, 0]
    loss = per_token.flatten(1).mean(1)
    if cosine == "map" and cos_weight:
        map_cos = cos_weight * (1 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1))
        loss = loss + (map_cos if token_weight is None else map_cos * token_weight.flatten(1).mean(1))
    return loss


@TASKS.register("features")
class FeaturesTask(Task):
    """Regress a teacher's feature map through a projector; see the module docstring.

    Options: ``channels`` (the teacher's feature channels; filled in from the teacher when omitted),
    ``projector`` (``linear`` / ``mlp`` / ``transformer``), ``norm`` (``standardize`` / ``phi_s`` / ``none``),
    ``grid_stride`` (input pixels per student token, a multiple of the neck stride; 16 by default, DINOv2's
    patch 14 is met by resizing the student's grid to the teacher's), ``cos_weight`` / ``l1_weight`` /
    ``mse_weight`` (the loss terms), ``cosine`` (``token``: per-token cosine, DUNE's; ``map``: one cosine
    over the flattened map per image, SAK's), ``weight_by`` (a detection task: weight each token by how much the
    student's and this teacher's class heat-maps disagree there — PDF-Distil's prediction-disagreement
    weighting for feature imitation; the teacher must also teach that detection task).
    """

    name = "features"
    metric_directions: ClassVar[dict[str, bool]] = {}
    primary_metric = ""
    score_metric = ""
    target_is_label = False
    has_labels = False
    dense_output = False
    title = "Features"

    @classmethod
    def resolve_options(cls, name: str, options: dict[str, Any], data: DataFacts,
                        teachers: Sequence[Any] = ()) -> dict[str, Any]:
        """The channels come from the teachers that teach this features task (their representation)."""
        opts = dict(options)
        given = {t.name: t.feature_channels[name] for t in teachers if name in t.feature_channels}
        if not given:
            raise ConfigError(f"features task '{name}' has no teacher: add a feature teacher with tasks: [{name}]")
        if len(set(given.values())) > 1 or opts.get("channels", next(iter(given.values()))) not in given.values():
            raise ConfigError(f"features task '{name}': its teachers give {given} channels and the task says "
                              f"{opts.get('channels')}; one features task per teacher representation (or equal "
                              f"channels), and leave tasks.{name}.channels unset to take the teacher's")
        opts["channels"] = next(iter(given.values()))
        return opts

    def __init__(self, channels: int | None = None, projector: str = "mlp", norm: str = "standardize",
                 grid_stride: int = 16, cos_weight: float = 0.5, l1_weight: float = 0.5, mse_weight: float = 0.0,
                 weight_by: str | None = None, cosine: str = "token"):
        if projector not in PROJECTORS:
            raise ConfigError(f"unknown features projector '{projector}'{did_you_mean(projector, PROJECTORS)}")
        if norm not in NORMS:
            raise ConfigError(f"unknown features norm '{norm}'{did_you_mean(norm, NORMS)}")
        if cosine not in COSINES:
            raise ConfigError(f"unknown features cosine '{cosine}' (one of {', '.join(COSINES)})"
                              f"{did_you_mean(str(cosine), COSINES)}")
        if channels is not None and (not isinstance(channels, int) or channels < 1):
            raise ConfigError(f"features channels must be a positive integer, got {channels!r}")
        if grid_stride < 1 or min(cos_weight, l1_weight, mse_weight) < 0 or cos_weight + l1_weight + mse_weight == 0:
            raise ConfigError("features grid_stride must be >= 1 and cos_weight, l1_weight, mse_weight >= 0 with a "
                              "positive sum")
        self.channels, self.projector, self.norm = channels, projector, norm
        self.grid_stride, self.cos_weight, self.l1_weight = int(grid_stride), float(cos_weight), float(l1_weight)
        self.mse_weight, self.weight_by, self.cosine = float(mse_weight), weight_by, cosine
        self._target_norm: TeacherNorm | None = None

    @property
    def out_channels(self) -> int:
        if self.channels is None:
            raise ConfigError("a features task needs its teacher's channel count: set channels, or let a teacher "
                              "that teaches the task fill it in (polydistill train does)")
        return padded_dim(self.channels) if self.norm == "phi_s" else self.channels

    def build_head(self, in_channels: int, hidden: int | None = None, input_stride: int = 4) -> nn.Module:
        if self.grid_stride % input_stride:
            raise ConfigError(f"features grid_stride {self.grid_stride} must be a multiple of the student's neck "
                              f"stride ({input_stride})")
        self.out_channels  # noqa: B018  (raises the clear error when channels are unknown)
        head = FeatureHead(in_channels, self.channels, self.projector, self.grid_stride // input_stride, self.norm)
        self._target_norm = head.target_norm
        return head

    def normalise_target(self, teacher: torch.Tensor) -> torch.Tensor:
        """The teacher's raw features in the normalised space the projector predicts."""
        if self._target_norm is None:
            raise RuntimeError("build the student (build_head) before computing feature losses")
        if teacher.shape[1] != self.channels:
            raise ValueError(f"teacher features have {teacher.shape[1]} channels, the features task expects "
                             f"{self.channels}")
        return self._target_norm(teacher)

    def predict(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def raw_from_output(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def supervised_loss(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise TypeError("a features task has no labels; only teachers (and the trajectory) supervise it")

    def distill_loss(self, raw: torch.Tensor, teacher: torch.Tensor, pixel_weight: torch.Tensor | None = None,
                     kind: str = "default") -> torch.Tensor:
        """``kind="features"``: ``teacher`` is a raw teacher map, normalised here (and the norm's statistics
        updated in training); any other kind compares with a map already in the projector's space."""
        target = self.normalise_target(teacher) if kind == "features" else teacher.float()
        grid = target.shape[-2:]
        if raw.shape[-2:] != grid:
            raw = F.interpolate(raw, size=grid, mode="bilinear", align_corners=False)
        if pixel_weight is not None and pixel_weight.shape[-2:] != grid:
            pixel_weight = F.interpolate(pixel_weight, size=grid, mode="bilinear", align_corners=False)
        return feature_loss(raw, target, self.cos_weight, self.l1_weight, pixel_weight, self.mse_weight, self.cosine)

    def new_metric(self) -> Metric:
        raise TypeError("a features task has no labels to score")

    def placeholder(self, height: int, width: int) -> torch.Tensor:
        raise TypeError("a features task reads no labels")

    def visualise(self, value: torch.Tensor) -> np.ndarray:
        """The first three principal components of a ``(C, h, w)`` map as RGB (the usual PCA picture)."""
        c, h, w = value.shape
        x = value.float().reshape(c, -1).T
        x = x - x.mean(0)
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        pcs = x @ v[:3].T
        if pcs.shape[1] < 3:
            pcs = torch.cat([pcs, pcs.new_zeros(pcs.shape[0], 3 - pcs.shape[1])], 1)
        lo, hi = pcs.min(0).values, pcs.max(0).values
        rgb = ((pcs - lo) / (hi - lo).clamp_min(1e-6)).T.reshape(3, h, w)
        return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
