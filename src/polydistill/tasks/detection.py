"""Object detection: an anchor-free, CenterNet/TTFNet-style head on the student's stride-4 neck.

Why this design and not FCOS or an anchor head: the student fuses its pyramid into one stride-4 map that
every task head reads, and the demo's objects are a few pixels wide at 96×128, which FCOS's stride-8
finest level would blur. One dense output per image — C class heat-maps plus four box distances per
cell — also makes a detection teacher's output a dense map like depth or segmentation: it is cached,
flipped and cropped with the image, and distilled cell by cell (soft targets), with no anchor tuning.

Conventions:

* Raw head output ``(B, C + 4, h, w)`` on the stride grid (not upsampled): class logits, then the
  log-distances (in strides) from each cell centre to the box's left, top, right and bottom edges.
* Task space (``predict``, teacher outputs, the cache) ``(B, C + 4, h, w)``: class probabilities, then the
  distances in input pixels. A teacher that outputs boxes (torchvision, DETR) is rendered into this form
  by :meth:`DetectionTask.render`.
* Targets: boxes per image ``(M, 5)`` = ``[x0, y0, x1, y1, class_id]`` in input pixel edges, class ids of
  the dataset's ``classes.yaml``; a batch pads them to ``(B, M_max, 5)`` with class ``-1``.
* Decoding: 3×3 peak picking on the heat-maps, top-k, score threshold, box from the peak's distances,
  then class-wise NMS (``torchvision.ops.batched_nms``).
* Metrics: COCO mAP@[0.5:0.95] and mAP@0.5 from pycocotools over the whole split. ``map50`` is primary:
  it is the partial-label paper's metric, and at the demo's 96×128 a box edge off by one pixel already
  costs IoU 0.75 on small objects, which the 0.5:0.95 average mostly measures.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, generalized_box_iou_loss
from torchvision.utils import draw_bounding_boxes

from ..errors import ConfigError, DataError
from ..registry import did_you_mean
from . import TASKS
from .base import DataFacts, Metric, Task
from .semseg import palette

DISTILL_MODES = ("soft", "pseudo")
#: the head's classification bias starts at this prior probability (focal-loss initialisation)
PRIOR_PROBABILITY = 0.01
#: the box Gaussian's size relative to the box (TTFNet's alpha = beta = 0.54)
GAUSSIAN_RATIO = 0.54
#: smallest Gaussian standard deviation in cells: a box narrower than a cell still has one clear peak
MIN_SIGMA = 0.35
RAW_DISTANCE_MAX = 8.0  # exp(8) strides: clamp before exp so an untrained head cannot overflow


class DetectionHead(nn.Module):
    """``convs`` shared 3×3 conv-BN-ReLU layers, then class logits (prior-probability bias) and four box
    log-distances."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int, convs: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1, bias=False),
                       nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*layers)
        self.classes = nn.Conv2d(hidden, num_classes, 1)
        self.box = nn.Conv2d(hidden, 4, 1)
        nn.init.constant_(self.classes.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))
        nn.init.normal_(self.box.weight, std=0.01)
        nn.init.constant_(self.box.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return torch.cat([self.classes(x), self.box(x)], dim=1)


def cell_centres(h: int, w: int, stride: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``(h, w)`` of the centres of the stride grid's cells."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    return ys[:, None].expand(h, w), xs[None, :].expand(h, w)


def boxes_from_distances(ltrb: torch.Tensor, stride: float) -> torch.Tensor:
    """``(B, 4, h, w)`` pixel distances -> ``(B, 4, h, w)`` boxes ``x0, y0, x1, y1`` around each cell centre."""
    cy, cx = cell_centres(ltrb.shape[-2], ltrb.shape[-1], stride, ltrb.device)
    return torch.stack([cx - ltrb[:, 0], cy - ltrb[:, 1], cx + ltrb[:, 2], cy + ltrb[:, 3]], dim=1)


def unpad(target: torch.Tensor) -> list[torch.Tensor]:
    """``(B, M, 5)`` padded boxes (class −1 = padding) -> per image ``(m, 5)``."""
    return [t[t[:, 4] >= 0] for t in target]


@TASKS.register("detection")
class DetectionTask(Task):
    """Boxes of ``num_classes`` classes; see the module docstring.

    Options: ``num_classes`` and ``class_names`` (default: the dataset's classes), ``source_ids`` (the
    dataset class id of each detection class; filled from the names — boxes of other dataset classes are
    not detection targets), ``distill`` (``soft``: the teacher's heat-maps and boxes cell by cell;
    ``pseudo``: its decoded boxes above ``pseudo_threshold`` as ground truth), ``box_weight`` (GIoU term),
    ``score_threshold``, ``nms_iou`` and ``max_detections`` (decoding), ``head_channels`` and ``head_convs``
    (the head's width — default: the student's ``head_channels`` — and its number of 3×3 layers: boxes need
    more context than a per-pixel class, so a small student gains from a deeper head than its other tasks').
    """

    name = "detection"
    metric_directions: ClassVar[dict[str, bool]] = {"map50": True, "map": True}
    primary_metric = "map50"
    score_metric = "map50"
    target_is_label = True
    dense_output = False  # the output stays on the stride grid
    box_targets = True
    target_revision = 1  # 1: a box owns its centre cell, shared cells go to the best fit (was: smallest box)
    title = "Detection"
    caption = "Detection: boxes scoring at least 0.3, with class and score; ground truth without scores."
    output_meaning = ("(B, C + 4, H/stride, W/stride) on the stride grid: C class heat-maps (probability of an object "
                      "centre in the cell), then the distances in input pixels from the cell centre to the box's "
                      "left, top, right and bottom edges; decode by 3x3 peak picking, score threshold and class-wise "
                      "NMS")
    report_metrics = ("map50", "map", "map75")
    per_class_prefix = "ap50/"
    label_folder = "boxes"  # read by the layouts into the samples' meta (they move with the image through transforms)
    label_extensions = (".json",)
    needs_class_names = True
    histogram_unit = "boxes"

    # -- data: maps end in four distances in input pixels (left, top, right, bottom), on the stride grid --------
    @classmethod
    def placeholder_target(cls, size: tuple[int, int], ignore_index: int) -> torch.Tensor:
        return torch.zeros(0, 5)

    @classmethod
    def flip_teacher_map(cls, value: torch.Tensor) -> torch.Tensor:
        """Mirrored, and the left and right distances swapped: ``(l, t, r, b) -> (r, t, l, b)``."""
        value = value.flip(-1)
        return torch.cat([value[:-4], value[[-2, -3, -4, -1]]])

    @classmethod
    def rescale_teacher_map(cls, value: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
        """The distances scale with the image."""
        return torch.cat([value[:-4], value[-4:] * torch.tensor([sx, sy, sx, sy])[:, None, None]])

    @classmethod
    def resize_output(cls, value: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Kept on the teacher's stride grid (distances in input pixels)."""
        return value

    @classmethod
    def apply_class_map(cls, value: torch.Tensor, class_map: Any) -> torch.Tensor:
        """Box teachers map their labels onto the student's classes themselves, before drawing the maps."""
        return value

    @classmethod
    def label_statistics(cls, label: Any, file: str, num_classes: int | None) -> dict[str, Any]:
        """Boxes per class; ``label`` is ``(boxes, labels)``."""
        labels = label[1]
        if not num_classes or not len(labels):
            return {}
        return {"boxes": np.bincount(labels.numpy(), minlength=num_classes)[:num_classes]}

    @classmethod
    def summarise_label_statistics(
        cls, total: dict[str, Any], class_names: Sequence[str], box_class_names: Sequence[str],
    ) -> tuple[dict[str, int] | None, dict[str, Any] | None]:
        """Boxes per class of the classes boxes can have (COCO: its thing classes)."""
        if not class_names:
            return None, None
        boxes = total.get("boxes", np.zeros(len(class_names), dtype=np.int64))
        index = {name: k for k, name in enumerate(class_names)}
        return {name: int(boxes[index[name]]) for name in box_class_names if name in index}, None

    @classmethod
    def resolve_options(cls, name: str, options: dict[str, Any], data: DataFacts,
                        teachers: Sequence[Any] = ()) -> dict[str, Any]:
        """Box classes: the data's box classes by default, a subset of its classes, with their dataset ids."""
        opts = dict(options)
        names = list(data.class_names)
        opts.setdefault("class_names", list(data.box_class_names))
        unknown = [n for n in opts["class_names"] if n not in names]
        if unknown:
            raise ConfigError(f"tasks.{name}.class_names has {unknown}, which {data.root}/classes.yaml does "
                              f"not list ({names}); detection classes are a subset of the dataset's classes")
        opts.setdefault("num_classes", len(opts["class_names"]))
        opts.setdefault("source_ids", [names.index(n) for n in opts["class_names"]])
        return opts

    def __init__(self, num_classes: int, class_names: list[str] | None = None, source_ids: list[int] | None = None,
                 distill: str = "soft", pseudo_threshold: float = 0.3, box_weight: float = 1.0,
                 score_threshold: float = 0.05, nms_iou: float = 0.6, max_detections: int = 100,
                 stride: int = 4, head_channels: int | None = None, head_convs: int = 1):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"detection num_classes must be a positive integer, got {num_classes!r}")
        class_names = [f"class_{i}" for i in range(num_classes)] if class_names is None else list(class_names)
        if len(class_names) != num_classes:
            raise ConfigError(f"detection class_names has {len(class_names)} names but num_classes is {num_classes}")
        source_ids = list(range(num_classes)) if source_ids is None else [int(i) for i in source_ids]
        if len(source_ids) != num_classes or len(set(source_ids)) != num_classes or min(source_ids) < 0:
            raise ConfigError(f"detection source_ids must be {num_classes} distinct dataset class ids, got "
                              f"{source_ids}")
        if distill not in DISTILL_MODES:
            raise ConfigError(f"unknown detection distill mode '{distill}'{did_you_mean(distill, DISTILL_MODES)}")
        for key, value in (("pseudo_threshold", pseudo_threshold), ("score_threshold", score_threshold),
                           ("nms_iou", nms_iou)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"detection {key} must be in [0, 1], got {value}")
        if max_detections < 1 or stride < 1 or box_weight < 0:
            raise ConfigError("detection max_detections and stride must be positive and box_weight >= 0")
        if head_convs < 1 or (head_channels is not None and head_channels < 1):
            raise ConfigError(f"detection head_convs and head_channels must be positive, got {head_convs} and "
                              f"{head_channels}")
        self.num_classes = num_classes
        self.class_names = [str(n) for n in class_names]
        self.source_ids = source_ids
        self._lookup = torch.full((max(source_ids) + 1,), -1, dtype=torch.int64)
        self._lookup[torch.tensor(source_ids)] = torch.arange(num_classes)
        self.distill = distill
        self.pseudo_threshold = float(pseudo_threshold)
        self.box_weight = float(box_weight)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.stride = int(stride)
        self.head_channels = None if head_channels is None else int(head_channels)
        self.head_convs = int(head_convs)

    @property
    def out_channels(self) -> int:
        return self.num_classes + 4

    def build_head(self, in_channels: int, hidden: int | None = None, input_stride: int = 4) -> nn.Module:
        self.stride = int(input_stride)
        return DetectionHead(in_channels, self.head_channels or hidden or in_channels, self.num_classes,
                             convs=self.head_convs)

    # -- task space ---------------------------------------------------------------------------------------
    def _check(self, value: torch.Tensor, what: str) -> None:
        if value.dim() != 4 or value.shape[1] != self.out_channels:
            raise ValueError(f"detection {what} must be (B, {self.out_channels}, h, w) — {self.num_classes} class "
                             f"channels and 4 box distances — got {tuple(value.shape)}")

    def predict(self, raw: torch.Tensor) -> torch.Tensor:
        self._check(raw, "raw output")
        raw = raw.float()
        distances = raw[:, self.num_classes:].clamp(max=RAW_DISTANCE_MAX).exp() * self.stride
        return torch.cat([raw[:, : self.num_classes].sigmoid(), distances], dim=1)

    def raw_from_output(self, output: torch.Tensor) -> torch.Tensor:
        self._check(output, "output")
        heat = output[:, : self.num_classes].float().clamp(1e-6, 1 - 1e-6)
        distances = output[:, self.num_classes:].float().clamp_min(1e-3) / self.stride
        return torch.cat([torch.logit(heat), distances.log()], dim=1)

    def confidence(self, output: torch.Tensor) -> torch.Tensor:
        return output[:, : self.num_classes].float().amax(1, keepdim=True).clamp(0, 1)

    # -- targets ------------------------------------------------------------------------------------------
    def task_labels(self, boxes: torch.Tensor) -> torch.Tensor:
        """Dataset class ids -> detection class ids (−1: a class this task does not detect)."""
        ids = boxes[:, 4].long()
        lookup = self._lookup.to(ids.device)
        out = torch.full_like(ids, -1)
        inside = (ids >= 0) & (ids < len(lookup))
        out[inside] = lookup[ids[inside]]
        return out

    def render(self, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None,
               grid: tuple[int, int]) -> torch.Tensor:
        """Boxes of one image (detection class ids) -> its task-space map ``(C + 4, h, w)``.

        Class channel ``c`` holds, per cell, the highest ``score × Gaussian`` of the boxes of class ``c``
        (Gaussian at the box centre's cell, standard deviations ``0.54 · size / 6``); the distances are those of
        the cell's owner (:meth:`_owners`; zero where no box's Gaussian reaches). With ``scores=None`` (ground
        truth) the peaks are exactly 1 and :meth:`decode` gives every box back up to float rounding, except two
        cases the format cannot hold: boxes centred in one cell share its one set of distances (the owner's),
        and decoding's NMS keeps one of two same-class boxes that overlap by more than ``nms_iou``
        (``benchmarks/detection_roundtrip.py`` counts both).
        """
        h, w = grid
        device = boxes.device
        out = torch.zeros(self.num_classes + 4, h, w, device=device)
        keep = (labels >= 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[keep].float(), labels[keep].long()
        if scores is not None:
            scores = scores[keep].float()
        if not len(boxes):
            return out
        gauss = self._gaussians(boxes, grid)  # (N, h, w)
        weighted = gauss if scores is None else gauss * scores[:, None, None]
        heat = out[: self.num_classes].view(self.num_classes, -1)
        heat.scatter_reduce_(0, labels[:, None].expand(-1, h * w), weighted.reshape(len(labels), -1), "amax")
        owner = self._owners(boxes, gauss, weighted)
        cy, cx = cell_centres(h, w, self.stride, device)
        assigned = owner >= 0
        b = boxes[owner.clamp_min(0)]  # (h, w, 4)
        ltrb = torch.stack([cx - b[..., 0], cy - b[..., 1], b[..., 2] - cx, b[..., 3] - cy])
        out[self.num_classes:] = ltrb * assigned
        return out

    def _centre_cells(self, boxes: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Column and row ``(N,)`` (float) of the cell holding each box's centre: where its peak is."""
        h, w = grid
        s = float(self.stride)
        centre_x = ((boxes[:, 0] + boxes[:, 2]) / 2 / s).floor().clamp(0, w - 1)
        centre_y = ((boxes[:, 1] + boxes[:, 3]) / 2 / s).floor().clamp(0, h - 1)
        return centre_x, centre_y

    def _gaussians(self, boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        h, w = grid
        s = float(self.stride)
        centre_x, centre_y = self._centre_cells(boxes, grid)
        sigma_x = (GAUSSIAN_RATIO * (boxes[:, 2] - boxes[:, 0]) / 6 / s).clamp_min(MIN_SIGMA)
        sigma_y = (GAUSSIAN_RATIO * (boxes[:, 3] - boxes[:, 1]) / 6 / s).clamp_min(MIN_SIGMA)
        ys = torch.arange(h, device=boxes.device, dtype=torch.float32)[None, :, None]
        xs = torch.arange(w, device=boxes.device, dtype=torch.float32)[None, None, :]
        dx = (xs - centre_x[:, None, None]) ** 2 / (2 * sigma_x[:, None, None] ** 2)
        dy = (ys - centre_y[:, None, None]) ** 2 / (2 * sigma_y[:, None, None] ** 2)
        return torch.exp(-(dx + dy))

    def _owners(self, boxes: torch.Tensor, gauss: torch.Tensor, weighted: torch.Tensor) -> torch.Tensor:
        """Per cell, the index of the box whose distances it holds, or −1 where no box's Gaussian reaches it
        (> 0.01).

        A box owns its centre cell: decoding reads the box there. Boxes centred in one cell: the higher score
        (heat-map value) wins, then the larger box — the cell holds one box only, and the larger box's wider
        Gaussian owns the cells around it anyway. Any other cell goes to the box with the highest heat-map value
        there (``score × Gaussian``; ties: the larger box, then the earlier one): the box a peak found at that
        cell most likely belongs to, and the one whose value the box loss weights the cell by (the heat maximum).
        The smallest covering box (this task's rule before) gave a larger box's centre cell to a smaller box
        overlapping it, which then decoded with the smaller box's edges.
        """
        n, h, w = gauss.shape
        centre_x, centre_y = self._centre_cells(boxes, (h, w))
        own_centre = torch.zeros_like(gauss, dtype=torch.bool)
        own_centre[torch.arange(n, device=gauss.device), centre_y.long(), centre_x.long()] = True
        candidates = torch.where(own_centre.any(0, keepdim=True), own_centre, gauss > 0.01)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = area.argsort(descending=True, stable=True)  # argmax returns the first of equal values
        value = weighted.masked_fill(~candidates, float("-inf"))[order]
        best = value.argmax(0)
        found = candidates.any(0)
        return torch.where(found, order[best], torch.full_like(best, -1))

    def encode(self, target: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Padded ground-truth boxes ``(B, M, 5)`` (dataset class ids) -> task-space maps ``(B, C + 4, h, w)``."""
        maps = []
        for boxes in unpad(target):
            labels = self.task_labels(boxes)
            maps.append(self.render(boxes[:, :4], labels, None, grid))
        return torch.stack(maps) if maps else torch.zeros(0, self.out_channels, *grid)

    # -- losses ------------------------------------------------------------------------------------------
    def supervised_loss(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """CenterNet's penalty-reduced focal loss on the heat-maps (per object) + ``box_weight`` · GIoU of the
        boxes predicted at the cells each ground-truth box owns (Gaussian-weighted)."""
        self._check(raw, "raw output")
        check_box_labels(target, len(self._lookup))
        encoded = self.encode(target.to(raw.device), tuple(raw.shape[-2:]))
        return self._loss_against_map(raw, encoded)

    def _loss_against_map(self, raw: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        logits = raw[:, :c].float()
        heat_t = encoded[:, :c]
        p = logits.sigmoid().clamp(1e-6, 1 - 1e-6)
        positive = heat_t >= 1.0 - 1e-6
        pos_loss = -F.logsigmoid(logits) * (1 - p) ** 2
        neg_loss = -F.logsigmoid(-logits) * p ** 2 * (1 - heat_t) ** 4
        per_cell = torch.where(positive, pos_loss, neg_loss)
        num_pos = positive.flatten(1).sum(1).clamp_min(1)
        heat_loss = per_cell.flatten(1).sum(1) / num_pos
        distances = encoded[:, c:]
        weight = heat_t.amax(1) * (distances.abs().sum(1) > 0)
        return heat_loss + self.box_weight * self._box_loss(raw, distances, weight)

    def _box_loss(self, raw: torch.Tensor, target_distances: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Per sample: Σ weight · (1 − GIoU(predicted box, target box)) / Σ weight over the weighted cells."""
        predicted = raw[:, self.num_classes:].float().clamp(max=RAW_DISTANCE_MAX).exp() * self.stride
        pred_boxes = boxes_from_distances(predicted, self.stride).permute(0, 2, 3, 1)
        target_boxes = boxes_from_distances(target_distances, self.stride).permute(0, 2, 3, 1)
        cells = weight > 0
        loss = torch.zeros_like(weight)
        if bool(cells.any()):
            loss[cells] = generalized_box_iou_loss(pred_boxes[cells], target_boxes[cells], reduction="none")
        return (loss * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1e-6)

    def distill_loss(self, raw: torch.Tensor, teacher: torch.Tensor, pixel_weight: torch.Tensor | None = None,
                     kind: str = "default") -> torch.Tensor:
        """``soft``: quality-focal BCE between the class heat-maps (per teacher peak above 0.3) plus GIoU with
        the teacher's boxes weighted by its confidence; ``pseudo``: its decoded boxes above
        ``pseudo_threshold`` as ground truth. ``pixel_weight`` scales the cells' contributions."""
        self._check(raw, "raw output")
        teacher = teacher.detach().float()
        self._check(teacher, "teacher output")
        if teacher.shape[-2:] != raw.shape[-2:]:
            teacher = F.interpolate(teacher, size=raw.shape[-2:], mode="bilinear", align_corners=False)
        if pixel_weight is not None and pixel_weight.shape[-2:] != raw.shape[-2:]:
            pixel_weight = F.interpolate(pixel_weight, size=raw.shape[-2:], mode="bilinear", align_corners=False)
        if self.distill == "pseudo":
            grid = tuple(raw.shape[-2:])
            maps = []
            for boxes, _scores, labels in self.decode(teacher, score_threshold=self.pseudo_threshold):
                maps.append(self.render(boxes, labels, None, grid))
            return self._loss_against_map(raw, torch.stack(maps))
        c = self.num_classes
        logits = raw[:, :c].float()
        heat_t = teacher[:, :c]
        quality = (heat_t - logits.sigmoid()).abs() ** 2
        bce = F.binary_cross_entropy_with_logits(logits, heat_t, reduction="none") * quality
        peaks = (heat_t == F.max_pool2d(heat_t, 3, 1, 1)) & (heat_t > 0.3)
        weight = heat_t.amax(1) * (teacher[:, c:].abs().sum(1) > 0)
        if pixel_weight is not None:
            bce = bce * pixel_weight
            weight = weight * pixel_weight[:, 0]
        heat_loss = bce.flatten(1).sum(1) / peaks.flatten(1).sum(1).clamp_min(1)
        return heat_loss + self.box_weight * self._box_loss(raw, teacher[:, c:], weight)

    @torch.no_grad()
    def disagreement(self, raw: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Per cell ``sqrt(Σ_c (σ(student logit) − teacher probability)²)`` ``(B, 1, h, w)``, scaled to mean 1
        over the batch: where the two detectors disagree (PDF-Distil's weights for feature imitation)."""
        teacher = teacher.float()
        if teacher.shape[-2:] != raw.shape[-2:]:
            teacher = F.interpolate(teacher, size=raw.shape[-2:], mode="bilinear", align_corners=False)
        c = self.num_classes
        d = (raw[:, :c].float().sigmoid() - teacher[:, :c]).pow(2).sum(1, keepdim=True).sqrt()
        return d / d.mean().clamp_min(1e-12)

    # -- decoding ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, output: torch.Tensor, score_threshold: float | None = None,
               image_size: tuple[int, int] | None = None) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Task-space maps ``(B, C + 4, h, w)`` -> per image ``(boxes (n, 4), scores (n,), labels (n,))``.

        A peak is a cell equal to its 3×3 maximum, so two adjacent peaks of equal height both count (ground
        truth's are all 1: no box's peak is suppressed by a neighbour's)."""
        self._check(output, "output")
        c = self.num_classes
        threshold = self.score_threshold if score_threshold is None else score_threshold
        heat = output[:, :c].float()
        peaks = heat * (heat == F.max_pool2d(heat, 3, 1, 1))
        boxes_all = boxes_from_distances(output[:, c:].float(), self.stride)  # (B, 4, h, w)
        height, width = image_size or (output.shape[-2] * self.stride, output.shape[-1] * self.stride)
        results = []
        for b in range(output.shape[0]):
            flat = peaks[b].flatten()
            k = min(self.max_detections * 4, flat.numel())
            scores, index = flat.topk(k)
            keep = scores >= threshold
            scores, index = scores[keep], index[keep]
            labels = index // (heat.shape[-2] * heat.shape[-1])
            cell = index % (heat.shape[-2] * heat.shape[-1])
            boxes = boxes_all[b].flatten(1)[:, cell].T
            boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                                 boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
            kept = batched_nms(boxes, scores, labels, self.nms_iou)[: self.max_detections]
            results.append((boxes[kept], scores[kept], labels[kept]))
        return results

    # -- evaluation --------------------------------------------------------------------------------------
    def new_metric(self) -> DetectionMetric:
        return DetectionMetric(self)

    def placeholder(self, height: int, width: int) -> torch.Tensor:
        return torch.zeros(0, 5)

    def visualise(self, value: torch.Tensor, image=None, score_threshold: float = 0.3,
                  depth: torch.Tensor | None = None) -> np.ndarray:
        """A task-space map ``(C + 4, h, w)`` or boxes ``(M, 5)`` -> ``(H, W, 3)`` uint8 picture with labelled
        boxes, over ``image`` when given (else black)."""
        value = torch.as_tensor(value).detach().cpu().float()
        if value.dim() == 3:
            boxes, scores, labels = self.decode(value[None], score_threshold=score_threshold)[0]
            size = (value.shape[-2] * self.stride, value.shape[-1] * self.stride)
        else:
            value = value[value[:, 4] >= 0]
            labels = self.task_labels(value)
            boxes, labels, scores = value[labels >= 0, :4], labels[labels >= 0], None
            size = (int(boxes[:, 3].max().ceil()) if len(boxes) else 1, int(boxes[:, 2].max().ceil()) if len(boxes)
                    else 1)
        if image is None:
            image = torch.zeros(3, *size)
        return self.draw(image, boxes, labels, scores, depth)

    def panel(self, value: torch.Tensor, image: torch.Tensor, **kwargs) -> np.ndarray:
        """Boxes over the image enlarged to about 256 pixels wide (at most 4×), so that the class and score labels
        (a fixed-size bitmap font) stay readable on small images; GT ``(M, 5)`` or a predicted map."""
        scale = int(min(4, max(1, round(256 / image.shape[-1]))))
        big = F.interpolate(image[None], scale_factor=scale, mode="bilinear")[0]
        value = torch.as_tensor(value).detach().cpu().float()
        if value.dim() == 3:  # a predicted map on the stride grid
            boxes, scores, labels = self.decode(value[None], score_threshold=0.3)[0]
        else:  # ground-truth boxes [x0, y0, x1, y1, dataset class id]
            value = value[value[:, 4] >= 0]
            labels = self.task_labels(value)
            boxes, labels, scores = value[labels >= 0, :4], labels[labels >= 0], None
        return self.draw(big, boxes * scale, labels, scores)

    def draw(self, image, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None,
             depth: torch.Tensor | None = None) -> np.ndarray:
        """Boxes in ``image``'s pixels drawn over it (``(3, H, W)`` float in [0, 1] or ``(H, W, 3)`` uint8), each
        labelled with its class, score and — given a depth map ``(1, H, W)`` in metres — the median depth inside
        it: "what is where, how far"."""
        img = torch.as_tensor(image).detach().cpu()
        if img.dim() == 3 and img.shape[-1] == 3 and img.shape[0] != 3:
            img = img.permute(2, 0, 1)
        canvas = (img.clamp(0, 1) * 255).round().to(torch.uint8) if img.is_floating_point() else img.to(torch.uint8)
        texts = []
        for i, label in enumerate(labels.tolist()):
            text = self.class_names[label]
            if scores is not None:
                text += f" {float(scores[i]):.2f}"
            if depth is not None:
                text += f" {box_median_depth(depth, boxes[i]):.1f}m"
            texts.append(text)
        colours = [tuple(int(v) for v in palette(self.num_classes)[label]) for label in labels.tolist()]
        if len(boxes):
            canvas = draw_bounding_boxes(canvas, boxes.float(), labels=texts, colors=colours, width=1)
        return canvas.permute(1, 2, 0).numpy()


def box_median_depth(depth: torch.Tensor, box: torch.Tensor) -> float:
    """Median of the depth map ``(1, H, W)`` (metres) inside a box; NaN for an empty box."""
    d = torch.as_tensor(depth).reshape(-1, *depth.shape[-2:])[0]
    x0, y0 = int(box[0].floor().clamp_min(0)), int(box[1].floor().clamp_min(0))
    x1, y1 = int(box[2].ceil()), int(box[3].ceil())
    patch = d[y0:y1, x0:x1]
    patch = patch[torch.isfinite(patch) & (patch > 0)]
    return float(patch.median()) if patch.numel() else float("nan")


def check_box_labels(target: torch.Tensor, num_dataset_classes: int) -> None:
    """Class ids must be −1 (padding) or a dataset class; a box must have x1 ≥ x0 and y1 ≥ y0."""
    if target.numel() == 0:
        return
    ids = target[..., 4]
    bad = (ids < -1) | (ids >= num_dataset_classes) | (ids != ids.round())
    if bool(bad.any()):
        raise DataError(f"box class ids {sorted({float(v) for v in ids[bad].tolist()})[:10]} are outside "
                        f"0..{num_dataset_classes - 1}; check the boxes' labels against classes.yaml")


class DetectionMetric(Metric):
    """COCO box mAP over a split with pycocotools: ``map`` (IoU 0.5:0.95), ``map50``, ``map75``, and
    ``ap50/<class>`` for the classes with ground truth. Detections and ground truth of every image are
    kept (a few numbers per box) and evaluated once in :meth:`compute`."""

    def __init__(self, task: DetectionTask):
        self.task = task
        self.images = 0
        self.detections: list[torch.Tensor] = []  # (n, 7): image, x0, y0, x1, y1, score, label
        self.truth: list[torch.Tensor] = []  # (m, 6): image, x0, y0, x1, y1, label

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``: task-space maps ``(B, C + 4, h, w)``; ``target``: padded boxes ``(B, M, 5)``."""
        pred, target = pred.detach(), target.detach()
        if pred.shape[0] != target.shape[0]:
            raise ValueError(f"detection prediction batch {pred.shape[0]} != target batch {target.shape[0]}")
        check_box_labels(target, len(self.task._lookup))
        for (boxes, scores, labels), gt in zip(self.task.decode(pred), unpad(target)):
            image = float(self.images)
            self.detections.append(torch.cat([torch.full((len(boxes), 1), image), boxes.cpu(),
                                              scores.cpu()[:, None], labels.cpu().float()[:, None]], 1))
            gt_labels = self.task.task_labels(gt.cpu())
            keep = gt_labels >= 0
            self.truth.append(torch.cat([torch.full((int(keep.sum()), 1), image), gt.cpu()[keep, :4],
                                         gt_labels[keep].float()[:, None]], 1))
            self.images += 1

    def compute(self) -> dict[str, float]:
        detections = torch.cat(self.detections) if self.detections else torch.zeros(0, 7)
        truth = torch.cat(self.truth) if self.truth else torch.zeros(0, 6)
        return coco_map(detections, truth, self.images, self.task.class_names)

    def state(self) -> dict[str, torch.Tensor]:
        return {"detections": torch.cat(self.detections) if self.detections else torch.zeros(0, 7),
                "truth": torch.cat(self.truth) if self.truth else torch.zeros(0, 6),
                "images": torch.tensor(self.images)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.detections = [torch.as_tensor(state["detections"]).float()]
        self.truth = [torch.as_tensor(state["truth"]).float()]
        self.images = int(state["images"])


def coco_map(detections: torch.Tensor, truth: torch.Tensor, images: int, class_names: list[str]) -> dict[str, float]:
    """COCO bbox evaluation (pycocotools) of detections ``(n, 7)`` against ground truth ``(m, 6)`` rows
    ``image, x0, y0, x1, y1, [score,] label``. Classes without ground truth are left out of the means (as
    COCO does); with no ground truth at all every value is NaN."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not len(truth):
        return {"map": float("nan"), "map50": float("nan"), "map75": float("nan")}
    gt = {"images": [{"id": i} for i in range(images)],
          "categories": [{"id": i, "name": n} for i, n in enumerate(class_names)],
          "annotations": []}
    for k, row in enumerate(truth.tolist()):
        image, x0, y0, x1, y1, label = row
        w, h = x1 - x0, y1 - y0
        gt["annotations"].append({"id": k + 1, "image_id": int(image), "category_id": int(label),
                                  "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not len(detections):
            return {"map": 0.0, "map50": 0.0, "map75": 0.0}
        results = [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": [r[1], r[2], r[3] - r[1], r[4] - r[2]],
                    "score": r[5]} for r in detections.tolist()]
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    out = {"map": max(float(stats[0]), 0.0), "map50": max(float(stats[1]), 0.0), "map75": max(float(stats[2]), 0.0)}
    precision = evaluator.eval["precision"]  # (iou, recall, class, area, max_dets)
    for i, name in enumerate(class_names):
        p = precision[0, :, i, 0, -1]
        if (p > -1).any():
            out[f"ap50/{name}"] = float(p[p > -1].mean())
    return out
