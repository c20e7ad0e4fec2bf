"""Checkpoints: safetensors weights + JSON state, written atomically, enough to resume exactly.

Layout of one checkpoint directory::

    model.safetensors     student weights (what `eval`, `predict` and teachers load)
    model.json            the model spec (tasks and architecture) to rebuild the network
    training.safetensors  optimizer, weighting and trajectory tensors, the torch RNG state (resume only)
    state.json            step, epoch, scheduler, weighting, optimizer scalars, RNG states, metrics

A checkpoint is first written to a temporary sibling directory and then renamed into place, so an
interrupted write never leaves a half-written checkpoint under the final name; a write that fails (disk
full, read-only folder) leaves the previous checkpoint in place and raises :class:`CheckpointError`.
Reading a damaged file (garbage bytes, a truncated JSON) is a :class:`CheckpointError` naming the file.
Weights holding NaN/Inf are neither written (:class:`NonFiniteWeightsError`, the previous checkpoint stays) nor
loaded for inference: a diverged model must never pass for a trained one.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ModelSpec, explain_validation_error
from .errors import PolydistillError
from .students import build_student
from .tasks import Task


class CheckpointError(PolydistillError):
    """A checkpoint cannot be written or read; the message names the folder or file and what to do."""


class NonFiniteWeightsError(CheckpointError):
    """The model to save holds NaN/Inf; ``tensors`` names them (the trainer turns this into its divergence error)."""

    def __init__(self, message: str, tensors: list[str]):
        super().__init__(message)
        self.tensors = tensors


MODEL_FILE = "model.safetensors"
SPEC_FILE = "model.json"
TRAINING_FILE = "training.safetensors"
STATE_FILE = "state.json"


def _split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested structure by a key into ``tensors`` (JSON-able remainder)."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split_tensors(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _has_tensor(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return any(_has_tensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(v) for v in obj)
    return False


def _join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _join_tensors(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj


def rng_state() -> dict[str, Any]:
    """Global Python and NumPy RNG states in JSON form (torch's goes to safetensors)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss]}


def set_rng_state(state: dict[str, Any], torch_state: torch.Tensor | None) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if torch_state is not None:
        torch.set_rng_state(torch_state)


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an Inf."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _tensor_list(names: list[str]) -> str:
    return f"{len(names)} tensor(s): {', '.join(names[:3])}" + (", ..." if len(names) > 3 else "")


def save_checkpoint(directory: str | Path, *, model: nn.Module, spec: ModelSpec | dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, state: dict[str, Any] | None = None) -> Path:
    """Atomically write a checkpoint directory (see module docstring); refuse weights holding NaN/Inf."""
    directory = Path(directory)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = nonfinite_tensors(weights)
    if bad:  # checked before anything is written: a diverged model never replaces a good checkpoint
        kept = "the previous checkpoint there is unchanged" if directory.exists() else "nothing was written there"
        raise NonFiniteWeightsError(f"refusing to write checkpoint {directory}: the weights hold NaN/Inf in "
                                    f"{_tensor_list(bad)}; {kept}", bad)
    tmp = directory.parent / f".tmp-{directory.name}-{uuid.uuid4().hex[:8]}"
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise _write_error(directory, exc) from exc
    try:
        save_file(weights, str(tmp / MODEL_FILE))
        (tmp / SPEC_FILE).write_text(json.dumps(ModelSpec.of(spec).to_json(), indent=2))
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        full_state = {k: _split_tensors(v, k, tensors) if _has_tensor(v) else v for k, v in (state or {}).items()}
        if optimizer is not None:
            full_state["optimizer"] = _split_tensors(optimizer.state_dict(), "optimizer", tensors)
        full_state["rng"] = rng_state()
        save_file(tensors, str(tmp / TRAINING_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=2))
        for f in tmp.iterdir():  # make the data durable before the rename publishes it
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if directory.exists():
            old = directory.parent / f".old-{directory.name}-{uuid.uuid4().hex[:8]}"
            directory.rename(old)
        try:
            tmp.rename(directory)
        except BaseException:
            if old is not None and not directory.exists():
                old.rename(directory)  # put the previous checkpoint back under its name
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, SafetensorError)):  # a full disk inside save_file is a SafetensorError
            raise _write_error(directory, exc) from exc
        raise
    return directory


def _write_error(directory: Path, exc: OSError | SafetensorError) -> CheckpointError:
    """The one error every failed checkpoint write becomes, whichever library hit the OS error."""
    if isinstance(exc, OSError):
        reason, number = exc.strerror or str(exc), exc.errno
    else:  # e.g. "Error while serializing: I/O error: No space left on device (os error 28)"
        found = re.search(r"([^:]*?)\s*\(os error (\d+)\)", str(exc))
        reason = found.group(1).strip() if found else " ".join(str(exc).split())
        number = int(found.group(2)) if found else None
    code = f"{errno.errorcode.get(number, number)}: " if number else ""
    kept = "the previous checkpoint there is unchanged" if directory.exists() else "nothing was written there"
    return CheckpointError(
        f"cannot write checkpoint {directory} ({code}{reason}); {kept}. Free disk space or make {directory.parent} "
        "writable, then continue with --resume")


def _damaged(path: Path, exc: BaseException) -> CheckpointError:
    what = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return CheckpointError(f"checkpoint file {path} is missing; the checkpoint is incomplete — use another "
                               "checkpoint of the run (checkpoints/best or checkpoints/last) or train again")
    return CheckpointError(f"checkpoint file {path} is damaged or truncated ({type(exc).__name__}: {what}); restore "
                           "it from a copy, use another checkpoint of the run (checkpoints/best or checkpoints/last) "
                           "or train again")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _damaged(path, exc) from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file; garbage bytes or a truncated file are an error naming it (safetensors raises its own
    exception type, not an OSError)."""
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError: the file cannot be used either way
        raise _damaged(path, exc) from None


def find_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint dir, a run dir (uses ``checkpoints/best`` then ``last``) or a weights file."""
    path = Path(path)
    if path.is_file() and path.name == MODEL_FILE:
        path = path.parent
    candidates = [path, path / "checkpoints" / "best", path / "checkpoints" / "last"]
    for c in candidates:
        if (c / MODEL_FILE).is_file() and (c / SPEC_FILE).is_file():
            return c
    # a crash between the two renames of save_checkpoint leaves only the previous copy
    for old in sorted(path.parent.glob(f".old-{path.name}-*")) if path.parent.exists() else []:
        if (old / MODEL_FILE).is_file():
            return old
    raise PolydistillError(
        f"no polydistill checkpoint at '{path}': expected {MODEL_FILE} and {SPEC_FILE} in it "
        "or in its checkpoints/best or checkpoints/last folder"
    )


def load_spec(directory: str | Path) -> ModelSpec:
    path = Path(directory) / SPEC_FILE
    spec = _read_json(path)
    if not isinstance(spec, dict) or not isinstance(spec.get("tasks"), dict):
        raise CheckpointError(f"checkpoint file {path} is not a polydistill model spec (a JSON object with 'tasks'); "
                              "restore it from a copy or train again")
    try:
        return ModelSpec.of(spec)
    except ValidationError as exc:
        problem = explain_validation_error(exc, str(path))
        raise CheckpointError(f"checkpoint file {path} is not a polydistill model spec ({problem}); "
                              "restore it from a copy or train again") from None


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Load weights strictly (a mismatch means the spec and weights disagree)."""
    state = _read_tensors(Path(directory) / MODEL_FILE)
    own = model.state_dict()
    shapes = [f"{k} {tuple(v.shape)} (the spec builds {tuple(own[k].shape)})" for k, v in state.items()
              if k in own and own[k].shape != v.shape]
    if shapes:  # load_state_dict would raise a RuntimeError listing every tensor
        raise CheckpointError(
            f"checkpoint '{directory}' does not match its model spec ({SPEC_FILE}): {len(shapes)} tensor(s) of "
            f"other shapes, e.g. {'; '.join(shapes[:2])}; the weights and {SPEC_FILE} come from different models "
            f"(e.g. another neck_channels) — copy the {SPEC_FILE} written with these weights, or train again")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # anything else load_state_dict refuses (dtype, sparse layouts)
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint '{directory}' cannot be loaded into the model its {SPEC_FILE} describes "
                              f"({first}); copy the {SPEC_FILE} written with these weights, or train again") from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint '{directory}' does not match its model spec ({SPEC_FILE}): missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]}; copy the {SPEC_FILE} written with these weights, or train again"
        )


def load_matching_weights(model: nn.Module, directory: str | Path) -> dict[str, list[str]]:
    """Initialise ``model`` from another run's weights: tensors with the same name and shape load, the rest
    keep their fresh initialisation. Returns ``{"loaded", "fresh", "ignored"}`` key lists (for the log).
    Nothing loads at all → an error (the checkpoint is for another architecture)."""
    state = _read_tensors(Path(directory) / MODEL_FILE)
    own = model.state_dict()
    loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not loadable:
        raise PolydistillError(f"train.init_from '{directory}' shares no tensor with this student (another "
                               "backbone or neck width?); use a checkpoint of the same architecture")
    model.load_state_dict(loadable, strict=False)
    return {"loaded": sorted(loadable), "fresh": sorted(set(own) - set(loadable)),
            "ignored": sorted(set(state) - set(loadable))}


def load_training_state(directory: str | Path, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore optimizer and RNG state; return the JSON state (step, epoch, scheduler, ...)."""
    directory = Path(directory)
    state = _read_json(directory / STATE_FILE)
    if not isinstance(state, dict) or "rng" not in state:
        raise CheckpointError(f"checkpoint file {directory / STATE_FILE} is not a polydistill training state; "
                              "restore it or start the run over")
    tensors = _read_tensors(directory / TRAINING_FILE)
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(_join_tensors(state["optimizer"], tensors))
        _match_parameter_layouts(optimizer)
    set_rng_state(state["rng"], tensors.get("rng.torch"))
    return {k: _join_tensors(v, tensors) if k != "optimizer" else v for k, v in state.items()}


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each restored per-parameter state tensor (Adam's moments) its parameter's memory layout.

    Checkpoints store contiguous tensors; a channels-last parameter's moments were channels-last in the
    uninterrupted run, and the fused AdamW kernel rounds differently when layouts differ, so an exact
    resume needs the layouts back."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def recover_checkpoint(directory: str | Path) -> None:
    """Undo what a kill in the middle of :func:`save_checkpoint` leaves behind, before resuming.

    Killed between its two renames, ``directory`` is missing and the previous checkpoint sits complete under
    ``.old-<name>-*``: it is renamed back. Half-written ``.tmp-<name>-*`` folders and a leftover ``.old`` copy
    (killed before its removal) are deleted; the checkpoint under the final name is never touched.
    """
    directory = Path(directory)
    if not directory.parent.exists():
        return
    olds = sorted(directory.parent.glob(f".old-{directory.name}-*"), key=lambda p: p.stat().st_mtime)
    if not directory.exists() and olds and (olds[-1] / STATE_FILE).is_file():
        olds.pop().rename(directory)
    for leftover in [*olds, *directory.parent.glob(f".tmp-{directory.name}-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def load_student_model(path: str | Path, *, inference: bool = True) -> tuple[nn.Module, dict[str, Task], ModelSpec]:
    """(model in eval mode, tasks, spec) from a checkpoint or run directory.

    ``inference=True`` drops the training-only parts (feature projectors) and their tasks: what a deployed
    student computes. ``False`` keeps the model exactly as trained.
    """
    ckpt = find_checkpoint(path)
    spec = load_spec(ckpt)
    model, tasks = build_student(spec)
    load_weights(model, ckpt)
    bad = nonfinite_tensors(model.state_dict())
    if bad:  # a diverged run's weights predict NaN everywhere: refuse them rather than write NaN maps
        raise CheckpointError(
            f"checkpoint file {ckpt / MODEL_FILE} holds NaN/Inf weights in {_tensor_list(bad)}; the training that "
            "wrote it diverged — use another checkpoint of the run or train again (lower train.lr, set "
            "train.grad_clip)")
    if inference:
        model = model.inference_model()
        tasks = {n: t for n, t in tasks.items() if n in model.task_names}
    return model.eval(), tasks, spec
