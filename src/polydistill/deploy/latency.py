"""``polydistill bench latency``: the student in eager PyTorch and in ONNX Runtime beside each teacher, at several
resolutions and batch sizes.

Every model maps images in ``[0, 1]`` to task-space outputs (the student with its tasks' ``predict``, exactly what
the exported ONNX graph computes; teachers through :meth:`Teacher.predict`), so the rows compare like with like.
Timing is :func:`polydistill.evaluation.speed.measure_latency`: warm-up calls, then the median over interleaved
rounds, per (size, batch) — one slow moment on the machine hits every model alike. ONNX Runtime gets as many
intra-op threads as PyTorch uses, so neither runtime has more cores.
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_student_model
from ..config import TeacherConfig
from ..errors import ConfigError
from ..evaluation.speed import count_parameters, measure_latency
from ..teachers import build_teacher, parse_source
from .export import TaskSpaceModel, export_onnx, exportable_copy, make_sidecar, onnx_runner


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"96x128,192x256"`` → ``[(96, 128), (192, 256)]`` (height × width)."""
    sizes = []
    for part in text.split(","):
        try:
            h, w = (int(v) for v in part.lower().strip().split("x"))
        except ValueError:
            raise ConfigError(f"cannot read size '{part}' in '{text}': give HEIGHTxWIDTH pairs separated by "
                              "commas, e.g. 96x128,192x256") from None
        if h < 8 or w < 8:
            raise ConfigError(f"size '{part}' is too small: height and width must be at least 8 pixels")
        sizes.append((h, w))
    return sizes


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"cannot read batch sizes '{text}': give integers separated by commas, e.g. 1,8") from None
    if any(b < 1 for b in batches):
        raise ConfigError(f"batch sizes must be positive, got '{text}'")
    return batches


def build_teachers(specs: list[str]) -> dict[str, Any]:
    """Teachers from ``--teacher`` values: a polydistill checkpoint/run directory, or a source prefix as in
    configs (``onnx:file.onnx``, ``hf:org/model``, ``timm:name``, ``torchvision:name``), optionally named
    ``NAME=...`` (default name: the path's last part)."""

    teachers: dict[str, Any] = {}
    for spec in specs:
        label, sep, rest = spec.partition("=")
        named = bool(sep) and label and not any(c in label for c in "/:\\")
        spec = rest if named else spec
        base = label if named else Path(parse_source(spec)[1]).name or spec
        name, k = base, 2
        while name in teachers:
            name, k = f"{base}_{k}", k + 1
        teachers[name] = build_teacher(TeacherConfig(name=name, path=spec)).eval()
    return teachers


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_latency(checkpoint: Path, *, onnx: Path | None = None, teachers: list[str] = (),
                  sizes: list[tuple[int, int]] = ((96, 128), (192, 256)), batches: list[int] = (1, 8),
                  rounds: int = 7, iters: int = 5, warmup: int = 3, threads: int | None = None) -> dict[str, Any]:
    """Median milliseconds per call for every model at every size and batch (CPU). Without ``onnx`` the checkpoint
    is exported to a temporary file first."""
    import onnxruntime



    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    student, tasks, spec = load_student_model(checkpoint)
    eager = TaskSpaceModel(student, tasks).eval()
    with tempfile.TemporaryDirectory() as tmp:
        if onnx is None:
            onnx = Path(tmp) / "student.onnx"
            size = tuple(spec.input_size or sizes[0])
            exportable, notes = exportable_copy(student)
            export_onnx(TaskSpaceModel(exportable, tasks).eval(), onnx, size,
                        make_sidecar(spec, tasks, size, Path(checkpoint), notes))
            onnx_label = "exported for this run"
        elif not Path(onnx).is_file():
            raise ConfigError(f"ONNX model '{onnx}' does not exist; create it with `polydistill export`")
        else:
            onnx_label = str(onnx)
        run_onnx = onnx_runner(Path(onnx), threads)
        built = build_teachers(list(teachers))
        models = {"student": eager, "student (onnx)": run_onnx, **{n: t.predict for n, t in built.items()}}
        runtime = {"student": f"PyTorch {torch.__version__} eager",
                   "student (onnx)": f"ONNX Runtime {onnxruntime.__version__} (CPU)",
                   **{n: f"{type(t).__name__}, PyTorch eager" if count_parameters(t) else type(t).__name__
                      for n, t in built.items()}}
        params = {"student": count_parameters(student), "student (onnx)": count_parameters(student),
                  **{n: count_parameters(t) for n, t in built.items()}}
        rows = []
        for size in sizes:
            for batch in batches:
                ms = measure_latency(models, size, rounds=rounds, iters=iters, warmup=warmup, batch=batch)
                for name, value in ms.items():
                    rows.append({"model": name, "runtime": runtime[name], "params": params[name] or None,
                                 "size": list(size), "batch": batch, "ms": value, "ms_per_image": value / batch})
    return {"checkpoint": str(checkpoint), "onnx": onnx_label, "rows": rows,
            "environment": {"device": "cpu", "cpu": _cpu_name(), "threads": threads, "torch": torch.__version__,
                            "onnxruntime": onnxruntime.__version__,
                            "timing": f"median of {rounds} interleaved rounds of {iters} calls after {warmup} "
                                      "warm-up calls"}}


def _columns(result: dict[str, Any]) -> list[tuple[tuple[int, ...], int]]:
    seen = []
    for row in result["rows"]:
        key = (tuple(row["size"]), row["batch"])
        if key not in seen:
            seen.append(key)
    return seen


def _by_model(result: dict[str, Any]) -> dict[str, dict[tuple, dict[str, Any]]]:
    table: dict[str, dict[tuple, dict[str, Any]]] = {}
    for row in result["rows"]:
        table.setdefault(row["model"], {})[(tuple(row["size"]), row["batch"])] = row
    return table


def _params(n: int | None) -> str:
    return f"{n / 1e6:.2f} M" if n else "–"


def latency_markdown(result: dict[str, Any]) -> str:
    """One row per model, one column per (size, batch): milliseconds per call."""
    cols = _columns(result)
    head = ["model", "runtime", "params"] + [f"{h}×{w} b{b} (ms)" for (h, w), b in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * len(cols)]
    for model, cells in _by_model(result).items():
        first = next(iter(cells.values()))
        values = [f"{cells[c]['ms']:.2f}" if c in cells else "–" for c in cols]
        lines.append("| " + " | ".join([model, first["runtime"], _params(first["params"]), *values]) + " |")
    env = result["environment"]
    lines += ["", f"{env['cpu']}, {env['threads']} threads; torch {env['torch']}, onnxruntime {env['onnxruntime']}; "
              f"{env['timing']}."]
    return "\n".join(lines) + "\n"


def latency_table(result: dict[str, Any]):
    from rich.table import Table

    cols = _columns(result)
    table = Table(title="latency (ms per call, median)")
    for name in ("model", "runtime", "params"):
        table.add_column(name)
    for (h, w), b in cols:
        table.add_column(f"{h}×{w} b{b}", justify="right")
    for model, cells in _by_model(result).items():
        first = next(iter(cells.values()))
        table.add_row(model, first["runtime"], _params(first["params"]),
                      *(f"{cells[c]['ms']:.2f}" if c in cells else "–" for c in cols))
    return table
