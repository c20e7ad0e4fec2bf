"""How teacher maps are stored in a cache: ``fp16``, ``int8`` or ``topk``.

A teacher map is a ``(C, h, w)`` float tensor per sample. Each encoding turns a shard of them into a few
plain numpy arrays (saved as ``.npy`` files) and decodes one sample back to float32:

``fp16``
    the values as float16 (``data``: ``(n, C, h, w)``). Relative error at most 2**-11; values beyond
    float16's range (±65504) are refused rather than stored as inf.
``int8``
    per-channel affine quantisation with one scale and offset per *shard and channel* (``data``: uint8
    ``(n, C, h, w)`` codes, ``affine``: float32 ``(2, C)`` = scale, offset). ``x ≈ code * scale + offset``
    with ``scale = (max - min) / 255`` over the channel's values in the shard, so the error is at most half a
    quantisation step, ``(max - min) / 510`` of that channel in that shard (plus float32 rounding). Half the
    size of fp16; suits maps whose channels have a bounded range (depth, features).
``topk``
    for class logits or log-probabilities: per pixel the ``k`` largest log-probabilities (after
    ``log_softmax`` over channels) as float16 (``data``: ``(n, k, h, w)``) and their class ids (``ids``: uint8
    when ``C <= 256``, else int16). Decoding returns ``C``-channel *log-probabilities* where the probability
    mass not covered by the top k, ``1 - sum(exp(topk))``, is spread evenly over the other ``C - k`` classes
    (clamped so the log stays finite and never above the k-th kept value). Exact up to fp16 for ``k = C``;
    for ``k < C`` the argmax and the top-k probabilities are kept. ``log_softmax`` of the result equals the
    result, so losses that soften logits with a temperature see the same distribution up to the tail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import CacheError

ENCODINGS = ("fp16", "int8", "topk")
#: smallest probability mass the top-k decoder gives to the classes it did not keep (keeps the log finite)
MIN_REST = 1e-8
_FP16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ArraySpec:
    """One array stored per shard: per-sample arrays have a leading sample axis, per-shard ones do not."""

    dtype: str
    shape: tuple[int, ...]
    per_sample: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "per_sample": self.per_sample}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ArraySpec:
        return cls(str(d["dtype"]), tuple(int(s) for s in d["shape"]), bool(d["per_sample"]))

    def shard_shape(self, count: int) -> tuple[int, ...]:
        return (count, *self.shape) if self.per_sample else self.shape


@dataclass(frozen=True)
class Encoding:
    """An encoding of one (teacher, task) map: ``Encoding("fp16")``, ``Encoding("int8")``, ``Encoding("topk", k)``."""

    kind: str = "fp16"
    k: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENCODINGS:
            raise CacheError(f"unknown cache encoding '{self.kind}'; use one of {list(ENCODINGS)}")
        if self.kind == "topk" and (not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1):
            raise CacheError(f"encoding 'topk' needs k >= 1 (an int), got {self.k!r}")
        if self.kind != "topk" and self.k is not None:
            raise CacheError(f"encoding '{self.kind}' takes no k (got k={self.k})")

    @classmethod
    def parse(cls, spec: str | tuple | list | Encoding) -> Encoding:
        """Accept ``"fp16"``, ``"int8"``, ``("topk", k)`` (or an :class:`Encoding`)."""
        if isinstance(spec, Encoding):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, (tuple, list)) and len(spec) == 2 and spec[0] == "topk":
            k = spec[1]
            return cls("topk", int(k) if isinstance(k, np.integer) else k)
        raise CacheError(f"cache encoding must be 'fp16', 'int8' or ('topk', k); got {spec!r}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind} if self.k is None else {"kind": self.kind, "k": self.k}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Encoding:
        return cls(str(d["kind"]), d.get("k"))

    def check_shape(self, shape: tuple[int, ...], what: str) -> None:
        if len(shape) != 3 or min(shape) < 1:
            raise CacheError(f"{what}: teacher maps must be (B, C, h, w) with non-empty sizes, got per-sample "
                             f"shape {tuple(shape)}")
        if self.kind == "topk":
            if self.k > shape[0]:
                raise CacheError(f"{what}: topk k={self.k} exceeds the {shape[0]} channels (classes) of the map")
            if shape[0] > 32768:
                raise CacheError(f"{what}: topk stores class ids as int16, so at most 32768 classes (got {shape[0]})")

    def buffer_specs(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        """Arrays the writer fills sample by sample (before :meth:`finalize`)."""
        c, h, w = shape
        if self.kind == "fp16":
            return {"data": ArraySpec("float16", (c, h, w))}
        if self.kind == "int8":  # raw float32, quantised once the shard's channel ranges are known
            return {"raw": ArraySpec("float32", (c, h, w))}
        return {"data": ArraySpec("float16", (self.k, h, w)), "ids": ArraySpec(_ids_dtype(c), (self.k, h, w))}

    def stored_specs(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        """Arrays saved per shard (one ``.npy`` file each)."""
        if self.kind == "int8":
            c, h, w = shape
            return {"data": ArraySpec("uint8", (c, h, w)), "affine": ArraySpec("float32", (2, c), per_sample=False)}
        return self.buffer_specs(shape)

    def prepare(self, values: torch.Tensor, what: str) -> dict[str, np.ndarray]:
        """``(B, C, h, w)`` teacher maps → per-sample buffer arrays (see :meth:`buffer_specs`)."""
        values = values.detach()
        if self.kind == "fp16":
            half = values.to(torch.float16).cpu()  # convert on the device: half the transfer
            if not torch.isfinite(half).all():
                finite = bool(torch.isfinite(values).all())
                raise CacheError(f"{what}: " + ("values exceed float16's range (±65504); use encoding 'int8'"
                                                if finite else "teacher output holds NaN or inf values"))
            return {"data": half.numpy()}
        if self.kind == "int8":
            raw = values.to(torch.float32).cpu()
            if not torch.isfinite(raw).all():
                raise CacheError(f"{what}: teacher output holds NaN or inf values (or exceeds float32)")
            return {"raw": raw.numpy()}
        top, ids = topk_encode(values, self.k)
        if np.isnan(top).any():
            raise CacheError(f"{what}: teacher logits hold NaN (or +inf) values")
        return {"data": top, "ids": ids}

    def finalize(self, buffers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A complete shard's buffers → the arrays to save."""
        if self.kind == "int8":
            codes, affine = quantize_int8(buffers["raw"])
            return {"data": codes, "affine": affine}
        return buffers

    def decode(self, arrays: dict[str, np.ndarray], pos: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Sample ``pos`` of a shard (memory-mapped arrays: only that sample is read) → float32 ``(C, h, w)``."""
        if self.kind == "fp16":
            return torch.from_numpy(np.array(arrays["data"][pos], dtype=np.float32))
        if self.kind == "int8":
            return torch.from_numpy(dequantize_int8(arrays["data"][pos], arrays["affine"]))
        return topk_decode(arrays["data"][pos], arrays["ids"][pos], shape[0])


def _ids_dtype(num_classes: int) -> str:
    return "uint8" if num_classes <= 256 else "int16"


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, C, h, w)`` float → uint8 codes and float32 ``(2, C)`` affine (scale, offset) per channel.

    ``|x - dequantize_int8(code, affine)| <= scale / 2`` with ``scale = (max - min) / 255`` of the channel
    over the ``n`` samples (plus float32 rounding)."""
    x = np.asarray(x, dtype=np.float32)
    lo = x.min(axis=(0, 2, 3)).astype(np.float64)
    hi = x.max(axis=(0, 2, 3)).astype(np.float64)
    scale = (hi - lo) / 255.0
    affine = np.stack([scale, lo]).astype(np.float32)
    # quantise with the stored (float32) scale/offset so decoding inverts exactly what was encoded
    s, off = affine[0][:, None, None], affine[1][:, None, None]
    inv = np.where(s > 0, s, np.float32(1.0))
    codes = np.empty(x.shape, dtype=np.uint8)
    for i in range(x.shape[0]):  # one sample at a time keeps temporaries small
        codes[i] = np.clip(np.rint((x[i] - off) / inv), 0, 255).astype(np.uint8)
    return codes, affine


def dequantize_int8(codes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """uint8 codes ``(..., C, h, w)`` and ``(2, C)`` affine → float32 values."""
    affine = np.asarray(affine, dtype=np.float32)
    out = np.asarray(codes, dtype=np.float32)  # a copy: reads only these codes from a memmap
    out *= affine[0][:, None, None]
    out += affine[1][:, None, None]
    return out


def topk_encode(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(B, C, h, w)`` logits or log-probabilities → top-k log-probabilities (float16, ``(B, k, h, w)``,
    descending) and their class ids (uint8 if ``C <= 256`` else int16). Runs on the logits' device."""
    logp = torch.log_softmax(logits.detach().float(), dim=1)
    logp = logp.clamp_min(-_FP16_MAX)  # -inf (a class ruled out) stays representable and exp() → 0
    top, ids = logp.topk(k, dim=1)
    id_dtype = torch.uint8 if logits.shape[1] <= 256 else torch.int16
    return top.to(torch.float16).cpu().numpy(), ids.to(id_dtype).cpu().numpy()


def topk_decode(values: np.ndarray | torch.Tensor, ids: np.ndarray | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Top-k log-probabilities and class ids ``(..., k, h, w)`` → float32 log-probabilities ``(..., C, h, w)``;
    the classes not kept share the remaining probability mass evenly (see the module docstring).

    Plain numpy (single-threaded): it runs per sample in data-loading code, where torch's thread pool
    competing with the training step made it ~40x slower on a busy 2-core machine."""
    v = np.array(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float32)
    i = np.asarray(ids.detach().cpu() if isinstance(ids, torch.Tensor) else ids).astype(np.intp)
    k = v.shape[-3]
    if k >= num_classes:
        out = np.empty((*v.shape[:-3], num_classes, *v.shape[-2:]), dtype=np.float32)
    else:
        rest = 1.0 - np.exp(v).sum(axis=-3, keepdims=True)
        fill = np.log(np.maximum(rest, MIN_REST)) - np.float32(np.log(num_classes - k))
        fill = np.minimum(fill, v.min(axis=-3, keepdims=True))  # never above a kept class: order is preserved
        out = np.repeat(fill.astype(np.float32), num_classes, axis=-3)
    np.put_along_axis(out, i, v, axis=-3)
    return torch.from_numpy(out)
