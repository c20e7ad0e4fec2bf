"""``timm:`` feature teachers: any timm image model (DINOv2, ConvNeXt, ResNet...) as a frozen feature encoder.

Why
---
Feature distillation (DUNE, AM-RADIO, Theia) teaches a student to reproduce a strong encoder's spatial
features. timm holds most such encoders under one API, so a ``timm:`` teacher answers a student *features*
task with one feature map ``(B, C, h, w)`` at the teacher's own token grid (the features task aligns the
student to it). It teaches features only: ``tasks`` must name the student's features task(s), each gets the
same map, and ``feature_channels`` says its ``C`` (measured with a dry forward when the teacher is built).

How
---
The image (RGB in ``[0, 1]``) is resized (bicubic, antialiased, clamped to ``[0, 1]``) to the size the model
runs at, normalised with the mean/std of the model's ``pretrained_cfg`` and fed to
``model.forward_intermediates(x, indices=[layer], output_fmt="NCHW", intermediates_only=True, norm=...,
stop_early=True)``, which drops ViT prefix (class/register) tokens and reshapes patch tokens to a grid. With
``module`` the output of that submodule is recorded instead (a :class:`~polydistill.recorders.ModuleOutputRecorder`;
the forward stops right after it): ``(B, C, h, w)`` is used as is and ViT tokens ``(B, N, C)`` lose the
model's ``num_prefix_tokens`` and are reshaped to the patch grid. A model without ``forward_intermediates``
(timm releases older than the one tested here) falls back to recording ``feature_info[layer]["module"]``,
the module timm's ``features_only`` wrapper would read, so state-dict keys (and ``checkpoint``) stay the same.

ViTs are built with ``dynamic_img_size=True`` (position embeddings interpolated), so any multiple of the patch
size works; models that take one fixed size only (MaxViT, CoAtNet, a ViT built with
``timm_kwargs: {dynamic_img_size: false}``) run at that size (or at ``input_size``).

Run size: ``input_size`` (or the image's own size) is the reference size ``H × W``. Without ``grid_stride``
a patch model runs at the nearest multiple of its stride (the patch size) and a CNN at ``H × W`` as is, so the
grid is the model's own (``H/14`` for DINOv2). With ``grid_stride: s`` the image is rescaled so the grid is
``round(H/s) × round(W/s)`` — e.g. DUNE-style alignment of a patch-14 teacher with a patch-16 student
(``grid_stride: 16``: a 448 image runs at 392 and gives 28 tokens, as the student does).

Weights
-------
``pretrained`` (default) loads timm's pretrained weights; files already in the Hugging Face cache (or the torch
hub cache for URL-only weights) are loaded directly, without any network call; when they are not cached and
``HF_HUB_OFFLINE`` is set the teacher fails at once saying how to fix it, otherwise timm downloads them.
Without hub access give the file: ``pretrained_cfg_overlay: {file: /path/model.safetensors}`` (loaded by timm,
which also converts foreign checkpoints such as Meta's original DINOv2 ``.pth``) or ``checkpoint:`` (a
state dict in timm's own key names, loaded strictly with safetensors / ``torch.load(weights_only=True)``).

Options (``options:`` of the teacher; unknown keys are an error):

``pretrained``
    Load timm's pretrained weights (default true, false when ``checkpoint`` is given). ``false`` keeps random
    weights: only for tests and smoke runs, a random teacher teaches nothing.
``pretrained_cfg_overlay``
    Dict merged into the model's ``pretrained_cfg`` (``timm.create_model(..., pretrained_cfg_overlay=...)``):
    ``{file: /path/model.safetensors}`` loads local weights; ``mean`` / ``std`` override the normalisation.
``checkpoint``
    A local ``.safetensors`` or ``.pth`` / ``.pt`` / ``.bin`` state dict (or a dict holding one under ``model`` /
    ``state_dict``) loaded strictly; mismatches name the missing and unexpected keys.
``layer``
    Index into ``forward_intermediates`` outputs (ViT: block; CNN: stem + stages), default ``-1`` (the last).
``module``
    Dotted module path (``blocks.8``, ``stages.2``) read instead of ``layer``; unknown paths list nearby ones.
    Channels-last outputs (Swin stages, a dynamic ViT's ``patch_embed``) are told apart by the dry forward's
    non-square shape and transposed.
``norm``
    Apply the model's final norm to the ``layer`` features (``forward_intermediates(norm=True)``, like DINOv2's
    ``get_intermediate_layers``); default true where the model supports it. Not applied to ``module`` outputs.
``input_size``
    ``[H, W]`` reference size (default: the image's size; for a fixed-size model, that size).
``grid_stride``
    Input pixels (of the reference size) per output token; see above. Default: the model's own stride.
``timm_kwargs``
    Extra ``timm.create_model`` keyword arguments, e.g. ``{dynamic_img_size: false}``, ``{num_classes: 0}`` (to
    match a backbone-only ``checkpoint``), ``{depth: 2}``.

``class_map`` and ``depth_convention`` mean nothing for features and are errors; ``trust_remote_code`` is
ignored (timm builds only its own registered architectures, no code comes with the weights). Model names with
a ``hf-hub:`` / ``local-dir:`` prefix are not supported (they fetch a config); use the architecture name (with
its pretrained tag) and ``pretrained_cfg_overlay.file``.

Example::

    teachers:
      - name: dinov2
        path: timm:vit_small_patch14_reg4_dinov2.lvd142m
        tasks: [dino]                        # the student's features task
        options: {grid_stride: 16, pretrained_cfg_overlay: {file: weights/dinov2_vits14_reg4.safetensors}}
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..config import TeacherConfig
from ..errors import ConfigError
from ..recorders import ModuleOutputRecorder
from ..registry import did_you_mean
from .base import PixelSize, PositiveInt, SourceOptions, Teacher, source_options
from .sources import TaskClasses
from .weights import hub_offline, read_state_dict

#: create_model arguments the teacher sets itself
RESERVED_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "features_only",
                   "out_indices", "model_name")


class Options(SourceOptions):
    """See the module docstring."""

    pretrained: Annotated[bool, Field(strict=True)] | None = Field(
        None, description="load timm's pretrained weights (default: true unless checkpoint is given)")
    pretrained_cfg_overlay: dict[str, Any] = Field(default_factory=dict, description="merged into pretrained_cfg")
    checkpoint: str | None = Field(None, description="a local state dict in timm's key names, loaded strictly")
    layer: Annotated[int, Field(strict=True)] | None = Field(None, description="forward_intermediates index")
    module: Annotated[str, Field(min_length=1)] | None = Field(None, description="dotted module path to read")
    norm: Annotated[bool, Field(strict=True)] | None = Field(None, description="apply the final norm to layer "
                                                             "features")
    input_size: PixelSize | PositiveInt | None = Field(None, description="[H, W] reference size")
    grid_stride: PositiveInt | None = Field(None, description="input pixels per output token")
    timm_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model arguments")

    @field_validator("timm_kwargs")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(value) & set(RESERVED_KWARGS))
        if reserved:
            raise ValueError(f"may not set {', '.join(reserved)} (use the teacher's own options)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Options:
        if self.pretrained and self.checkpoint is not None:
            raise ValueError("options.checkpoint replaces the pretrained weights; remove pretrained: true")
        if self.layer is not None and self.module is not None:
            raise ValueError("set options.layer or options.module, not both")
        if self.norm is not None and self.module is not None:
            raise ValueError("options.norm applies to layer features, not to a module's output")
        return self


def build(cfg: TeacherConfig, classes: TaskClasses) -> Teacher:
    """timm image models (DINOv2, ConvNeXt, ResNet...) as frozen feature encoders for features tasks."""
    if cfg.class_map is not None:
        raise ConfigError(f"teacher '{cfg.name}': class_map means nothing for a timm feature teacher; remove it")
    if cfg.depth_convention is not None:
        raise ConfigError(f"teacher '{cfg.name}': depth_convention means nothing for a timm feature teacher; "
                          "remove it")
    return TimmTeacher(cfg.name, cfg.path, cfg.tasks, options=cfg.options)


#: size of the dry forward that measures channels and stride (non-square, so channels-last outputs stand out)
PROBE_SIZE = (128, 192)


class _StopForward(Exception):
    """Raised by a hook right after the recorded module ran: the rest of the network is not needed."""


def _suggest(name: str, choices: list[str], listing: str) -> str:
    """A did-you-mean for close names only (timm has over a thousand models; never list them all)."""
    if difflib.get_close_matches(name, choices, n=1, cutoff=0.5):
        return did_you_mean(name, choices)
    return f" (list names with {listing})"


def check_model_name(teacher: str, path: str) -> None:
    """A ConfigError with a suggestion when ``path`` is not a timm model (with an optional pretrained tag)."""
    import timm

    if not isinstance(path, str) or not path:
        raise ConfigError(f"teacher '{teacher}': path must be a timm model name, e.g. timm:vit_small_patch14_dinov2")
    if path.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        raise ConfigError(f"teacher '{teacher}': timm names with a '{path.split(':')[0]}:' prefix are not supported; "
                          "use the architecture name with its pretrained tag (e.g. vit_small_patch14_dinov2.lvd142m) "
                          "and options.pretrained_cfg_overlay: {file: <local weights>}")
    arch, _, tag = path.partition(".")
    models = timm.list_models()
    if arch not in models:
        hint = _suggest(arch, models, "timm.list_models('*pattern*')")
        raise ConfigError(f"teacher '{teacher}': unknown timm model '{path}'{hint}")
    if tag:
        tagged = timm.list_pretrained(f"{arch}.*")
        if path not in tagged:
            hint = did_you_mean(path, tagged) if tagged else f" ({arch} has no pretrained tags)"
            raise ConfigError(f"teacher '{teacher}': timm has no pretrained tag '{tag}' for {arch}{hint}")


def _cached_weights(cfg: dict[str, Any]) -> str | None:
    """Path of the pretrained weights in the Hugging Face (or torch hub) cache, without any network call."""
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        for file_name in names:
            try:
                found = try_to_load_from_cache(hub_id, file_name)
            except ValueError:  # a malformed hub id in an overlay: let timm report it
                found = None
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = cfg.get("url")
    if url:
        found = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if found.is_file():
            return str(found)
    return None


def _key_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _load_checkpoint(teacher: str, model: nn.Module, model_name: str, path: Path) -> None:
    state = read_state_dict(teacher, path, "options.checkpoint")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ConfigError(f"teacher '{teacher}': options.checkpoint {path} does not fit {model_name} (another size "
                          f"of the model? set the matching timm_kwargs or model name): "
                          f"{' '.join(str(exc).split())[:600]}") from exc
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing keys: {_key_list(result.missing_keys)}")
        if result.unexpected_keys:
            parts.append(f"unexpected keys: {_key_list(result.unexpected_keys)}")
        raise ConfigError(f"teacher '{teacher}': options.checkpoint {path} does not fit {model_name}; "
                          f"{'; '.join(parts)}. A file without the classifier needs timm_kwargs: {{num_classes: 0}}; "
                          "a file in another checkpoint's key names can go through "
                          "pretrained_cfg_overlay: {file: ...}, which lets timm convert it")


def _nearest_multiple(value: int, step: int) -> int:
    return max(1, math.floor(value / step + 0.5)) * step


class TimmTeacher(Teacher):
    """A frozen timm model teaching student features tasks with one of its feature maps (see the module docstring)."""

    recipe_covers_options = True

    def __init__(self, name: str, path: str, tasks: list[str] | None = None, *,
                 options: Options | Mapping[str, Any] | None = None):
        from timm.data import resolve_model_data_config  # optional heavy dependency

        if not tasks:
            raise ConfigError(f"teacher '{name}': a feature teacher needs tasks: [<name of a features task>] "
                              "(the student's features task(s) it teaches)")
        check_model_name(name, path)
        opts = source_options(Options, options, name, "timm")
        checkpoint, layer, module, norm, grid_stride = opts.checkpoint, opts.layer, opts.module, opts.norm, \
            opts.grid_stride
        pretrained = opts.pretrained if opts.pretrained is not None else checkpoint is None
        overlay = dict(opts.pretrained_cfg_overlay)
        if overlay.get("file") is not None:
            if not pretrained:
                raise ConfigError(f"teacher '{name}': pretrained_cfg_overlay.file is loaded only with "
                                  "pretrained: true (and not with checkpoint)")
            file = Path(overlay["file"]).expanduser()
            if not file.is_file():
                raise ConfigError(f"teacher '{name}': pretrained_cfg_overlay.file not found: {file}")
            overlay["file"] = str(file)
        size = opts.input_size
        input_size = None if size is None else (size, size) if isinstance(size, int) else (size[0], size[1])
        timm_kwargs = opts.timm_kwargs

        # -- model -----------------------------------------------------------------------------------
        if pretrained and overlay.get("file") is None:
            overlay = self._locate_weights(name, path, overlay)
        model = self._create(name, path, pretrained, overlay, timm_kwargs)
        if checkpoint is not None:
            _load_checkpoint(name, model, path, Path(checkpoint).expanduser())
        model.eval()

        super().__init__(name, tuple(tasks), depth_convention="metric")
        self.model = model
        self.model_name = path
        self.pretrained = pretrained
        self.timm_kwargs = dict(timm_kwargs)
        data_cfg = resolve_model_data_config(model)
        self.register_buffer("mean", torch.tensor(data_cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(data_cfg["std"], dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

        patch_embed = getattr(model, "patch_embed", None)
        patch = getattr(patch_embed, "patch_size", None)
        self.patch_size = (int(patch[0]), int(patch[1])) if isinstance(patch, (tuple, list)) else None
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        dynamic = bool(getattr(model, "dynamic_img_size", False))
        self.fixed_size = None
        if model.pretrained_cfg.get("fixed_input_size") and not dynamic:
            img_size = getattr(patch_embed, "img_size", None) or timm_kwargs.get("img_size") or data_cfg["input_size"]
            img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)[-2:]
            self.fixed_size = (int(img_size[0]), int(img_size[1]))
            if grid_stride is not None:
                raise ConfigError(f"teacher '{name}': {path} runs at a fixed size {list(self.fixed_size)}, so "
                                  "grid_stride cannot rescale it; remove grid_stride (or build it with "
                                  "timm_kwargs: {dynamic_img_size: true} if the model supports it)")
        # token models run at a multiple of their patch; CNNs at the reference size as is
        self.align = self.patch_size is not None
        self.input_size = input_size or self.fixed_size
        self.grid_stride = grid_stride

        # -- where the features come from ---------------------------------------------------------------
        self.layer = -1 if layer is None and module is None else layer
        self.module_path = module
        self.norm = False
        self._fi_kwargs: dict[str, Any] = {}
        if module is None and not hasattr(model, "forward_intermediates"):
            module = self.module_path = self._feature_info_module(name, model, self.layer)
        self._recorder = None
        self._stop_after_module = False
        self._channels_last: bool | None = None  # layout of the module's 4-d output, decided by the dry forward
        if module is not None:
            self._recorder = ModuleOutputRecorder(module, name=f"teacher '{name}' options.module").attach(model)
            model.get_submodule(module).register_forward_hook(self._stop_forward)
        else:
            accepted = inspect.signature(model.forward_intermediates).parameters
            self.norm = norm if norm is not None else "norm" in accepted
            self._fi_kwargs = {k: v for k, v in dict(output_fmt="NCHW", intermediates_only=True, stop_early=True,
                                                     norm=self.norm).items() if k in accepted}
            if self.norm and "norm" not in accepted:
                raise ConfigError(f"teacher '{name}': {path} cannot normalise its intermediate features; "
                                  "remove options.norm")

        # -- dry forward: channels and stride ---------------------------------------------------------
        probe = self.input_size if self.fixed_size else self._probe_size()
        features = self._probe(name, path, probe, norm)
        channels, h, w = features.shape[1:]
        self.stride = (max(1, round(probe[0] / h)), max(1, round(probe[1] / w)))
        self.feature_channels = {t: int(channels) for t in self.tasks}
        self.freeze()

    # -- construction helpers -------------------------------------------------------------------------
    @staticmethod
    def _locate_weights(teacher: str, path: str, overlay: dict[str, Any]) -> dict[str, Any]:
        """The overlay, with ``file`` set to cached pretrained weights when there are some (no network)."""
        from timm.models import get_pretrained_cfg

        try:
            cfg = get_pretrained_cfg(path)
        except RuntimeError:  # no pretrained config at all
            cfg = None
        cfg = {**(cfg.to_dict() if cfg is not None else {}), **overlay}
        if cfg.get("state_dict") is not None:
            return overlay
        cached = _cached_weights(cfg)
        if cached is not None:
            return {**overlay, "file": cached}
        if not cfg.get("hf_hub_id") and not cfg.get("url"):
            raise ConfigError(f"teacher '{teacher}': timm has no pretrained weights for {path}; choose a name with "
                              "a pretrained tag (timm.list_pretrained()), or give pretrained_cfg_overlay: {file: ...} "
                              "or checkpoint")
        if hub_offline():
            where = cfg.get("hf_hub_id") or cfg.get("url")
            raise ConfigError(f"teacher '{teacher}': the pretrained weights of {path} ({where}) are not cached locally "
                              f"and HF_HUB_OFFLINE is set; download them once with internet (e.g. `python -c "
                              f"\"import timm; timm.create_model('{path}', pretrained=True)\"`) or give the file "
                              "as options.pretrained_cfg_overlay: {file: /path/model.safetensors}")
        return overlay

    @staticmethod
    def _create(teacher: str, path: str, pretrained: bool, overlay: dict[str, Any],
                timm_kwargs: dict[str, Any]) -> nn.Module:
        import timm

        kwargs = dict(timm_kwargs)
        if overlay:
            kwargs["pretrained_cfg_overlay"] = overlay
        dynamic_default = "dynamic_img_size" not in kwargs
        if dynamic_default:
            kwargs["dynamic_img_size"] = True
        try:
            try:
                return timm.create_model(path, pretrained=pretrained, **kwargs)
            except TypeError as exc:  # a model without dynamic sizes (CNNs) refuses the argument before building
                if not dynamic_default or "dynamic_img_size" not in str(exc):
                    raise
                del kwargs["dynamic_img_size"]
                return timm.create_model(path, pretrained=pretrained, **kwargs)
        except ConfigError:
            raise
        except Exception as exc:  # bad timm_kwargs, weights that do not fit, failed download: all user-fixable
            what = "load the weights of" if pretrained else "build"
            raise ConfigError(f"teacher '{teacher}': cannot {what} timm model {path} "
                              f"(timm_kwargs {timm_kwargs}): {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:600]}") from exc

    @staticmethod
    def _feature_info_module(teacher: str, model: nn.Module, layer: int) -> str:
        info = getattr(model, "feature_info", None)
        if not isinstance(info, (list, tuple)) or not info:
            raise ConfigError(f"teacher '{teacher}': this timm model has neither forward_intermediates nor "
                              "feature_info; name the layer to read with options.module")
        if not -len(info) <= layer < len(info):
            raise ConfigError(f"teacher '{teacher}': options.layer {layer} is out of range: the model has "
                              f"{len(info)} feature levels")
        return str(info[layer]["module"])

    def _probe_size(self) -> tuple[int, int]:
        step = self.patch_size or (32, 32)
        return math.ceil(PROBE_SIZE[0] / step[0]) * step[0], math.ceil(PROBE_SIZE[1] / step[1]) * step[1]

    def _probe(self, teacher: str, path: str, size: tuple[int, int], norm: bool | None) -> torch.Tensor:
        """One forward on a blank image; failures become config errors that say what to change."""
        x = torch.zeros(1, 3, *size)
        with torch.no_grad():
            for attempt in range(2):
                try:
                    return self._features(x)
                except ConfigError:
                    raise
                except Exception as exc:
                    error = exc
                retry = (attempt == 0 and self._recorder is None and norm is None and self.norm
                         and isinstance(error, AssertionError) and "norm" in str(error).lower())
                if not retry:
                    break
                self.norm = self._fi_kwargs["norm"] = False  # e.g. Hiera: no final norm for intermediates
            levels = self._count_levels(x) if self._recorder is None else None
        if levels is not None and not -levels <= self.layer < levels:
            raise ConfigError(f"teacher '{teacher}': options.layer {self.layer} is out of range for {path}, which "
                              f"has {levels} feature levels (0..{levels - 1}, or -1..-{levels} from the end)")
        raise ConfigError(f"teacher '{teacher}': cannot run {path} on a {size[0]}x{size[1]} input "
                          f"(set options.input_size to a size it accepts): {type(error).__name__}: "
                          f"{' '.join(str(error).split())[:400]}") from error

    def _count_levels(self, x: torch.Tensor) -> int | None:
        kwargs = {**self._fi_kwargs, **({"norm": False} if "norm" in self._fi_kwargs else {})}
        try:
            return len(self.model.forward_intermediates(x, indices=None, **kwargs))
        except Exception:
            return None

    # -- inference ------------------------------------------------------------------------------------
    def run_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Size ``(H, W)`` the model runs at for an image of ``size`` (see the module docstring)."""
        if self.fixed_size is not None:
            return self.input_size
        height, width = self.input_size or size
        if self.grid_stride is not None:
            sh, sw = self.stride
            return (max(1, math.floor(height / self.grid_stride + 0.5)) * sh,
                    max(1, math.floor(width / self.grid_stride + 0.5)) * sw)
        if self.align:
            return _nearest_multiple(height, self.stride[0]), _nearest_multiple(width, self.stride[1])
        return height, width

    def _token_grid(self, size: tuple[int, int]) -> tuple[int, int] | None:
        patch_embed = getattr(self.model, "patch_embed", None)
        if hasattr(patch_embed, "dynamic_feat_size"):
            grid = patch_embed.dynamic_feat_size(size)
            return int(grid[0]), int(grid[1])
        if self.patch_size is not None:
            return size[0] // self.patch_size[0], size[1] // self.patch_size[1]
        return None

    def _stop_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        """Forward hook on the recorded module: the teacher needs nothing after it (other callers run on)."""
        if self._stop_after_module:
            raise _StopForward

    def _to_map(self, value: Any, size: tuple[int, int]) -> torch.Tensor:
        """A recorded module output as ``(B, C, h, w)``: maps as they are, ViT tokens without prefix tokens."""
        where = f"teacher '{self.name}': module '{self.module_path}'"
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"{where} returned a {type(value).__name__}, not a tensor; choose a module that "
                              "returns a feature map (B, C, h, w) or tokens (B, N, C)")
        if value.dim() == 4:
            if self._channels_last is None:
                self._channels_last = self._is_channels_last(tuple(value.shape), size)
            return value.permute(0, 3, 1, 2) if self._channels_last else value
        if value.dim() != 3:
            raise ConfigError(f"{where} returned shape {tuple(value.shape)}; expected (B, C, h, w) or tokens (B, N, C)")
        grid = self._token_grid(size)
        if grid is None:
            raise ConfigError(f"{where} returned tokens {tuple(value.shape)} but the model has no patch grid to "
                              "reshape them to; choose a module that returns (B, C, h, w)")
        batch, count, channels = value.shape
        prefix = count - grid[0] * grid[1]
        if prefix not in (0, self.num_prefix_tokens):
            raise ConfigError(f"{where} returned {count} tokens, which is neither the {grid[0]}x{grid[1]} patch grid "
                              f"nor the grid plus {self.num_prefix_tokens} prefix tokens")
        return value[:, prefix:].transpose(1, 2).reshape(batch, channels, grid[0], grid[1])

    @staticmethod
    def _is_channels_last(shape: tuple[int, ...], size: tuple[int, int]) -> bool:
        """Whether ``(B, a, b, c)`` is ``(B, h, w, C)``: only then do (a, b), not (b, c), scale like the input."""
        def grid_like(h: int, w: int) -> bool:
            return abs(size[0] / h - size[1] / w) <= 0.25 * size[0] / h

        return not grid_like(shape[2], shape[3]) and grid_like(shape[1], shape[2])

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a normalised batch already at the run size."""
        if self._recorder is None:
            return self.model.forward_intermediates(x, indices=[self.layer], **self._fi_kwargs)[0]
        self._stop_after_module = True
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            self._stop_after_module = False
        return self._to_map(self._recorder.output, tuple(x.shape[-2:]))

    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.to(self.mean.dtype)
        size = self.run_size(tuple(images.shape[-2:]))
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        features = self._features((x - self.mean) / self.std)
        return {t: features for t in self.tasks}

    def recipe(self) -> dict[str, Any]:
        recipe = super().recipe()
        recipe.update(source="timm", model=self.model_name, layer=None if self.module_path else self.layer,
                      module=self.module_path, norm=self.norm, input_size=self.input_size,
                      grid_stride=self.grid_stride, stride=list(self.stride),
                      mean=[round(float(v), 6) for v in self.mean.flatten()],
                      std=[round(float(v), 6) for v in self.std.flatten()], timm_kwargs=self.timm_kwargs)
        return recipe
