"""Recorders: grab intermediate features of a teacher or the student by module path.

Why
---
Feature distillation needs activations from inside a network (``layer3`` of a ResNet teacher, a
block of the student's backbone, the fused output of the neck), but neither timm models nor the
:class:`~polydistill.students.student.Student` return them. Following mmrazor's *recorders*, a
recorder registers a forward hook on the submodule named by its dotted path
(``model.get_submodule(path)``) and keeps that module's output from the last forward pass, so you can
distill from any layer without editing model code. Config mistakes are caught when the hooks are
attached: an unknown path raises :class:`~polydistill.errors.ConfigError` naming the path, the closest
real path and nearby paths (list them all with :func:`module_paths`).

Usage with a timm model::

    import timm, torch
    from polydistill.recorders import FeatureRecorders, module_paths

    teacher = timm.create_model("resnet18", pretrained=False).eval()
    with FeatureRecorders(teacher, {"c4": "layer3", "c5": "layer4"}) as rec, torch.no_grad():
        teacher(torch.rand(2, 3, 64, 64))
        feats = rec.records            # {"c4": (2, 256, 4, 4), "c5": (2, 512, 2, 2)}
    module_paths(teacher, max_depth=1)  # ['conv1', 'bn1', 'act1', 'maxpool', 'layer1', ...]

Usage with a polydistill Student (attach once, read after every forward; gradients flow)::

    rec = FeatureRecorders({
        "stage3": "backbone.blocks.3",                 # a timm block inside the backbone
        "fused": "neck",                               # the FPN output
        "c5": {"path": "backbone", "index": -1},       # features_only returns a list: take the last
    }).attach(student)
    outputs = student(images)
    loss = task_loss(outputs) + feature_loss(rec["fused"], teacher_feature)
    loss.backward()
    rec.detach()                                       # remove the hooks when done

Records are stored as returned (not detached) so losses on student features backpropagate. Each
record is replaced at the start of the next forward pass of the model the recorders were attached
to, so graphs do not accumulate across steps; call :meth:`FeatureRecorders.clear` (drop the records)
or :meth:`FeatureRecorders.detach_all` (cut them from the graph) to free memory earlier. If a module
runs several times in one forward pass, the last call's output is kept. Reading a record whose
module did not run in the last forward pass raises a :class:`~polydistill.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import ConfigError
from .registry import did_you_mean

__all__ = ["FeatureRecorders", "ModuleOutputRecorder", "module_paths", "resolve_module"]

_MAX_NEARBY = 20
_MISSING = object()


def module_paths(model: nn.Module, max_depth: int | None = None) -> list[str]:
    """Dotted paths of all submodules of ``model`` (in registration order, root excluded).

    ``max_depth`` keeps only paths with at most that many components (``1`` → ``['conv1', 'layer1',
    ...]``, ``2`` adds ``'layer1.0'``, ...). Shared modules are listed once, under their first name.
    """
    if max_depth is not None and max_depth < 1:
        raise ValueError(f"max_depth must be >= 1 or None, got {max_depth}")
    paths = [name for name, _ in model.named_modules() if name]
    if max_depth is not None:
        paths = [p for p in paths if p.count(".") < max_depth]
    return paths


def _nearby_paths(path: str, paths: list[str]) -> tuple[str, list[str]]:
    """The deepest existing ancestor of ``path`` ('' for the root) and that ancestor's direct children."""
    existing = set(paths)
    parts = path.split(".")
    ancestor = ""
    for i in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in existing:
            ancestor = candidate
            break
    if ancestor:
        prefix = ancestor + "."
        depth = ancestor.count(".") + 1
        children = [p for p in paths if p.startswith(prefix) and p.count(".") == depth]
    else:
        children = [p for p in paths if "." not in p]
    return ancestor, children


def _unknown_path_message(model: nn.Module, path: str) -> str:
    paths = module_paths(model)
    what = f"unknown module path '{path}' in {type(model).__name__}"
    if not paths:
        return f"{what}: the model has no submodules (use path '' to record its own output)"
    # did_you_mean lists *all* choices when nothing is close; models have hundreds of paths, so only
    # keep its suggestion and list the nearby paths ourselves.
    hint = did_you_mean(path, paths) if difflib.get_close_matches(path, paths, n=1, cutoff=0.5) else ""
    ancestor, nearby = _nearby_paths(path, paths)
    shown = ", ".join(nearby[:_MAX_NEARBY])
    if len(nearby) > _MAX_NEARBY:
        shown += f", … (+{len(nearby) - _MAX_NEARBY} more)"
    where = f"under '{ancestor}'" if ancestor else "at the top level"
    return (f"{what}{hint or '.'} Paths {where}: {shown} "
            f"(list all with `polydistill modules` or polydistill.recorders.module_paths(model))")


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)``, raising a helpful :class:`ConfigError` for unknown paths."""
    if not isinstance(path, str):
        raise ConfigError(f"module path must be a string like 'layer4' or 'blocks.11', got {path!r}")
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ConfigError(_unknown_path_message(model, path)) from None


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_detach(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


class ModuleOutputRecorder:
    """Records the output of one submodule (by dotted path) via a forward hook.

    ``index`` selects one element of a tuple/list output (negative indices allowed) or one key of a
    dict output; without it the output is stored as returned. Only the last forward pass is kept.
    """

    def __init__(self, path: str, index: int | str | None = None, name: str | None = None):
        if not isinstance(path, str):
            raise ConfigError(f"module path must be a string like 'layer4' or 'blocks.11', got {path!r}")
        if index is not None and (isinstance(index, bool) or not isinstance(index, (int, str))):
            raise ConfigError(f"recorder index for '{path}' must be an int or a string key, got {index!r}")
        self.path = path
        self.index = index
        self.name = name or path
        self._output: Any = _MISSING
        self._handles: list[RemovableHandle] = []
        self._module_name: str | None = None

    # -- hooks -------------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, model: nn.Module, *, clear_on_forward: bool = True) -> ModuleOutputRecorder:
        """Hook the submodule at ``self.path`` of ``model``.

        With ``clear_on_forward`` (the default) a pre-hook on ``model`` drops the previous record when
        a new forward pass of ``model`` starts, so a module that does not run is reported as such.
        """
        if self.attached:
            raise ConfigError(f"recorder '{self.name}' is already attached; call detach() first")
        module = resolve_module(model, self.path)
        self._module_name = type(module).__name__
        self.clear()
        if clear_on_forward:
            self._handles.append(model.register_forward_pre_hook(self._on_root_forward))
        self._handles.append(module.register_forward_hook(self._on_forward))
        return self

    def detach(self) -> None:
        """Remove the hooks; the last record stays readable until :meth:`clear`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _on_root_forward(self, module: nn.Module, args: Any) -> None:
        self._output = _MISSING

    def _on_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        self._output = self._select(output)

    def _select(self, output: Any) -> Any:
        if self.index is None:
            return output
        if isinstance(output, Mapping):
            if self.index not in output:
                raise ConfigError(f"recorder '{self.name}': module '{self.path}' returned a dict without "
                                  f"key {self.index!r}{did_you_mean(str(self.index), [str(k) for k in output])}")
            return output[self.index]
        if isinstance(output, (tuple, list)):
            if not isinstance(self.index, int) or not -len(output) <= self.index < len(output):
                raise ConfigError(f"recorder '{self.name}': index {self.index!r} is out of range for module "
                                  f"'{self.path}', which returned a {type(output).__name__} of {len(output)}")
            return output[self.index]
        raise ConfigError(f"recorder '{self.name}': module '{self.path}' returned a {type(output).__name__}, "
                          f"not a tuple/list/dict, so it cannot be indexed with {self.index!r}; drop 'index'")

    # -- records -----------------------------------------------------------------------------------
    @property
    def ran(self) -> bool:
        """Whether the module ran in the last forward pass (and the record has not been cleared)."""
        return self._output is not _MISSING

    @property
    def output(self) -> Any:
        """The recorded output (with gradients, unless :meth:`detach_all` was called)."""
        if self._output is _MISSING:
            kind = f" ({self._module_name})" if self._module_name else ""
            raise ConfigError(
                f"module '{self.path}'{kind} did not run in the last forward pass "
                f"(recorder '{self.name}'{'' if self.attached else ', not attached'}); record a module "
                "on the forward path, or run a forward pass before reading records")
        return self._output

    def detach_all(self) -> None:
        """Replace the record by a detached copy (keeps the values, frees the autograd graph)."""
        if self._output is not _MISSING:
            self._output = _detach(self._output)

    def clear(self) -> None:
        """Drop the record."""
        self._output = _MISSING

    def __repr__(self) -> str:
        index = "" if self.index is None else f", index={self.index!r}"
        return f"ModuleOutputRecorder({self.path!r}{index}, name={self.name!r}, attached={self.attached})"


def _parse_spec(name: Any, spec: Any) -> ModuleOutputRecorder:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"recorder names must be non-empty strings, got {name!r}")
    if isinstance(spec, str):
        return ModuleOutputRecorder(spec, name=name)
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"path", "index"}
        if unknown:
            bad = sorted(map(str, unknown))[0]
            raise ConfigError(f"recorder '{name}': unknown key '{bad}'{did_you_mean(bad, ['path', 'index'])}")
        if "path" not in spec:
            raise ConfigError(f"recorder '{name}' needs a 'path', e.g. {{path: layer4, index: 0}}")
        return ModuleOutputRecorder(spec["path"], index=spec.get("index"), name=name)
    raise ConfigError(f"recorder '{name}' must be a module path string or {{path: ..., index: ...}}, "
                      f"got {type(spec).__name__}")


class FeatureRecorders:
    """Several named :class:`ModuleOutputRecorder` s, attached and detached together.

    Build from ``{name: "module.path"}`` or ``{name: {"path": ..., "index": ...}}``, either as
    ``FeatureRecorders(specs).attach(model)`` or ``FeatureRecorders(model, specs)`` — the latter
    attaches on ``with`` entry and detaches on exit. After a forward pass, :attr:`records` maps each
    name to its module's output.
    """

    def __init__(self, model_or_specs: nn.Module | Mapping[str, Any],
                 specs: Mapping[str, Any] | None = None):
        if specs is None:
            if isinstance(model_or_specs, nn.Module):
                raise ConfigError("FeatureRecorders(model) needs specs: {name: 'module.path', ...}")
            model, specs = None, model_or_specs
        else:
            model = model_or_specs
            if not isinstance(model, nn.Module):
                raise ConfigError(f"FeatureRecorders(model, specs): model must be an nn.Module, "
                                  f"got {type(model).__name__}")
        if not isinstance(specs, Mapping) or not specs:
            raise ConfigError("recorder specs must be a non-empty mapping {name: 'module.path', ...}")
        self.recorders: dict[str, ModuleOutputRecorder] = {n: _parse_spec(n, s) for n, s in specs.items()}
        self._model = model
        self._root_handle: RemovableHandle | None = None

    # -- hooks -------------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._root_handle is not None

    def attach(self, model: nn.Module | None = None) -> FeatureRecorders:
        """Validate every path, then hook them all (nothing is hooked if any path is wrong)."""
        model = model if model is not None else self._model
        if model is None:
            raise ConfigError("FeatureRecorders.attach() needs a model")
        if self.attached:
            raise ConfigError("these recorders are already attached; call detach() first")
        for rec in self.recorders.values():
            resolve_module(model, rec.path)
        for rec in self.recorders.values():
            rec.attach(model, clear_on_forward=False)
        self._root_handle = model.register_forward_pre_hook(lambda module, args: self.clear())
        self._model = model
        self.clear()
        return self

    def detach(self) -> None:
        """Remove all hooks; the last records stay readable until :meth:`clear`."""
        for rec in self.recorders.values():
            rec.detach()
        if self._root_handle is not None:
            self._root_handle.remove()
            self._root_handle = None

    def __enter__(self) -> FeatureRecorders:
        if not self.attached:
            self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- records -----------------------------------------------------------------------------------
    @property
    def records(self) -> dict[str, Any]:
        """``{name: output}`` from the last forward pass; raises if a recorded module did not run."""
        return {name: rec.output for name, rec in self.recorders.items()}

    def __getitem__(self, name: str) -> Any:
        if name not in self.recorders:
            raise ConfigError(f"no recorder named '{name}'{did_you_mean(name, self.recorders.keys())}")
        return self.recorders[name].output

    def __contains__(self, name: object) -> bool:
        return name in self.recorders

    def __iter__(self):
        return iter(self.recorders)

    def __len__(self) -> int:
        return len(self.recorders)

    def detach_all(self) -> None:
        """Cut every record from the autograd graph (values kept)."""
        for rec in self.recorders.values():
            rec.detach_all()

    def clear(self) -> None:
        """Drop every record."""
        for rec in self.recorders.values():
            rec.clear()

    def __repr__(self) -> str:
        specs = ", ".join(f"{n}={r.path!r}" for n, r in self.recorders.items())
        return f"FeatureRecorders({specs}, attached={self.attached})"
