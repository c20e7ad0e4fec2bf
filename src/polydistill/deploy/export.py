"""``polydistill export``: a checkpoint → an ONNX model (plus a JSON sidecar), checked against PyTorch.

What is exported: the *inference* student (:meth:`Student.inference_model`: feature projectors and their
teacher norms dropped; teachers are never part of a student) followed by each task's ``predict``, so the
ONNX model returns **task space**, one named output per task:

* ``depth`` ``(B, 1, H, W)`` metres at the input size;
* ``semseg`` ``(B, C, H, W)`` class logits at the input size (softmax → probabilities, argmax → ids);
* ``detection`` ``(B, C + 4, H/s, W/s)`` on the stride-``s`` grid: C class heat-maps (probability of an object
  centre in the cell), then the distances in input pixels from the cell centre to the box's left, top, right
  and bottom edges. Peak picking and NMS stay in Python (:meth:`DetectionTask.decode`).

These are exactly the teacher-output conventions of :mod:`polydistill.tasks`, so an exported student can
itself teach through the ONNX teacher source (depth, semseg). The input ``image`` is ``(B, 3, H, W)``
float32 RGB in ``[0, 1]``: the ImageNet normalisation happens inside the graph. Batch, height and width are
dynamic (verified by the parity check at a second size).

Two export-only rewrites of a *copy* of the model keep the graph exact and shape-generic:

* SAK adapter paths pool each level to the next level's size with ``adaptive_avg_pool2d``, which the ONNX
  exporter only supports for constant sizes; the copy computes the same average with two pooling matrices
  built from the runtime shapes (:func:`adaptive_avg_pool2d_dynamic`);
* SAK routers' noise half (training-only gating noise) is cut from their last convolution.

The adapter paths themselves stay: every label task's router mixes them. The parity check compares the
exported model with the *unmodified* eager model, so a rewrite that diverged would fail the export.
"""

from __future__ import annotations

import contextlib
import copy
import json
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import find_checkpoint, load_student_model
from ..config import ModelSpec
from ..errors import ConfigError, PolydistillError
from ..tasks import Task, task_type
from .inputs import collect_inputs, load_image, resize_image
from .runtime import INPUT_NAME, METADATA_KEY, SIDECAR_FORMAT, TaskSpaceModel, ort_session, sidecar_path

OPSET = 17


def _pool_matrix(n_in, n_out) -> torch.Tensor:
    """``(n_out, n_in)`` matrix averaging the windows of ``adaptive_avg_pool`` (PyTorch's window rule:
    ``[floor(i·n_in/n_out), ceil((i+1)·n_in/n_out))``), built with tensor ops so traced sizes stay symbolic."""
    i = torch.arange(n_out)
    j = torch.arange(n_in)
    start = torch.div(i * n_in, n_out, rounding_mode="floor")
    end = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    inside = (j[None] >= start[:, None]) & (j[None] < end[:, None])
    return inside.float() / (end - start)[:, None].float()


def adaptive_avg_pool2d_dynamic(x: torch.Tensor, size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` as two matrix products, exportable for sizes known only at run time."""
    ph = _pool_matrix(x.shape[-2], size[0]).to(x.dtype)
    pw = _pool_matrix(x.shape[-1], size[1]).to(x.dtype)
    return ph @ x @ pw.T


class _ExportAdapterPath(nn.Module):
    """The same computation as :class:`polydistill.students.sak.AdapterPath` (same submodules and weights), with
    the shape-generic pooling."""

    def __init__(self, path: nn.Module):
        super().__init__()
        self.adapters, self.transitions = path.adapters, path.transitions

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        r = self.adapters[0](feats[0])
        out = [r]
        for adapter, transition, x in zip(self.adapters[1:], self.transitions, feats[1:]):
            r = adapter(x + transition(adaptive_avg_pool2d_dynamic(r, x.shape[-2:])))
            out.append(r)
        return out


def _strip_router_noise(router: nn.Module) -> None:
    """Keep only the clean-logit half of a router's last convolution (the noise half is used in training only)."""
    last = router.gate[-1]
    e = router.experts
    clean = nn.Conv2d(last.in_channels, e, 1)
    clean.weight.data.copy_(last.weight.data[:e])
    clean.bias.data.copy_(last.bias.data[:e])
    router.gate[-1] = clean


def exportable_copy(student: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of an inference student with the export-only rewrites (see the module docstring) and a list of
    what was changed, for the sidecar."""
    model = copy.deepcopy(student).eval()
    notes = []
    if getattr(model, "layout", "plain") == "sak":
        for name in list(model.paths):
            model.paths[name] = _ExportAdapterPath(model.paths[name])
        for routers in model.routers.values():
            for router in routers:
                _strip_router_noise(router)
        notes += ["SAK adapter paths: adaptive pooling as pooling matrices (same result, dynamic shapes)",
                  "SAK routers: training-only noise logits removed"]
    return model, notes


def inference_tasks(spec: ModelSpec, tasks: dict[str, Task]) -> dict[str, dict[str, Any]]:
    """The options that rebuild each deployed task without the checkpoint (detection: its actual stride)."""
    out = {}
    for name, task in tasks.items():
        opts = dict(spec.tasks.get(name) or {})
        if task.box_targets:
            opts["stride"] = int(task.stride)
        out[name] = opts
    return out


def make_sidecar(spec: ModelSpec, tasks: dict[str, Task], input_size: tuple[int, int],
                 checkpoint: Path, notes: list[str]) -> dict[str, Any]:
    outputs = {}
    for name, task in tasks.items():
        kind = task_type(name, spec.tasks.get(name))
        entry: dict[str, Any] = {"task": kind, "meaning": task.output_meaning}
        if getattr(task, "class_names", None) is not None:
            entry["class_names"] = list(task.class_names)
        if task.box_targets:
            entry["stride"] = int(task.stride)
        outputs[name] = entry
    return {
        "format": SIDECAR_FORMAT,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, "height", "width"], "dtype": "float32",
                  "layout": "RGB, values in [0, 1]",
                  "normalisation": "none outside the model: the graph subtracts the ImageNet mean and divides by "
                                   "its std", "input_size": list(input_size),
                  "input_size_meaning": "the training size; predict resizes images to it (any size runs)"},
        "outputs": outputs,
        "tasks": inference_tasks(spec, tasks),
        "model": {k: getattr(spec, k) for k in ("backbone", "layout", "neck_channels", "head_channels")},
        "checkpoint": str(checkpoint),
        "export_rewrites": notes,
    }


@contextlib.contextmanager
def _quiet_export():
    """Silence the legacy exporter's deprecation notices and the tracer's warnings about shape checks (the
    parity check at a second size is what shows that the graph is shape-generic)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=FutureWarning)
        yield


def export_onnx(model: TaskSpaceModel, path: Path, input_size: tuple[int, int], sidecar: dict[str, Any],
                opset: int = OPSET) -> None:
    """Write ``path`` (dynamic batch, height, width; one output per task) with the sidecar embedded."""
    import onnx

    dynamic = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    for name, task in model.tasks.items():
        dynamic[name] = {0: "batch", 2: "height", 3: "width"} if task.dense_output else {0: "batch", 2: "grid_h",
                                                                                        3: "grid_w"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_export(), torch.no_grad():
        torch.onnx.export(model, (torch.rand(1, 3, *input_size),), str(path), input_names=[INPUT_NAME],
                          output_names=model.names, dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(sidecar)
    onnx.save(proto, str(path))
    sidecar_path(path).write_text(json.dumps(sidecar, indent=2))


def export_torchscript(model: TaskSpaceModel, path: Path, input_size: tuple[int, int]) -> None:
    """A traced TorchScript module (same tuple outputs as the ONNX model)."""
    with _quiet_export(), torch.no_grad():
        traced = torch.jit.trace(model, (torch.rand(1, 3, *input_size),), check_trace=False)
        torch.jit.save(traced, str(path))


@dataclass
class ParityReport:
    """Max absolute difference per output over every check (and the checks: size, batch, differences), beside the
    largest absolute eager value: outputs are in metres, logits and pixels, so float32 rounding scales with them."""

    runtime: str
    max_abs_diff: dict[str, float]
    checks: list[dict[str, Any]] = field(default_factory=list)
    tolerance: float = 1e-4
    max_abs_value: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(v <= self.tolerance for v in self.max_abs_diff.values())

    def as_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "tolerance": self.tolerance, "ok": self.ok,
                "max_abs_diff": self.max_abs_diff, "max_abs_value": self.max_abs_value, "checks": self.checks}


def parity_sizes(input_size: tuple[int, int]) -> list[tuple[int, int]]:
    """The export size and a second, larger size that is not a multiple of the network's strides."""
    h, w = input_size
    return [(h, w), (h + h // 2 + 3, w + w // 2 + 5)]


def parity_batches(images: list[torch.Tensor], input_size: tuple[int, int]) -> list[torch.Tensor]:
    """Every image at the export size as one batch, and at most two at the second size (dynamic batch too)."""

    batches = []
    for k, size in enumerate(parity_sizes(input_size)):
        chosen = images if k == 0 else images[:2]
        batches.append(torch.stack([resize_image(im, size) for im in chosen]))
    return batches


def check_parity(reference: TaskSpaceModel, run, batches: list[torch.Tensor], runtime: str,
                 tolerance: float = 1e-4) -> ParityReport:
    """Run ``reference`` (eager PyTorch) and ``run`` (``(B, 3, H, W)`` array → outputs in the same order) on every
    batch; the largest absolute difference per output, and whether shapes agree."""
    worst = dict.fromkeys(reference.names, 0.0)
    scale = dict.fromkeys(reference.names, 0.0)
    checks = []
    for x in batches:
        with torch.no_grad():
            expected = [t.numpy() for t in reference(x)]
        got = run(x)
        diffs = {}
        for name, e, g in zip(reference.names, expected, got):
            g = np.asarray(g)
            if g.shape != e.shape:
                raise PolydistillError(f"{runtime} output '{name}' has shape {g.shape} at input {tuple(x.shape)}, "
                                       f"eager PyTorch {e.shape}: the export is not shape-generic")
            diffs[name] = float(np.abs(g.astype(np.float64) - e.astype(np.float64)).max()) if e.size else 0.0
            if not np.isfinite(diffs[name]):
                diffs[name] = float("inf")
            worst[name] = max(worst[name], diffs[name])
            scale[name] = max(scale[name], float(np.abs(e).max()) if e.size else 0.0)
        checks.append({"batch": int(x.shape[0]), "size": list(x.shape[-2:]), "max_abs_diff": diffs})
    return ParityReport(runtime, worst, checks, tolerance, scale)


def onnx_runner(onnx_file: Path, threads: int | None = None):
    session = ort_session(onnx_file, threads)
    return lambda x: session.run(None, {INPUT_NAME: x.numpy()})


def torchscript_runner(path: Path):
    with _quiet_export():
        module = torch.jit.load(str(path))

    def run(x):
        with torch.no_grad():
            return [t.numpy() for t in module(x)]

    return run


@dataclass
class ExportResult:
    onnx: Path
    sidecar: Path
    torchscript: Path | None
    parity: list[ParityReport]
    input_size: tuple[int, int]
    images: list[Path]
    written: bool = True  # False when the parity check failed: nothing was written under ``onnx``


    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.parity)


def _parity_images(checkpoint: Path, images: list[Path] | None) -> list[Path]:
    """The images given, else the validation split named in the checkpoint's run config (when it has one)."""

    if images:
        return collect_inputs(images, videos=False).images
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        val = ((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("val")
        if val and Path(val).is_dir():
            return collect_inputs([Path(val)], videos=False).images
    raise ConfigError(f"the parity check needs real images and {checkpoint} names no existing validation split: pass "
                      "--images with image files, folders or a dataset folder (or --no-check to skip the check)")


def export_checkpoint(checkpoint: Path, out: Path, *, images: list[Path] | None = None, tolerance: float = 1e-4,
                      size: tuple[int | None, int | None] = (None, None), torchscript: bool = False,
                      check: bool = True, max_images: int = 8, opset: int = OPSET) -> ExportResult:
    """Export ``checkpoint`` to ``out`` (.onnx) with its sidecar, optionally a TorchScript file beside it, and
    check both against eager PyTorch on real images (see the module docstring).

    The files are written under temporary names and renamed into place only when the parity check passes: a
    failed export leaves no model that looks usable (and an earlier export at ``out`` untouched)."""

    if out.suffix != ".onnx":
        raise ConfigError(f"export output '{out}' must end in .onnx")
    directory = find_checkpoint(checkpoint)
    student, tasks, spec = load_student_model(directory)
    h, w = size
    if not (h and w):
        h, w = spec.input_size or (None, None)
    if not (h and w):
        raise ConfigError(f"{directory} does not record its training size: pass --height and --width")
    input_size = (int(h), int(w))
    reference = TaskSpaceModel(student, tasks).eval()
    exportable, notes = exportable_copy(student)
    model = TaskSpaceModel(exportable, tasks).eval()
    sidecar = make_sidecar(spec, tasks, input_size, directory, notes)
    ts_path = out.with_suffix(".torchscript.pt") if torchscript else None
    staged = out.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{out.name}")
    staged_ts = staged.with_suffix(".torchscript.pt") if torchscript else None
    moves = [(staged, out), (sidecar_path(staged), sidecar_path(out))] + ([(staged_ts, ts_path)] if ts_path else [])
    try:
        export_onnx(model, staged, input_size, sidecar, opset)
        if staged_ts is not None:
            export_torchscript(model, staged_ts, input_size)
        reports, files = [], []
        if check:
            files = _parity_images(directory, images)[:max_images]
            batches = parity_batches([load_image(p) for p in files], input_size)
            reports.append(check_parity(reference, onnx_runner(staged), batches, "onnxruntime", tolerance))
            if staged_ts is not None:
                reports.append(check_parity(reference, torchscript_runner(staged_ts), batches, "torchscript",
                                            tolerance))
            sidecar["parity"] = {r.runtime: r.as_dict() for r in reports}
            sidecar["parity_images"] = [str(p) for p in files]
            sidecar_path(staged).write_text(json.dumps(sidecar, indent=2))
        written = all(r.ok for r in reports)
        if written:
            for source, target in moves:
                source.replace(target)
    finally:  # a failed check or an error: no staged file stays behind
        for source, _ in moves:
            source.unlink(missing_ok=True)
    return ExportResult(out, sidecar_path(out), ts_path, reports, input_size, files, written=written)
