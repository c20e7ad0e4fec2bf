"""polydistill: distill many teacher networks into one compact multi-task student for dense prediction.

The public Python API (the command line is these calls plus printing)::

    import polydistill

    cfg = polydistill.load_config("configs/my_run.yaml", overrides=["train.max_steps=2000"])
    teacher = polydistill.Teacher.from_module(my_depth_net, name="mine", tasks=["depth"])
    run = polydistill.train(cfg, out="runs/my_run", teachers=[teacher])
    student = polydistill.load_student(run.run_dir)
    result = student.predict("photo.jpg")        # per task, a NumPy array in the photo's size
    polydistill.export(run.run_dir, "student.onnx")

- :func:`load_config` — a validated config from YAML or a dict, plus dotted overrides;
- :func:`train` — a run folder (checkpoints, logs, report) from a config and optional Python teachers;
- :func:`cache_teachers` — the teachers' outputs computed once and stored where ``train`` finds them;
- :func:`evaluate` — a checkpoint's metrics on a dataset, retention against teachers, Δm against a baseline;
- :func:`load_student` — a :class:`~polydistill.deploy.student.DistilledStudent` with ``.predict(images)``;
- :func:`export` — ONNX with a JSON sidecar, checked against PyTorch;
- :func:`list_components` — registered tasks, teacher sources, weightings, student backbones;
- :class:`Teacher` — subclass it, or wrap any ``torch.nn.Module`` with ``Teacher.from_module``.

The names load on first use, so ``import polydistill`` (and the CLI's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "load_config": "polydistill.api",
    "train": "polydistill.api",
    "cache_teachers": "polydistill.api",
    "evaluate": "polydistill.api",
    "load_student": "polydistill.api",
    "export": "polydistill.api",
    "list_components": "polydistill.api",
    "RunResult": "polydistill.api",
    "Teacher": "polydistill.teachers",
    "DistilledStudent": "polydistill.deploy.student",
    "RunConfig": "polydistill.config",
    "PolydistillError": "polydistill.errors",
    "ConfigError": "polydistill.errors",
    "DataError": "polydistill.errors",
}

__all__ = [
    "ConfigError", "DataError", "DistilledStudent", "PolydistillError", "RunConfig", "RunResult", "Teacher",
    "__version__", "cache_teachers", "evaluate", "export", "list_components", "load_config", "load_student", "train",
]

if TYPE_CHECKING:
    from .api import RunResult, cache_teachers, evaluate, export, list_components, load_config, load_student, train
    from .config import RunConfig
    from .deploy.student import DistilledStudent
    from .errors import ConfigError, DataError, PolydistillError
    from .teachers import Teacher


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'polydistill' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
