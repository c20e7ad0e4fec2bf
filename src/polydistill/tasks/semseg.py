"""Semantic segmentation: the head predicts class logits, which are also the task-space prediction.

Keeping logits (not ids) as the task-space value lets teachers be distilled with a soft KL target and
lets the metric take either logits or ids.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode

from ..errors import ConfigError, DataError
from ..files import bad_values, open_image
from ..registry import did_you_mean
from . import TASKS
from .base import DataFacts, Metric, Task

DISTILL_MODES = ("kl", "hard")


def check_labels(target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise :class:`DataError` if a label is outside ``[0, num_classes)`` and is not ``ignore_index``.

    A wrong ``num_classes`` or an unmapped dataset (e.g. raw ADE20K ids) otherwise shows up as a CUDA
    device-side assert or, worse, silently as a wrong confusion matrix. Costs one min/max reduction;
    the offending values are only listed on the error path.
    """
    if target.numel() == 0:
        return
    labelled = torch.where(target == ignore_index, torch.zeros_like(target), target)
    lo, hi = torch.stack(torch.aminmax(labelled)).tolist()  # one device sync
    if lo >= 0 and hi < num_classes:
        return
    bad_mask = (labelled < 0) | (labelled >= num_classes)
    bad = torch.unique(labelled[bad_mask]).tolist()
    shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
    raise DataError(
        f"semseg labels hold values [{shown}] outside the valid range 0..{num_classes - 1} "
        f"(ignore_index={ignore_index} marks unlabelled pixels); check the task's num_classes "
        "or the dataset's label mapping"
    )


def read_semseg(path: Path, num_classes: int | None, ignore_index: int) -> torch.Tensor:
    """Class ids ``(H, W)`` long, refusing ids that ``classes.yaml`` does not declare."""
    image = open_image(path)
    if image.mode not in ("L", "P"):
        raise DataError(
            f"{path} is a mode-{image.mode} PNG; semseg PNGs must hold one class id per pixel "
            "(mode L or P) — "
            "convert colour masks to class ids"
        )
    ids = np.asarray(image)
    present = np.flatnonzero(np.bincount(ids.ravel()))
    bad = present[(present >= num_classes) & (present != ignore_index)]
    if bad.size:
        raise DataError(
            f"{path} contains class ids {bad_values(bad)} outside 0..{num_classes - 1} (ignore_index {ignore_index} "
            "marks unlabelled pixels); add the classes to classes.yaml or relabel those pixels"
        )
    return torch.from_numpy(ids.astype(np.int64))


def class_ids(logits: torch.Tensor) -> torch.Tensor:
    """Arg-max over the class axis of ``(B, C, H, W)``: ``max(1).indices`` (same first-maximum rule) runs about
    10× faster than ``argmax(1)`` on CPU for this strided layout, and this sits in every distillation step."""
    return logits.max(1).indices


def palette(num_classes: int) -> np.ndarray:
    """A fixed ``(C, 3)`` uint8 palette of distinct, never-black colours (black is reserved for ignore).

    Hues step by the golden angle so neighbouring ids differ strongly; saturation and brightness cycle
    so that classes far apart in id but close in hue remain distinguishable.
    """
    colours = np.empty((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        sat = (0.9, 0.6, 0.75)[i % 3]
        val = (0.95, 0.75)[(i // 3) % 2]
        colours[i] = np.round(np.array(colorsys.hsv_to_rgb(hue, sat, val)) * 255)
    return colours


def _as_labels(target: torch.Tensor) -> torch.Tensor:
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.dim() != 3:
        raise ValueError(f"semseg target must have shape (B, H, W), got {tuple(target.shape)}")
    return target.long()


def _as_image_uint8(image, shape: tuple[int, int]) -> np.ndarray:
    img = torch.as_tensor(image).detach().cpu()
    if img.dim() == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.permute(1, 2, 0)
    if img.dim() != 3 or img.shape[-1] != 3 or tuple(img.shape[:2]) != shape:
        raise ValueError(
            f"overlay image must be (3, H, W) or (H, W, 3) with H, W = {shape}, got {tuple(img.shape)}"
        )
    if img.is_floating_point():
        img = (img.clamp(0, 1) * 255).round()
    return img.to(torch.uint8).numpy()


@TASKS.register("semseg")
class SemsegTask(Task):
    """Per-pixel classification into ``num_classes`` classes; ``ignore_index`` marks unlabelled pixels.

    Options: ``num_classes`` (required), ``ignore_index`` (default 255; must lie outside the class range),
    ``temperature`` (softening of both distributions in the KL distillation loss), ``class_names``
    (used in per-class metric keys), ``label_smoothing`` (for the supervised cross-entropy).
    """

    name = "semseg"
    metric_directions: ClassVar[dict[str, bool]] = {"miou": True, "pixel_acc": True}
    primary_metric = "miou"
    score_metric = "miou"
    target_is_label = True
    title = "Segmentation"
    caption = "Segmentation: classes blended over the image (legend above)."
    output_meaning = "(B, C, H, W) class logits at the input size; softmax gives probabilities, argmax class ids"
    report_metrics = ("miou", "pixel_acc")
    per_class_prefix = "iou/"
    label_folder = "semseg"
    label_extensions = (".png",)
    needs_class_names = True
    label_interpolation = InterpolationMode.NEAREST_EXACT

    # -- data ---------------------------------------------------------------------------------------------
    @classmethod
    def read_label_file(cls, path: Path, num_classes: int | None, ignore_index: int) -> torch.Tensor:
        """Class ids ``(H, W)`` long from an 8-bit PNG (mode L or P), refusing ids the class list does not have."""
        return read_semseg(path, num_classes, ignore_index)

    @classmethod
    def placeholder_target(cls, size: tuple[int, int], ignore_index: int) -> torch.Tensor:
        return torch.full(size, ignore_index, dtype=torch.int64)

    @classmethod
    def cache_encoding(cls, default: str, semseg_topk: int | None) -> str | tuple[str, int]:
        """Logits may keep only their top k classes."""
        return ("topk", int(semseg_topk)) if semseg_topk else default

    @classmethod
    def label_statistics(cls, label: Any, file: str, num_classes: int | None) -> dict[str, Any]:
        """Pixels per class (ignored pixels are not counted)."""
        if not num_classes:
            return {}
        ids = label.numpy().ravel()
        ids = ids[(ids >= 0) & (ids < num_classes)]
        return {"pixels": np.bincount(ids, minlength=num_classes)}

    @classmethod
    def summarise_label_statistics(
        cls, total: dict[str, Any], class_names: Sequence[str], box_class_names: Sequence[str],
    ) -> tuple[dict[str, int] | None, dict[str, Any] | None]:
        if not class_names:
            return None, None
        pixels = total.get("pixels", np.zeros(len(class_names), dtype=np.int64))
        return {name: int(pixels[k]) for k, name in enumerate(class_names)}, None

    @classmethod
    def resolve_options(cls, name: str, options: dict[str, Any], data: DataFacts,
                        teachers: Sequence[Any] = ()) -> dict[str, Any]:
        """Classes and the ignore index come from the training data's classes.yaml."""
        opts = dict(options)
        if "num_classes" in opts and opts["num_classes"] != data.num_classes:
            raise ConfigError(
                f"tasks.{name}.num_classes is {opts['num_classes']} but {data.root}/classes.yaml lists "
                f"{data.num_classes} classes; remove the option or fix classes.yaml"
            )
        opts.setdefault("num_classes", data.num_classes)
        opts.setdefault("class_names", list(data.class_names))
        opts.setdefault("ignore_index", data.ignore_index)
        return opts

    def to_numpy(self, value: torch.Tensor) -> np.ndarray:
        """Class ids ``(H, W)`` (argmax of the logits)."""
        return value.argmax(0).cpu().numpy()

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        temperature: float = 1.0,
        class_names: list[str] | None = None,
        label_smoothing: float = 0.0,
        class_balance: float = 0.0,
        distill: str = "kl",
    ):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"semseg num_classes must be a positive integer, got {num_classes!r}")
        if 0 <= ignore_index < num_classes:
            raise ConfigError(
                f"semseg ignore_index={ignore_index} is a valid class id (num_classes={num_classes}); "
                "choose a value outside 0..num_classes-1, e.g. 255"
            )
        if not temperature > 0:
            raise ConfigError(f"semseg temperature must be > 0, got {temperature}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"semseg label_smoothing must be in [0, 1), got {label_smoothing}")
        if class_names is None:
            class_names = [f"class_{i}" for i in range(num_classes)]
        elif len(class_names) != num_classes:
            raise ConfigError(
                f"semseg class_names has {len(class_names)} names but num_classes is {num_classes}"
            )
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.temperature = float(temperature)
        self.class_names = [str(n) for n in class_names]
        self.label_smoothing = float(label_smoothing)
        if not 0.0 <= class_balance <= 1.0:
            raise ConfigError(f"semseg class_balance must be in [0, 1], got {class_balance}")
        self.class_balance = float(class_balance)
        if distill not in DISTILL_MODES:
            raise ConfigError(f"unknown semseg distill mode '{distill}'{did_you_mean(distill, DISTILL_MODES)}")
        self.distill = distill

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def predict(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def raw_from_output(self, output: torch.Tensor) -> torch.Tensor:
        return self._split_unmapped(output.float())[0]

    def _split_unmapped(self, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A class-mapped teacher gives C + 1 log-probabilities (last: unmapped mass, see teachers/class_map.py):
        return the C class channels and the per-pixel weight ``1 − p_unmapped``; plain logits pass through."""
        if teacher.dim() == 4 and teacher.shape[1] == self.num_classes + 1:
            known = (1.0 - teacher[:, -1:].float().exp()).clamp(0.0, 1.0)
            return teacher[:, :-1], known
        self._check_logits(teacher, "teacher logits")
        return teacher, None

    def confidence(self, output: torch.Tensor) -> torch.Tensor:
        """1 − normalised entropy of the class distribution: 1 for a one-hot, 0 for a uniform one."""
        log_p = F.log_softmax(self._split_unmapped(output.float())[0], dim=1)
        entropy = -(log_p.exp() * log_p).sum(1, keepdim=True)
        return (1.0 - entropy / math.log(self.num_classes)).clamp(0.0, 1.0)

    def _check_logits(self, raw: torch.Tensor, what: str) -> None:
        if raw.dim() != 4 or raw.shape[1] != self.num_classes:
            raise ValueError(
                f"semseg {what} must have shape (B, {self.num_classes}, H, W), got {tuple(raw.shape)}"
            )

    # -- losses ---------------------------------------------------------------------------------------
    def supervised_loss(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy per sample, averaged over its labelled pixels (0 for a sample with none)."""
        self._check_logits(raw, "raw output")
        target = _as_labels(target)
        if target.shape[-2:] != raw.shape[-2:] or target.shape[0] != raw.shape[0]:
            raise ValueError(
                f"semseg target shape {tuple(target.shape)} does not match the logits {tuple(raw.shape)}; "
                "targets must be at the head's output resolution"
            )
        check_labels(target, self.num_classes, self.ignore_index)
        ce = F.cross_entropy(
            raw.float(),
            target,
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        valid = target != self.ignore_index
        n = valid.flatten(1).sum(1).clamp_min(1)
        return (ce * self._pixel_weights(target, valid)).flatten(1).sum(1) / n

    def _pixel_weights(self, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | float:
        """Per-pixel weights ``freq(class)^-class_balance`` over the batch, with mean 1 over valid pixels.

        Rare classes (a ball covers ~3 % of the pixels) otherwise learn slowly, which short training
        budgets and mIoU (every class counts equally) punish; 0 disables it, 1 is full inverse frequency.
        """
        if self.class_balance == 0.0:
            return 1.0
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        counts = torch.bincount(safe[valid].flatten(), minlength=self.num_classes).float()
        per_class = (counts.clamp_min(1.0) / counts.sum().clamp_min(1.0)) ** -self.class_balance
        weights = per_class[safe] * valid
        return weights * (valid.sum() / weights.sum().clamp_min(1e-12))

    def distill_loss(self, raw: torch.Tensor, teacher: torch.Tensor,
                     pixel_weight: torch.Tensor | None = None, kind: str = "default") -> torch.Tensor:
        """Per-pixel loss against the teacher's logits, averaged over pixels.

        ``kl``: T² · KL(softmax(t/T) ‖ softmax(s/T)) summed over classes; the T² factor keeps gradient
        magnitudes comparable across temperatures (Hinton et al.). ``hard``: cross-entropy against the
        teacher's arg-max, i.e. pseudo-labels (as in multi-task learning on partially annotated data),
        which keeps decisions at object boundaries as sharp as the teacher's.
        """
        self._check_logits(raw, "raw output")
        teacher, known = self._split_unmapped(teacher.detach().float())
        if teacher.shape[0] != raw.shape[0]:
            raise ValueError(f"teacher batch {teacher.shape[0]} != student batch {raw.shape[0]}")
        if teacher.shape[-2:] != raw.shape[-2:]:
            teacher = F.interpolate(teacher, size=raw.shape[-2:], mode="bilinear", align_corners=False)
            if known is not None:
                known = F.interpolate(known, size=raw.shape[-2:], mode="bilinear", align_corners=False)
        if known is not None:  # soft ignore: pixels the teacher assigns to classes the student lacks
            pixel_weight = known if pixel_weight is None else pixel_weight * known
        if self.distill == "hard":
            labels = class_ids(teacher)
            loss = F.cross_entropy(raw.float(), labels, reduction="none")
            loss = loss * self._pixel_weights(labels, torch.ones_like(labels, dtype=torch.bool))
            if pixel_weight is not None:
                loss = loss * pixel_weight[:, 0]
            return loss.flatten(1).mean(1)
        t = self.temperature
        log_s = F.log_softmax(raw.float() / t, dim=1)
        log_t = F.log_softmax(teacher / t, dim=1)
        kl = (log_t.exp() * (log_t - log_s)).sum(1)
        if self.class_balance:
            kl = kl * self._pixel_weights(class_ids(teacher), torch.ones_like(kl, dtype=torch.bool))
        if pixel_weight is not None:
            kl = kl * pixel_weight[:, 0]
        return kl.flatten(1).mean(1) * t * t

    # -- evaluation -----------------------------------------------------------------------------------
    def new_metric(self) -> SemsegMetric:
        return SemsegMetric(self.num_classes, self.ignore_index, self.class_names)

    def placeholder(self, height: int, width: int) -> torch.Tensor:
        return torch.full((height, width), self.ignore_index, dtype=torch.long)

    def legend(self) -> list[tuple[str, tuple[int, int, int]]]:
        """Each class name with its colour."""
        names = list(self.class_names or [])
        return [(n, tuple(int(v) for v in c)) for n, c in zip(names, palette(len(names)))]

    def prediction_png(self, value: torch.Tensor) -> np.ndarray:
        """uint8 class ids (the argmax of the logits), the segmentation label format."""
        return value.argmax(0).to(torch.uint8).numpy()

    def visualise(self, value: torch.Tensor, image=None, alpha: float = 0.5) -> np.ndarray:
        """Logits ``(C, H, W)`` or ids ``(H, W)`` -> ``(H, W, 3)`` uint8 colour picture.

        Ignored (and out-of-range) pixels are black. With ``image`` (``(3, H, W)`` float in [0, 1] or
        ``(H, W, 3)`` uint8) the colours are blended over it with weight ``alpha``, and ignored pixels
        show the plain image instead of black.
        """
        value = torch.as_tensor(value).detach().cpu()
        ids = value.argmax(0) if value.is_floating_point() else value
        if ids.dim() != 2:
            raise ValueError(
                f"semseg value to visualise must be (C, H, W) logits or (H, W) ids, got {tuple(value.shape)}"
            )
        ids = ids.long().numpy()
        known = (ids >= 0) & (ids < self.num_classes)
        out = np.zeros((*ids.shape, 3), dtype=np.uint8)
        out[known] = palette(self.num_classes)[ids[known]]
        if image is None:
            return out
        img = _as_image_uint8(image, ids.shape)
        blend = (1 - alpha) * img.astype(np.float32) + alpha * out.astype(np.float32)
        return np.where(known[..., None], np.round(blend), img).astype(np.uint8)


class SemsegMetric(Metric):
    """Confusion matrix over the split (rows = ground truth, columns = prediction), ignore skipped.

    ``compute`` gives ``miou`` (mean over classes whose union of GT and prediction is non-empty; a class
    absent from both is not a zero, it is excluded), ``pixel_acc``, and ``iou/<class_name>`` for every
    class that has a non-empty union (absent classes are left out of the dict rather than reported as
    NaN, so logs stay valid JSON). With no labelled pixel at all, miou and pixel_acc are NaN.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: list[str] | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = class_names or [f"class_{i}" for i in range(num_classes)]
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred`` is logits ``(B, C, H, W)`` or ids ``(B, H, W)``; ``target`` ids ``(B, H, W)``.

        A class-mapped teacher's ``C + 1`` log-probabilities (the last channel: mass of classes mapped to
        nothing) are scored by its best *student* class, so it is judged on what it can teach.
        """
        pred = pred.detach()
        target = _as_labels(target.detach())
        if pred.is_floating_point():
            if pred.dim() == 4 and pred.shape[1] == self.num_classes + 1:
                pred = pred[:, : self.num_classes]
            if pred.dim() != 4 or pred.shape[1] != self.num_classes:
                raise ValueError(
                    f"semseg logits must be (B, {self.num_classes}, H, W), got {tuple(pred.shape)}"
                )
            pred = class_ids(pred)
        pred = pred.long()
        if pred.shape != target.shape:
            raise ValueError(f"semseg prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        check_labels(target, self.num_classes, self.ignore_index)
        keep = target != self.ignore_index
        p, g = pred[keep], target[keep]
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= self.num_classes):
            raise ValueError(f"semseg predicted ids must lie in 0..{self.num_classes - 1}")
        c = self.num_classes
        counts = torch.bincount(g * c + p, minlength=c * c).view(c, c)
        if self.confusion.device != counts.device:
            self.confusion = self.confusion.to(counts.device)
        self.confusion += counts

    def compute(self) -> dict[str, float]:
        cm = self.confusion.double().cpu()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        total = cm.sum()
        iou = tp[present] / union[present]
        out = {
            "miou": float(iou.mean()) if present.any() else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        }
        for i in torch.nonzero(present).flatten().tolist():
            out[f"iou/{self.class_names[i]}"] = float(tp[i] / union[i])
        return out

    def state(self) -> dict[str, torch.Tensor]:
        return {"confusion": self.confusion}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        cm = torch.as_tensor(state["confusion"]).detach()
        if cm.shape != (self.num_classes, self.num_classes):
            raise ValueError(
                f"semseg metric state has shape {tuple(cm.shape)}, expected {(self.num_classes,) * 2}"
            )
        self.confusion = cm.to(torch.int64).clone()
