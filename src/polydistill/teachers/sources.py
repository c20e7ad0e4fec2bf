"""Teacher sources: where a teacher comes from, and the one place a ``prefix:`` in a teacher's path is read.

A source is a factory ``build(cfg: TeacherConfig, classes: {task: class names}) -> Teacher`` registered in
:data:`TEACHER_SOURCES` under its name, which is also its path prefix (``hf:org/model``, ``timm:name``...). Its
first docstring line describes it (``polydistill list teachers``). A plugin registers its own source the same
way; its prefix is then understood everywhere a teacher path is (configs, ``--teacher`` options, ``modules``)::

    @TEACHER_SOURCES.register("mysource")
    def build(cfg, classes):
        \"\"\"My models.\"\"\"
        return MyTeacher(cfg.name, cfg.path, ...)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..config import TeacherConfig
from ..errors import ConfigError
from ..registry import Registry
from .base import Teacher

#: ``{student task: its class names}`` for the tasks that have classes
TaskClasses = Mapping[str, Sequence[str]]
TeacherFactory = Callable[[TeacherConfig, TaskClasses], Teacher]

TEACHER_SOURCES: Registry[TeacherFactory] = Registry("teacher source")
#: the source of a path without a registered prefix: a polydistill run or checkpoint folder
DEFAULT_SOURCE = "checkpoint"


def parse_source(path: str, source: str | None = None) -> tuple[str, str]:
    """``(source, path without its prefix)``: ``hf:org/model`` -> ``("hf", "org/model")``.

    An explicit ``source`` wins (a path repeating it as a prefix loses the prefix); otherwise a registered
    source name before the first ``:`` selects that source (``scheme://`` URLs are not prefixes), and a path
    without one is a polydistill checkpoint.
    """
    if source is not None:
        return source, path[len(source) + 1:] if path.startswith(f"{source}:") else path
    prefix, sep, rest = path.partition(":")
    if sep and prefix in TEACHER_SOURCES and not rest.startswith("//"):
        return prefix, rest
    return DEFAULT_SOURCE, path


def describe_sources() -> list[tuple[str, str, str]]:
    """``(name, path prefix, one-line description)`` of every registered source, sorted by name."""
    rows = []
    for name in TEACHER_SOURCES.names():
        factory = TEACHER_SOURCES.get(name)
        text = getattr(factory, "description", None) or (factory.__doc__ or "").strip()
        rows.append((name, f"{name}:", text.splitlines()[0].strip() if text else ""))
    return rows


def build_teacher(cfg: TeacherConfig, classes: TaskClasses | None = None) -> Teacher:
    """Build a teacher from its config. ``classes`` maps each student task with classes to its class names;
    a source takes what it needs (a class map checks and applies itself, a detector maps its labels)."""
    source, path = parse_source(cfg.path, cfg.source)
    factory = TEACHER_SOURCES.get(source)
    classes = dict(classes or {})
    teacher = factory(cfg.model_copy(update={"source": source, "path": path}), classes)
    if not isinstance(teacher, Teacher):
        raise ConfigError(f"teacher '{cfg.name}': the '{source}' source returned {type(teacher).__name__}, "
                          "not a polydistill Teacher")
    teacher.options = dict(cfg.options)
    return teacher.bind_classes(classes)


def resolve_teachers(configs: Sequence[TeacherConfig], given: Sequence[Teacher] = (),
                     classes: TaskClasses | None = None) -> list[Teacher]:
    """The run's teachers: those its config names (built, in config order), then the ``given`` instances
    (e.g. ``polydistill.train(config, teachers=[...])``), frozen and told the student's classes. Names must
    be unique: they key the cache, the loss terms and the logs."""
    for t in given:
        if not isinstance(t, Teacher):
            raise ConfigError(f"teachers=[...] holds a {type(t).__name__}; pass polydistill.Teacher instances "
                              "(Teacher.from_module(module, name=..., tasks=[...]) wraps a torch module)")
    names = [c.name for c in configs] + [t.name for t in given]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"teacher name(s) {repeated} are used twice (config teachers and teachers=[...] "
                          "together); every teacher needs its own name")
    built = [build_teacher(c, classes) for c in configs]
    return built + [t.freeze().bind_classes(dict(classes or {})) for t in given]
