"""Configuration: YAML → OmegaConf (includes, dotted overrides) → pydantic models with ``extra="forbid"``.

Why this stack: YAML stays readable and never executes code (no custom tags, no import strings);
OmegaConf gives ``_base_`` includes, ``${...}`` interpolation and ``train.epochs=3`` overrides from the
command line; pydantic turns every typo into an error that names the key and suggests the right one.
Components (tasks, backbones, teacher sources, weightings) are referenced by registered *names*.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .registry import did_you_mean


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(StrictModel):
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    scale: tuple[float, float] = Field((1.0, 1.25), description="random zoom range (resize then crop)")
    crop: tuple[int, int] | None = Field(
        None, description="train on random (height, width) crops: cheaper steps, same object scale"
    )
    color_jitter: float = Field(0.0, ge=0, lt=1, description="brightness/contrast/saturation jitter of the "
                                "student's input only (teachers see the un-jittered image)")

    @field_validator("scale")
    @classmethod
    def _scale_at_least_one(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 1.0 <= v[0] <= v[1]:
            raise ValueError("scale must be (low, high) with 1 <= low <= high")
        return v


#: the largest training side: a batch of two 8192×8192 images already takes 1.5 GiB before any network
MAX_IMAGE_SIDE = 8192


class DataConfig(StrictModel):
    train: str = Field(description="dataset used for training (a folder, or the NYUv2 .mat file)")
    val: str | None = Field(None, description="dataset for periodic validation (never the train set; may be the "
                            "train path with another split)")
    format: Literal["auto", "folder", "nyuv2", "nyuv2_npy", "cityscapes", "coco"] = Field(
        "auto", description="dataset layout, read in place; auto detects it from the folder's contents")
    train_split: str | None = Field(None, description="split of data.train (default: the format's training split, "
                                    "e.g. train, train2017)")
    val_split: str | None = Field(None, description="split of data.val (default: the format's validation split, "
                                  "e.g. val, val2017; NYUv2: test)")
    format_options: dict[str, Any] = Field(
        default_factory=dict, description="format settings, checked by the format: nyuv2 {classes: 13|40, "
        "split_file, depth: depths|rawDepths}; coco {crowd: skip|keep}")
    height: int = Field(96, gt=0, le=MAX_IMAGE_SIDE, description="images are resized to this size")
    width: int = Field(128, gt=0, le=MAX_IMAGE_SIDE)
    batch_size: int = Field(16, gt=0)
    num_workers: int = Field(0, ge=0)
    augment: AugmentConfig = AugmentConfig()
    labelled_only: bool = Field(False, description="train only on images that carry at least one label")
    sampler: Literal["random", "per_task"] = Field(
        "random", description="'per_task': every step takes one batch from the images of each labelled task "
        "(partial labels: tasks get equal images per step however unequal their label counts)"
    )


class StudentConfig(StrictModel):
    backbone: str = Field("mobilenetv3_small_100", description="any timm model with features_only support")
    pretrained: bool = Field(False, description="load timm pretrained weights (needs them cached or online)")
    neck_channels: int = Field(64, gt=0)
    head_channels: int | None = Field(None, description="hidden width of each task head (default: neck)")
    layout: Literal["plain", "sak"] = Field(
        "plain", description="'sak': adapter path per features task and a router per dense task (SAK)")
    adapter_ratio: int = Field(4, gt=0, description="SAK adapters' bottleneck: channels / adapter_ratio")
    router_noise: Literal["image", "pixel"] = Field(
        "image", description="SAK routers' training noise: one draw per image (the paper's image-level gating) "
                             "or per pixel (SAK's code)")



class ModelSpec(StudentConfig):
    """What rebuilds a student network without its config: the architecture plus every task's resolved
    options; stored as ``model.json`` beside every checkpoint (``input_size``: the training size)."""

    tasks: dict[str, dict[str, Any]] = Field(description="task name -> resolved task options")
    input_size: tuple[int, int] | None = Field(None, description="(height, width) the student was trained at")

    @classmethod
    def of(cls, spec: ModelSpec | dict[str, Any]) -> ModelSpec:
        """A spec as given, or parsed from its JSON form (``model.json``)."""
        return spec if isinstance(spec, ModelSpec) else cls.model_validate(spec)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class TeacherConfig(StrictModel):
    name: str
    source: str | None = Field(None, description="where the teacher comes from (a registered source: polydistill "
                               "list teachers); default: the path's prefix, else checkpoint")
    path: str = Field(description="checkpoint directory, hub id, model name, file or python factory; a prefix such "
                      "as 'hf:depth-anything/Depth-Anything-V2-Small-hf' or 'onnx:teacher.onnx' selects the source "
                      "(read by polydistill.teachers.parse_source)")
    tasks: list[str] | None = Field(None, description="student tasks it teaches (default: all it can)")
    depth_convention: Literal["metric", "relative", "inverse_relative"] | None = Field(
        None, description="what its depth means (default: the source's own knowledge of the model, else metric)")
    class_map: str | None = Field(None, description="YAML mapping the teacher's classes onto the student's")
    trust_remote_code: bool = Field(False, description="let transformers run code shipped with a hub model")
    options: dict[str, Any] = Field(default_factory=dict, description="source-specific settings (typed by the "
                                    "source's Options)")


class CacheConfig(StrictModel):
    """How teacher outputs are stored (see polydistill.cache)."""

    encoding: Literal["fp16", "int8"] = Field(
        "fp16", description="features and logits: fp16, or int8 with per-shard, per-channel scales (depth: fp16)")
    semseg_topk: int | None = Field(None, gt=0, description="keep only the k most likely classes per pixel")
    rebuild: bool = Field(True, description="rebuild a cache made for other weights, preprocessing or images; "
                          "false makes that an error")
    verify: Literal["full", "size"] = Field(
        "full", description="check every shard's checksum when a cache is opened, or only its size (faster)")


class StrategyConfig(StrictModel):
    """A weighting strategy by registered name plus its hyperparameters (checked by the strategy)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict, description="strategy hyperparameters")


def _strategy(value: Any) -> Any:
    """Accept ``rl`` or ``{name: rl, update: reinforce}`` (options beside the name) in YAML."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict):  # options beside the name and under ``options:`` (e.g. from an override) merge
        value = dict(value)
        name = value.pop("name", None)
        nested = value.pop("options", None) or {}
        return {"name": name, "options": {**value, **nested}} if isinstance(nested, dict) else value | {
            "name": name, "options": nested}
    return value


class TrajectoryConfig(StrictModel):
    """JointDistill's knowledge trajectory (our documented interpretation, see distill/trajectory.py)."""

    memory: Literal["ema", "snapshots"] = Field("ema", description="an EMA copy or K periodic snapshots")
    ema_decay: float = Field(0.99, gt=0, lt=1)
    snapshot_every: int = Field(100, gt=0, description="steps between snapshots (memory: snapshots)")
    num_snapshots: int = Field(3, gt=0)
    age_decay: float = Field(0.5, gt=0, le=1, description="weight of snapshot k steps back: age_decay**k")
    weight: float = Field(1.0, ge=0, description="weight of the trajectory term of a task")
    tolerance: float = Field(0.0, ge=0, description="a task is 'dropped' when its score falls more than this "
                             "(relative) below its best validation score")
    always: bool = Field(False, description="apply to every task at every step, not only to dropped tasks")


class DistillConfig(StrictModel):
    teacher_weighting: StrategyConfig = Field(
        StrategyConfig(name="static"), description="how teachers of a task are weighted (static, feedback, rl, ...)"
    )
    task_weighting: StrategyConfig = Field(
        StrategyConfig(name="equal"), description="how tasks are balanced (equal, uncertainty, dwa, gradnorm)"
    )
    gt_weight: float = Field(1.0, ge=0, description="weight of ground-truth terms")
    teacher_weight: float = Field(1.0, ge=0, description="weight of each teacher term")
    task_weights: dict[str, float] = Field(default_factory=dict, description="per-task multiplier")
    teacher_weights: dict[str, float] = Field(default_factory=dict, description="per-teacher multiplier; a "
                                              "'task/teacher' key scales one term (0 switches it off)")
    trajectory: TrajectoryConfig | None = Field(None, description="knowledge trajectory against forgetting")
    teacher_targets: Literal["all", "unlabelled"] = Field(
        "all", description="teacher terms on every image, or only on images without that task's label (partial "
        "labels: teachers fill the gaps, the labels alone teach where they exist)"
    )
    precompute_teachers: bool = Field(
        True, description="run teachers once on un-augmented images (cached on disk) and augment their maps "
        "with the image; false runs them on every augmented batch"
    )
    teacher_cache: str | None = Field(
        None, description="folder holding teacher-output caches between runs, one per training folder and teacher "
        "set (default: RUN_DIR/teacher_cache)"
    )
    cache: CacheConfig = CacheConfig()

    @field_validator("teacher_weighting", "task_weighting", mode="before")
    @classmethod
    def _strategy_shorthand(cls, v: Any) -> Any:
        return _strategy(v)


class TrainConfig(StrictModel):
    epochs: int = Field(10, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many steps (overrides epochs)")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine schedule floor as a fraction of lr")
    grad_clip: float | None = Field(5.0, gt=0, description="global gradient-norm clip; null disables")
    nan_patience: int = Field(5, gt=0, description="a step whose loss is NaN/Inf is skipped (no update) and logged; "
                              "this many such steps in a row stop the run")
    grad_accum_steps: int = Field(1, gt=0, description="micro-batches of data.batch_size per optimizer step")
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    channels_last: bool = Field(
        True, description="train the student in the channels-last (NHWC) memory layout: its depthwise and 1×1 "
        "convolutions run faster on CPUs (oneDNN) and on GPU tensor cores; false keeps PyTorch's default NCHW")
    val_every: int | None = Field(None, gt=0, description="validate every N steps (default: every epoch)")
    save_every: int | None = Field(None, gt=0, description="write the 'last' checkpoint every N steps")
    log_every: int = Field(10, gt=0)
    seed: int = 0
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's choice)")
    progress: bool = True
    tensorboard: bool = Field(False, description="also log every steps.csv column and validation metric to "
                              "RUN_DIR/tensorboard/ (needs the tensorboard package)")
    report: bool = Field(True, description="write RUN_DIR/report.html at the end (student and ground truth on a "
                         "few validation images; `polydistill report` also draws the teachers)")
    init_from: str | None = Field(
        None, description="start from a polydistill checkpoint's weights (run or checkpoint folder): tensors with "
        "matching names and shapes load, new parts (heads, routers) start fresh — e.g. SAK stage 2 from stage 1")


class RunConfig(StrictModel):
    """One training run: what to learn (tasks), from what (data, teachers), into what (student), how."""

    data: DataConfig
    tasks: dict[str, dict[str, Any]] = Field(description="task name -> task options")
    student: StudentConfig = StudentConfig()
    teachers: list[TeacherConfig] = Field(default_factory=list)
    distill: DistillConfig = DistillConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("tasks")
    @classmethod
    def _tasks_not_empty(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not v:
            raise ValueError("at least one task is needed, e.g. tasks: {depth: {}}")
        return {name: dict(opts or {}) for name, opts in v.items()}

    @field_validator("teachers")
    @classmethod
    def _unique_teacher_names(cls, v: list[TeacherConfig]) -> list[TeacherConfig]:
        names = [t.name for t in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"teacher names must be unique, repeated: {sorted(dup)}")
        if "gt" in names:
            raise ValueError("'gt' is reserved for ground truth; rename the teacher")
        return v


# --------------------------------------------------------------------------------------------- loading


#: a config is a few kilobytes; these bounds make a hostile or wrong file fail fast instead of running for minutes
MAX_CONFIG_BYTES = 1 << 20
#: values a config may expand to (a YAML alias "bomb" of 7 lines expands to 10^7)
MAX_CONFIG_VALUES = 100_000


def _count_values(data: Any, path: Path) -> None:
    """Refuse a config whose aliases expand it past :data:`MAX_CONFIG_VALUES` (counted as OmegaConf would copy it:
    every reference again), stopping as soon as the bound is passed."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"{path}: the config expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases "
                              "repeating themselves?); write it out without nested aliases")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """Read a YAML file and resolve its ``_base_`` includes (paths relative to the file)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config include cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (included by {seen[-1]})" if seen else ""))
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {path.stat().st_size:,} bytes; a config is a small YAML text file "
                          f"(at most {MAX_CONFIG_BYTES:,} bytes) — is this the right file?")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (not UTF-8); a config is a YAML text file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    _count_values(data, path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file path or a list of file paths, got {bases!r}")
    merged = OmegaConf.create({})
    for base in bases:
        merged = OmegaConf.merge(merged, _read_yaml(path.parent / base, (*seen, path)))
    return OmegaConf.merge(merged, OmegaConf.create(data))


def _apply_override(cfg: Any, item: str) -> None:
    """``key.path=value`` (value parsed as YAML, as OmegaConf's dotlist does) set in place; list items by index
    (``teachers.0.path=...``) included."""
    key, _, raw = item.partition("=")
    value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]
    OmegaConf.update(cfg, key.strip(), value, merge=True)


def _problem(item: dict[str, Any]) -> str:
    """One pydantic error as ``config key 'train.lr': <what is wrong> (got 'fast')`` or an unknown key with a
    suggestion."""
    loc = ".".join(str(p) for p in item["loc"])
    if item["type"] == "extra_forbidden":
        model: type[BaseModel] | None = RunConfig
        for part in item["loc"][:-1]:
            field = model.model_fields.get(str(part))
            ann = getattr(field, "annotation", None)
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if model is None:
                break
        key = str(item["loc"][-1])
        hint = did_you_mean(key, list(model.model_fields)) if model is not None else ""
        return f"unknown config key '{loc}'{hint}"
    given = item.get("input")
    got = ""
    if item["type"] != "missing" and (given is None or isinstance(given, (str, int, float, bool))):
        shown = repr(given)
        got = f" (got {shown if len(shown) <= 40 else shown[:37] + '...'})"
    return f"config key '{loc}': {item['msg']}{got}"


def explain_validation_error(error: ValidationError, source: str, shown: int = 3) -> str:
    """Turn pydantic's report into one line: each key, what is wrong with it, the value given or a suggestion
    (the first ``shown`` problems, then how many more there are)."""
    problems = [_problem(item) for item in error.errors()]
    more = f" (and {len(problems) - shown} more problems)" if len(problems) > shown else ""
    return f"{source}: " + "; ".join(problems[:shown]) + more


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> RunConfig:
    """Build a validated :class:`RunConfig` from a YAML file and/or a dict, plus dotted overrides."""
    cfg = OmegaConf.create(base or {})
    source = "config"
    if path is not None:
        cfg = OmegaConf.merge(cfg, _read_yaml(Path(path)))
        source = str(path)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.epochs=3")
    try:
        for item in overrides or []:
            _apply_override(cfg, item)
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {exc}".replace("\n", " ")) from None
    try:
        return RunConfig.model_validate(plain)
    except ValidationError as exc:
        raise ConfigError(explain_validation_error(exc, source)) from None


def dump_config(cfg: RunConfig) -> str:
    """The fully resolved config as YAML (written into every run directory)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(dump_config(cfg))
