"""ONNX teachers: any network exported to ONNX teaches through ONNX Runtime.

Why: a teacher does not need to exist as PyTorch code. Models trained in other frameworks, models whose
code is hard to install, or vendor models shipped only as ``.onnx`` files all teach the same way: the
file holds the graph and the weights, ONNX Runtime runs it, and this adapter turns its outputs into
student task space (depth ``(B, 1, H, W)``, segmentation logits ``(B, K, H, W)``, mapped onto the
student's classes with a class map when ``K`` differs). No model code is imported or executed, so
``trust_remote_code`` has no effect here.

Options (``options:`` of the teacher entry; every key is optional):

``outputs``
    ``{task: output_name}``: which ONNX output answers which student task (``depth``, ``semseg``).
    Default: the model's outputs literally named ``depth`` / ``semseg``.
``input_size``
    ``[H, W]`` the image is resized to before running (for models with a fixed input shape); ``null``
    or absent: the model's static input H/W when the ONNX input has fixed dims, else the image's size.
    Outputs are resized back to the image size by :meth:`Teacher.predict`.
``mean`` / ``std``
    3 floats each: the model takes ``(rgb - mean) / std``. Default: none, the model takes RGB in [0, 1].
``providers``
    ONNX Runtime execution providers, in order of preference. Default: ``CUDAExecutionProvider`` first
    when this onnxruntime build has it, then ``CPUExecutionProvider``.
``class_names``
    names of the teacher's segmentation classes (output channels), for a class map naming classes.

Example entry (``teachers:`` of a config)::

    - name: depth_onnx
      path: onnx:teachers/depth.onnx
      options: {outputs: {depth: depth}, input_size: [384, 512],
                mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from ..config import TeacherConfig
from ..errors import ConfigError
from ..registry import did_you_mean
from .base import PixelSize, SourceOptions, Teacher, source_options
from .class_map import resolve_class_map
from .sources import TaskClasses

TASKS = ("depth", "semseg")
#: R, G, B
RGB = Annotated[list[float], Field(min_length=3, max_length=3)]


class Options(SourceOptions):
    outputs: dict[str, str] | None = Field(None, description="task -> ONNX output name")
    input_size: PixelSize | None = Field(None, description="[H, W] the image is resized to before running")
    mean: RGB | None = Field(None, description="the model takes (rgb - mean) / std")
    std: RGB | None = None
    providers: Annotated[list[str], Field(min_length=1)] | None = Field(
        None, description="ONNX Runtime execution providers, in order of preference")
    class_names: Annotated[list[str], Field(min_length=1)] | None = Field(
        None, description="names of the segmentation output's channels")

    @field_validator("std")
    @classmethod
    def _no_zero(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(v == 0 for v in value):
            raise ValueError(f"must not contain 0; got {value}")
        return value


def build(cfg: TeacherConfig, classes: TaskClasses) -> Teacher:
    """An ONNX file run with ONNX Runtime (no model code is imported)."""
    return OnnxTeacher(cfg.name, cfg.path, cfg.tasks, depth_convention=cfg.depth_convention,
                       class_map=cfg.class_map, student_classes=classes.get("semseg"), options=cfg.options)
DUMMY_SIZE = 224  # probe size for a dynamic-shape model whose class count the graph does not state
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("ONNX teachers need onnxruntime: pip install onnxruntime "
                          "(or onnxruntime-gpu)") from exc
    return onnxruntime


def _static(dim: Any) -> int | None:
    """A fixed positive dimension of an ONNX shape, else None (symbolic name or unknown)."""
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxTeacher(Teacher):
    """Runs an ONNX file with ONNX Runtime; ``options`` say which outputs teach which tasks."""

    recipe_covers_options = True

    def __init__(self, name: str, path: str | Path, tasks: list[str] | None = None, *,
                 depth_convention: str | None = None, class_map: str | None = None,
                 student_classes: list[str] | None = None, options: Options | Mapping[str, Any] | None = None):
        opts = source_options(Options, options, name, "ONNX")
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"teacher '{name}': ONNX file not found: {file}")
        ort = _import_onnxruntime()
        providers = self._providers(name, ort, opts.providers)
        try:
            session = ort.InferenceSession(str(file), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ConfigError(f"teacher '{name}': ONNX Runtime cannot load {file}: {exc}") from exc

        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ConfigError(f"teacher '{name}': {file} has {len(inputs)} inputs "
                              f"({[i.name for i in inputs]}); an ONNX teacher takes one image input")
        model_input = inputs[0]
        if len(model_input.shape) != 4:
            raise ConfigError(f"teacher '{name}': the ONNX input '{model_input.name}' has shape "
                              f"{model_input.shape}; expected (B, 3, H, W)")
        if model_input.type not in _NUMPY_TYPES:
            raise ConfigError(f"teacher '{name}': the ONNX input '{model_input.name}' is {model_input.type}; "
                              f"expected a float tensor")
        output_shapes = {o.name: list(o.shape) for o in session.get_outputs()}
        available = list(output_shapes)

        outputs = opts.outputs
        if outputs is None:
            outputs = {t: t for t in TASKS if t in output_shapes}
        for task, output in outputs.items():
            if task not in TASKS:
                raise ConfigError(f"teacher '{name}': options.outputs names task '{task}', which an ONNX "
                                  f"teacher cannot teach (tasks: {', '.join(TASKS)})")
            if output not in output_shapes:
                raise ConfigError(f"teacher '{name}': ONNX output '{output}' (for {task}) is not in {file}"
                                  f"{did_you_mean(str(output), available)}; the model's outputs are {available}")
        chosen = list(tasks) if tasks else list(outputs)
        if not chosen:
            raise ConfigError(f"teacher '{name}': no ONNX output is named 'depth' or 'semseg'; say which output "
                              f"teaches which task with options.outputs (the model's outputs are {available})")
        missing = [t for t in chosen if t not in outputs]
        if missing:
            raise ConfigError(f"teacher '{name}' cannot teach {missing}: map them to ONNX outputs with "
                              f"options.outputs (the model's outputs are {available})")
        if class_map is not None and "semseg" not in chosen:
            raise ConfigError(f"teacher '{name}': class_map needs the teacher to teach semseg")
        super().__init__(name, tuple(chosen), depth_convention=depth_convention or "metric")

        input_size = opts.input_size
        if input_size is None:
            h, w = _static(model_input.shape[2]), _static(model_input.shape[3])
            input_size = [h, w] if h and w else None

        mean, std = opts.mean, opts.std
        self._session = session
        self._input_name = model_input.name
        self._input_dtype = _NUMPY_TYPES[model_input.type]
        self._static_batch = _static(model_input.shape[0])
        self._input_size = tuple(input_size) if input_size else None
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) if mean is not None else None
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) if std is not None else None
        self._outputs = {t: outputs[t] for t in chosen}
        self._providers_used = providers
        self.path = file

        if "semseg" in chosen:
            shape = output_shapes[outputs["semseg"]]
            if len(shape) != 4:
                raise ConfigError(f"teacher '{name}': ONNX output '{outputs['semseg']}' has shape {shape}; "
                                  "segmentation must be logits (B, K, H, W)")
            num_classes = _static(shape[1]) or self._probe_channels(outputs["semseg"])
            class_names = opts.class_names
            if class_names is not None and len(class_names) != num_classes:
                raise ConfigError(f"teacher '{name}': options.class_names has {len(class_names)} names but "
                                  f"the segmentation output has {num_classes} channels")
            self.class_map = resolve_class_map(name, class_map, class_names, student_classes, num_classes)
        self._fingerprint = self._hash_file(file)
        self.freeze()

    # --- construction helpers -------------------------------------------------------------------------

    @staticmethod
    def _providers(name: str, ort, requested: list[str] | None) -> list[str]:
        available = list(ort.get_available_providers())
        if requested is None:
            return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        missing = [p for p in requested if p not in available]
        if missing:
            raise ConfigError(f"teacher '{name}': ONNX Runtime execution provider(s) {missing} are not available "
                              f"in this onnxruntime build (available: {available})")
        return list(requested)

    def _probe_channels(self, output: str) -> int:
        """Channels of a dynamic-shape output: one dummy inference at the model's (or a probe) input size."""
        h, w = self._input_size or (DUMMY_SIZE, DUMMY_SIZE)
        dummy = np.zeros((self._static_batch or 1, 3, h, w), dtype=self._input_dtype)
        (value,) = self._session.run([output], {self._input_name: dummy})
        return int(value.shape[1])

    @staticmethod
    def _hash_file(file: Path) -> str:
        """sha256 of the ONNX file's bytes, plus any external-data files its weights live in."""
        h = hashlib.sha256()
        paths = [file]
        try:  # weights of large models live beside the graph ("external data"); hash those too
            import onnx

            model = onnx.load(str(file), load_external_data=False)
            external = sorted({entry.value for tensor in model.graph.initializer
                               if tensor.data_location == onnx.TensorProto.EXTERNAL
                               for entry in tensor.external_data if entry.key == "location"})
            paths += [file.parent / location for location in external]
        except Exception:  # onnx not installed or the proto unreadable by it: the graph file alone
            pass
        for p in paths:
            h.update(p.name.encode())
            with open(p, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:16]

    # --- the Teacher contract -------------------------------------------------------------------------

    def recipe(self) -> dict[str, Any]:
        mean = None if self._mean is None else self._mean.flatten().tolist()
        std = None if self._std is None else self._std.flatten().tolist()
        return {**super().recipe(), "input_size": self._input_size, "mean": mean, "std": std,
                "outputs": dict(self._outputs)}

    def weights_fingerprint(self) -> str:
        """Identifies the weights the session was loaded from (the ONNX file's bytes at construction)."""
        return self._fingerprint

    def __getstate__(self) -> dict[str, Any]:
        """Picklable and deep-copyable: the session is rebuilt from the file on first use."""
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def _run_session(self):
        if self._session is None:
            ort = _import_onnxruntime()
            self._session = ort.InferenceSession(str(self.path), providers=self._providers_used)
        return self._session

    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.detach().float()
        if self._input_size is not None and tuple(x.shape[-2:]) != self._input_size:
            x = F.interpolate(x, size=self._input_size, mode="bilinear", align_corners=False, antialias=True)
        if self._mean is not None:
            x = x - self._mean.to(x.device)
        if self._std is not None:
            x = x / self._std.to(x.device)
        array = x.cpu().numpy().astype(self._input_dtype, copy=False)
        session = self._run_session()
        names = list(self._outputs.values())
        step = self._static_batch or len(array)  # a model exported with a fixed batch runs in chunks
        chunks = [session.run(names, {self._input_name: array[i:i + step]}) for i in range(0, len(array), step)]
        results = {}
        for k, task in enumerate(self._outputs):
            value = np.concatenate([c[k] for c in chunks]) if len(chunks) > 1 else chunks[0][k]
            results[task] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).to(images.device)
        return results
