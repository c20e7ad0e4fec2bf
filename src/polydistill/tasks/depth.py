"""Monocular depth: the head predicts log-metres, losses work in log space, metrics in metres.

Predicting log-depth keeps the output positive without a clamp and makes errors scale-relative,
which is what both the L1-log and the scale-invariant (SILog) losses want.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import InterpolationMode

from ..errors import ConfigError, DataError
from ..files import WIDE_GREY, one_line, open_image
from ..registry import did_you_mean
from . import TASKS
from .base import Metric, Task

LOSSES = ("l1_log", "silog")
#: added under the square root of SILog so its gradient stays finite when the variance is zero
SILOG_EPS = 1e-8


#: the farthest depth a student predicts when the task sets no ``max_depth`` (metres)
FAR_LIMIT_M = 1000.0


def valid_depth(target: torch.Tensor, min_depth: float, max_depth: float | None = None) -> torch.Tensor:
    """Pixels that carry a usable depth: finite, above ``min_depth`` (0 = no measurement), below max."""
    valid = torch.isfinite(target) & (target > min_depth)
    if max_depth is not None:
        valid &= target < max_depth
    return valid


def scale_shift_invariant_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                               pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample affine-invariant L1 (MiDaS, Ranftl et al. 2020) between ``(B, 1, H, W)`` maps.

    The target is normalised per image (minus its median, divided by its mean absolute deviation), the
    prediction is aligned to it by per-image least-squares scale and shift (closed form, differentiable),
    and the loss is the mean absolute residual over valid pixels. It is zero exactly when the prediction
    is an affine transform of the target, whatever the target's scale, so a relative-depth teacher can
    teach a metric student alongside metric labels.
    """
    b = pred.shape[0]
    m = valid.reshape(b, -1).float()
    if pixel_weight is not None:
        m = m * pixel_weight.reshape(b, -1).float()
    x = pred.reshape(b, -1).float()
    y = torch.where(valid, target.float(), torch.zeros_like(target, dtype=torch.float32)).reshape(b, -1)
    med = torch.nanmedian(torch.where(valid.reshape(b, -1), y, torch.full_like(y, float("nan"))), dim=1).values
    med = torch.nan_to_num(med, nan=0.0)[:, None]
    n = m.sum(1, keepdim=True).clamp_min(1.0)
    scale = ((y - med).abs() * m).sum(1, keepdim=True) / n
    y = (y - med) / scale.clamp_min(1e-6)
    sx, sy = (m * x).sum(1, keepdim=True), (m * y).sum(1, keepdim=True)
    sxx, sxy = (m * x * x).sum(1, keepdim=True), (m * x * y).sum(1, keepdim=True)
    det = n * sxx - sx * sx
    s = torch.where(det.abs() > 1e-12, (n * sxy - sx * sy) / det.clamp_min(1e-12), torch.zeros_like(det))
    t = (sy - s * sx) / n
    return ((s * x + t - y).abs() * m).sum(1) / n[:, 0]


def read_depth(path: Path) -> torch.Tensor:
    """Depth in metres ``(1, H, W)``; anything that is not a positive finite distance becomes 0."""
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path}: {one_line(e)}; save depth with numpy.save") from e
        if array.ndim != 2 or not (
            np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
        ):
            raise DataError(
                f"{path} holds a {array.dtype} array of shape {array.shape}; depth .npy files must be "
                "float32 metres of shape (H, W)"
            )
        metres = array.astype(np.float32)
    else:
        image = open_image(path)
        if image.mode not in WIDE_GREY:
            raise DataError(
                f"{path} is a mode-{image.mode} PNG; depth PNGs must be 16-bit millimetres (uint16) — "
                f"or save float metres as {path.with_suffix('.npy').name}"
            )
        metres = np.asarray(image).astype(np.float32) / 1000.0
    metres[~np.isfinite(metres) | (metres <= 0)] = 0.0
    return torch.from_numpy(metres)[None]


def _nonfinite_depth(file: str) -> int:
    """NaN/Inf pixels of a float depth file (``.npy``); training reads them as "no measurement", ``data check``
    counts them so that a broken export (a map of NaNs) does not pass unnoticed."""
    path = Path(file)
    if path.suffix.lower() != ".npy" or not path.is_file():
        return 0
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return 0  # reading the label already reported it
    return int((~np.isfinite(array)).sum()) if np.issubdtype(array.dtype, np.floating) else 0


def _as_b1hw(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"depth {what} must have shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
    return x


@TASKS.register("depth")
class DepthTask(Task):
    """Depth in metres; raw head output is log-depth (one channel).

    Options: ``loss`` (``"l1_log"`` or ``"silog"``), ``silog_lambda`` (how much of the global log-scale
    offset SILog forgives; 1 = fully scale-invariant), ``min_depth`` / ``max_depth`` (the valid range;
    pixels outside are not counted by losses or metrics), ``vis_range`` (fixed ``(near, far)`` metres for
    pictures, so frames of a video share one colour scale; default per-image percentiles).
    """

    name = "depth"
    metric_directions: ClassVar[dict[str, bool]] = {"abs_rel": False, "rmse": False, "delta1": True}
    primary_metric = "abs_rel"
    score_metric = "delta1"
    target_is_label = False
    title = "Depth"
    caption = "Depth: colour follows inverse depth (near = warm, far = cool) on each row's ground-truth range."
    output_meaning = "(B, 1, H, W) depth in metres at the input size"
    report_metrics = ("abs_rel", "rmse", "delta1")
    gives_distance = True
    label_folder = "depth"
    label_extensions = (".png", ".npy")
    label_interpolation = InterpolationMode.NEAREST_EXACT

    # -- data ---------------------------------------------------------------------------------------------
    @classmethod
    def read_label_file(cls, path: Path, num_classes: int | None, ignore_index: int) -> torch.Tensor:
        """Depth in metres ``(1, H, W)`` from ``.png`` (uint16 millimetres) or ``.npy`` (float metres); anything
        that is not a positive finite distance becomes 0 (no measurement)."""
        return read_depth(path)

    @classmethod
    def placeholder_target(cls, size: tuple[int, int], ignore_index: int) -> torch.Tensor:
        return torch.zeros(1, *size)

    @classmethod
    def teacher_output_kind(cls, depth_convention: str) -> str:
        return depth_convention

    @classmethod
    def cache_encoding(cls, default: str, semseg_topk: int | None) -> str | tuple[str, int]:
        """Always fp16: int8 steps over a 0.5–20 m range would be centimetres."""
        return "fp16"

    @classmethod
    def label_statistics(cls, label: Any, file: str, num_classes: int | None) -> dict[str, Any]:
        values = label.numpy()
        valid = values[values > 0]
        nonfinite = _nonfinite_depth(file)
        return {"total": values.size, "valid": valid.size, "non_finite_pixels": nonfinite,
                "non_finite_files": int(nonfinite > 0),
                "min": float(valid.min()) if valid.size else math.inf,
                "max": float(valid.max()) if valid.size else -math.inf}

    @classmethod
    def merge_label_statistics(cls, total: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
        if not total:
            return dict(counts)
        merged = super().merge_label_statistics(total, counts)
        merged["min"], merged["max"] = min(total["min"], counts["min"]), max(total["max"], counts["max"])
        return merged

    @classmethod
    def summarise_label_statistics(
        cls, total: dict[str, Any], class_names: Sequence[str], box_class_names: Sequence[str],
    ) -> tuple[dict[str, int] | None, dict[str, Any] | None]:
        """The fraction of pixels with a measurement, their range, and NaN/Inf pixels of float files."""
        if not total.get("total"):
            return None, {}
        valid = total["valid"]
        return None, {"valid_fraction": valid / total["total"],
                      "min_m": total["min"] if valid else 0.0, "max_m": total["max"] if valid else 0.0,
                      "non_finite_pixels": total["non_finite_pixels"], "non_finite_files": total["non_finite_files"]}

    @classmethod
    def describe_label_summary(cls, summary: dict[str, Any]) -> str:
        nan = (f"; {summary['non_finite_pixels']} NaN/Inf pixels in {summary['non_finite_files']} files (ignored as "
               "no measurement)" if summary.get("non_finite_pixels") else "")
        return (f"{summary['valid_fraction']:.1%} valid pixels, {summary['min_m']:.2f}–{summary['max_m']:.2f} m"
                f"{nan}")

    def __init__(
        self,
        loss: str = "l1_log",
        silog_lambda: float = 0.85,
        min_depth: float = 1e-3,
        max_depth: float | None = None,
        vis_range: tuple[float, float] | None = None,
        init_depth: float = 3.0,
    ):
        if loss not in LOSSES:
            raise ConfigError(f"unknown depth loss '{loss}'{did_you_mean(loss, LOSSES)}")
        if not 0.0 <= silog_lambda <= 1.0:
            raise ConfigError(f"depth silog_lambda must be in [0, 1], got {silog_lambda}")
        if not min_depth > 0:
            raise ConfigError(f"depth min_depth must be > 0 (log-depth needs it), got {min_depth}")
        if max_depth is not None and not max_depth > min_depth:
            raise ConfigError(f"depth max_depth ({max_depth}) must be greater than min_depth ({min_depth})")
        if vis_range is not None:
            if len(vis_range) != 2 or not 0 < vis_range[0] < vis_range[1]:
                raise ConfigError(f"depth vis_range must be (near, far) with 0 < near < far, got {vis_range}")
            vis_range = (float(vis_range[0]), float(vis_range[1]))
        self.loss = loss
        self.silog_lambda = float(silog_lambda)
        self.min_depth = float(min_depth)
        self.max_depth = None if max_depth is None else float(max_depth)
        self.vis_range = vis_range
        if not init_depth > 0:
            raise ConfigError(f"depth init_depth must be > 0 metres, got {init_depth}")
        self.init_depth = float(init_depth)

    def build_head(self, in_channels: int, hidden: int | None = None, input_stride: int = 4) -> nn.Module:
        """The shared head design, starting from a typical depth: log-depth 0 would mean 1 m everywhere,
        and the first hundreds of steps would be spent moving the whole map to the scene's scale."""
        head = super().build_head(in_channels, hidden, input_stride)
        nn.init.constant_(head[-1].bias, math.log(self.init_depth))
        return head

    @property
    def out_channels(self) -> int:
        return 1

    def predict(self, raw: torch.Tensor) -> torch.Tensor:
        """Metric depth, at most ``max_depth`` (default :data:`FAR_LIMIT_M`): a barely trained network in
        eval mode — batch-norm statistics still catching up with its weights — can reach log-depths of 50,
        i.e. 1e21 m, and turn every metric into overflow."""
        return torch.exp(raw.clamp(max=math.log(self.max_depth or FAR_LIMIT_M)))

    def raw_from_output(self, output: torch.Tensor) -> torch.Tensor:
        return torch.log(output.float().clamp_min(self.min_depth))

    # -- losses ---------------------------------------------------------------------------------------
    def _log_loss(self, raw: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
                  pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample loss between log-depth ``raw`` and metric ``depth`` over ``valid`` pixels.

        Invalid pixels are replaced *before* the log, so neither the value nor the gradient can be NaN.
        Computed in float32 so that mixed-precision training does not lose the small log differences.
        """
        raw = raw.float()
        log_t = torch.log(torch.where(valid, depth.float(), torch.ones_like(raw)))
        d = torch.where(valid, raw - log_t, torch.zeros_like(raw))
        if pixel_weight is not None:  # weighted mean / weighted variance for SILog
            d_abs = (d.abs() * pixel_weight).flatten(1)
            d2 = (d.square() * pixel_weight).flatten(1)
            dw = (d * pixel_weight).flatten(1)
        d = d.flatten(1)
        if pixel_weight is None:
            d_abs, d2, dw = d.abs(), d.square(), d
        n = valid.flatten(1).sum(1)
        n_safe = n.clamp_min(1).to(d.dtype)
        if self.loss == "l1_log":
            return d_abs.sum(1) / n_safe
        mean_d = dw.sum(1) / n_safe
        mean_d2 = d2.sum(1) / n_safe
        var = (mean_d2 - self.silog_lambda * mean_d.square()).clamp_min(0.0)
        return torch.where(n > 0, torch.sqrt(var + SILOG_EPS), torch.zeros_like(var))

    def supervised_loss(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raw = _as_b1hw(raw, "raw output")
        target = _as_b1hw(target, "target")
        if target.shape != raw.shape:
            raise ValueError(
                f"depth target shape {tuple(target.shape)} does not match the prediction {tuple(raw.shape)}; "
                "targets must be at the head's output resolution"
            )
        return self._log_loss(raw, target, valid_depth(target, self.min_depth, self.max_depth))

    def distill_loss(self, raw: torch.Tensor, teacher: torch.Tensor,
                     pixel_weight: torch.Tensor | None = None, kind: str = "default") -> torch.Tensor:
        """Same loss family with the teacher's metric depth as target (resized bilinearly if needed)."""
        raw = _as_b1hw(raw, "raw output")
        teacher = _as_b1hw(teacher, "teacher output").detach().float()
        if teacher.shape[0] != raw.shape[0]:
            raise ValueError(f"teacher batch {teacher.shape[0]} != student batch {raw.shape[0]}")
        if teacher.shape[-2:] != raw.shape[-2:]:
            teacher = F.interpolate(teacher, size=raw.shape[-2:], mode="bilinear", align_corners=False)
        if kind in ("relative", "inverse_relative"):
            # affine-invariant teacher: compare shapes, not scales (student depth or disparity vs the teacher's)
            student = torch.exp(raw.float()) if kind == "relative" else torch.exp(-raw.float())
            return scale_shift_invariant_loss(student, teacher, torch.isfinite(teacher), pixel_weight)
        if kind not in ("default", "metric"):
            raise ValueError(f"unknown depth convention '{kind}' (metric, relative or inverse_relative)")
        return self._log_loss(raw, teacher, valid_depth(teacher, self.min_depth), pixel_weight)

    # -- evaluation -----------------------------------------------------------------------------------
    def new_metric(self) -> DepthMetric:
        return DepthMetric(self.min_depth, self.max_depth)

    def placeholder(self, height: int, width: int) -> torch.Tensor:
        return torch.zeros(1, height, width)

    def colour_range(self, value: torch.Tensor, robust: bool = False) -> tuple[float, float] | None:
        """Metres ``(near, far)`` of the valid pixels: their minimum and maximum, or with ``robust`` the
        task's ``vis_range`` else their 2nd and 98th percentile; None without a valid pixel."""
        if robust:
            if self.vis_range:
                return tuple(self.vis_range)
            d = torch.as_tensor(value).detach().cpu().numpy()
            d = d[np.isfinite(d) & (d > 0)]
            return tuple(float(v) for v in np.percentile(d, [2, 98])) if d.size else None
        valid = value[torch.isfinite(value) & (value > 0)]
        return (float(valid.min()), float(valid.max())) if valid.numel() else None

    def relative_output(self, kind: str) -> bool:
        """Every depth convention but metric (relative, inverse relative) is up to scale and shift."""
        return kind != "metric"

    def prediction_png(self, value: torch.Tensor) -> np.ndarray:
        """uint16 millimetres (0 = none; at most 65.535 m), the depth label format."""
        return (value[0].clamp(0, 65.535) * 1000).round().to(torch.int32).numpy().astype(np.uint16)

    def visualise(
        self, value: torch.Tensor, vmin: float | None = None, vmax: float | None = None
    ) -> np.ndarray:
        """Depth ``(1, H, W)`` or ``(H, W)`` metres -> ``(H, W, 3)`` uint8; near = warm, far = cool.

        Colours follow *inverse* depth, which spreads the near range where most detail is. The scale is
        ``vmin``/``vmax`` (metres) if given, else the task's ``vis_range``, else the 2nd/98th percentile
        of the image. Pixels without depth (<= 0 or not finite) are black.
        """
        from matplotlib import colormaps

        depth = torch.as_tensor(value).detach().float().cpu()
        if depth.dim() == 3 and depth.shape[0] == 1:
            depth = depth[0]
        if depth.dim() != 2:
            raise ValueError(f"depth to visualise must be (1, H, W) or (H, W), got {tuple(depth.shape)}")
        depth = depth.numpy()
        valid = np.isfinite(depth) & (depth > 0)
        out = np.zeros((*depth.shape, 3), dtype=np.uint8)
        if not valid.any():
            return out
        near, far = vmin, vmax
        if near is None or far is None:
            default = self.vis_range or np.percentile(depth[valid], [2, 98])
            near = default[0] if near is None else near
            far = default[1] if far is None else far
        near = max(float(near), 1e-6)
        far = max(float(far), near * (1 + 1e-6))
        inv = 1.0 / depth[valid]
        x = np.clip((inv - 1.0 / far) / (1.0 / near - 1.0 / far), 0.0, 1.0)
        out[valid] = (colormaps["turbo"](x)[:, :3] * 255).round().astype(np.uint8)
        return out


class DepthMetric(Metric):
    """AbsRel, RMSE and δ<1.25 pooled over every valid pixel of the split (not averaged per image).

    Pooling matches the survey/InvPT evaluators, whose RMSE is sqrt(sum of squared errors / #pixels)
    over the whole validation set. Sums are kept in float64 on the device of the predictions, so that
    ``state()`` can be all-reduced directly; compute() returns NaN for every metric if no pixel was valid.
    """

    KEYS = ("count", "abs_rel_sum", "sq_err_sum", "delta1_count")

    def __init__(self, min_depth: float = 1e-3, max_depth: float | None = None):
        self.min_depth = float(min_depth)
        self.max_depth = max_depth
        self._sums = {k: torch.zeros((), dtype=torch.float64) for k in self.KEYS}

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = _as_b1hw(pred.detach(), "prediction")
        target = _as_b1hw(target.detach(), "target")
        if pred.shape != target.shape:
            raise ValueError(f"depth prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        # float64 where the device has it (MPS does not); the sums are tiny, the pixels are not
        dtype = torch.float32 if pred.device.type == "mps" else torch.float64
        g = target.to(dtype)
        valid = valid_depth(g, self.min_depth, self.max_depth)
        g = g[valid]
        p = pred.to(dtype)[valid].clamp_min(self.min_depth)
        batch = {
            "count": torch.tensor(float(g.numel()), dtype=dtype, device=g.device),
            "abs_rel_sum": ((p - g).abs() / g).sum(),
            "sq_err_sum": (p - g).square().sum(),
            "delta1_count": (torch.maximum(p / g, g / p) < 1.25).sum().to(dtype),
        }
        for k, v in batch.items():
            acc = self._sums[k]
            if acc.device != v.device:
                acc = acc.to(v.device, v.dtype)
            self._sums[k] = acc + v

    def compute(self) -> dict[str, float]:
        s = {k: float(v) for k, v in self._sums.items()}
        n = s["count"]
        if n == 0:
            return {"abs_rel": float("nan"), "rmse": float("nan"), "delta1": float("nan")}
        return {
            "abs_rel": s["abs_rel_sum"] / n,
            "rmse": (s["sq_err_sum"] / n) ** 0.5,
            "delta1": s["delta1_count"] / n,
        }

    def state(self) -> dict[str, torch.Tensor]:
        return dict(self._sums)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.KEYS) - set(state)
        if missing:
            raise ValueError(f"depth metric state lacks {sorted(missing)}")
        self._sums = {k: torch.as_tensor(state[k]).detach().clone() for k in self.KEYS}
