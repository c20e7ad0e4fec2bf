"""What runs a deployed student: the task-space wrapper around the network, the ONNX sidecar that describes
an exported model, and the ONNX Runtime session that runs it (shared by ``export``, ``predict`` and the
latency bench)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..tasks import Task, build_task

INPUT_NAME = "image"


SIDECAR_FORMAT = "polydistill-onnx/1"


METADATA_KEY = "polydistill"  # the sidecar is also embedded in the ONNX file's metadata


class TaskSpaceModel(nn.Module):
    """An inference student followed by every task's ``predict``: image in ``[0, 1]`` → a tuple of task-space
    outputs in ``names`` order (ONNX and TorchScript want tuples, not dicts)."""

    def __init__(self, student: nn.Module, tasks: dict[str, Task]):
        super().__init__()
        self.student = student
        self.names = [n for n in student.task_names if n in tasks]
        self.tasks = tasks  # plain objects, not modules: only their predict() is traced

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.student(image)
        return tuple(self.tasks[n].predict(raw[n]) for n in self.names)

    def as_dict(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self(image)))


def tasks_from_sidecar(sidecar: dict[str, Any]) -> dict[str, Task]:
    return {name: build_task(name, **opts) for name, opts in sidecar["tasks"].items()}


def sidecar_path(onnx_file: Path) -> Path:
    return Path(f"{onnx_file}.json")


def read_sidecar(onnx_file: Path) -> dict[str, Any]:
    """The sidecar beside an ONNX file, else the copy embedded in its metadata."""
    path = sidecar_path(onnx_file)
    try:
        if path.is_file():
            data = json.loads(path.read_text())
        else:
            import onnx

            meta = {p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
            if METADATA_KEY not in meta:
                raise ConfigError(f"{onnx_file} has no polydistill sidecar ({path.name}) and no embedded metadata; "
                                  "export it with `polydistill export` or put the sidecar beside it")
            data = json.loads(meta[METADATA_KEY])
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the sidecar of {onnx_file}: {exc}; re-export the model") from None
    if data.get("format") != SIDECAR_FORMAT:
        raise ConfigError(f"{path}: unknown sidecar format {data.get('format')!r} (expected {SIDECAR_FORMAT}); "
                          "re-export the model with this version of polydistill")
    return data


def ort_session(onnx_file: Path, threads: int | None = None):
    """An ONNX Runtime CPU session (``threads`` intra-op threads; default: ONNX Runtime's own choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(onnx_file), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ConfigError(f"ONNX Runtime cannot load {onnx_file}: {exc}") from None
