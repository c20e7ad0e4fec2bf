"""A run folder belongs to one run: the rules ``train`` applies to its ``--out`` before it writes anything.

Why: training into a folder that holds another run used to mix the two silently (the old ``checkpoints/best``
stayed and ``eval RUN_DIR`` evaluated the old model; ``val.jsonl`` was appended), two trainings on one folder
corrupted each other's logs, and ``--resume`` accepted a changed learning rate or data folder and rewrote
``config.yaml``. The rules:

1. a new run (no ``resume``) refuses a folder that already holds a run (any of :data:`RUN_FILES`);
2. the process writing a run holds an exclusive ``flock`` on ``RUN_DIR/.lock`` for as long as it trains (the
   kernel drops it when the process ends, even on SIGKILL), so a second writer fails at once;
3. ``resume`` refuses a config that differs from the run's ``config.yaml`` except in :data:`RESUMABLE_KEYS`,
   and never rewrites ``config.yaml``: it keeps recording the run as it started.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..config import RunConfig, dump_config
from ..errors import ConfigError, TrainingError

try:
    import fcntl
except ImportError:  # not on Windows: runs there go without the lock
    fcntl = None  # type: ignore[assignment]

#: what a run writes into its folder; any of them means the folder holds a run
RUN_FILES = ("config.yaml", "steps.csv", "val.jsonl", "summary.json", "checkpoints")
#: the lock file a writing process holds (``flock``, exclusive)
LOCK_FILE = ".lock"

#: config keys that may differ on ``--resume``, and why: none changes what the run computes
RESUMABLE_KEYS: dict[str, str] = {
    "train.progress": "only the console progress bar",
    "train.log_every": "console logging cadence; steps.csv gets every step whatever its value",
    "train.report": "only whether report.html is written at the end",
    "train.tensorboard": "a second copy of steps.csv and the validation metrics for TensorBoard",
    "train.threads": "CPU threads: speed only (like resuming on another machine, the last float bits of "
                     "some kernels may differ)",
    "train.save_every": "only how often checkpoints/last is written; a resume from any checkpoint continues "
                        "bit-identically",
    "data.num_workers": "loader processes only: batch order and augmentation are seeded by (seed, epoch, image)",
    "distill.cache.verify": "only how thoroughly the teacher cache is checked when it is opened",
    "distill.teacher_cache": "where the teacher-output cache lives; a cache is found by the fingerprint of the "
                             "teachers and images, not by its folder",
}


class RunFolderError(ConfigError):
    """The run folder cannot take this run: it holds another run, or another process is writing it."""


class ResumeConfigError(TrainingError):
    """The run cannot continue: the config differs from the one its checkpoint was trained with (or that config
    is unreadable); a :class:`TrainingError` like the trainer's own "cannot resume" refusals."""


def run_files(run_dir: Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``run_dir``."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def describe_run(run_dir: Path) -> str:
    """When the run in ``run_dir`` last wrote and how far it got, e.g. ``last written 2026-12-03 14:02, 120 steps
    trained`` (best effort: a damaged log only loses the step count)."""
    found = [run_dir / name for name in run_files(run_dir)]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(p.stat().st_mtime for p in found)))
    steps = ""
    with contextlib.suppress(OSError, ValueError, IndexError):  # steps.csv: the newest word on how far it got
        last = (run_dir / "steps.csv").read_text().strip().splitlines()[-1]
        steps = f", {int(last.split(',')[0])} steps trained"
    if not steps:
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            steps = f", {int(json.loads((run_dir / 'summary.json').read_text())['steps'])} steps trained"
    return f"last written {when}{steps}"


def check_new_run(run_dir: Path) -> None:
    """Refuse to start a new run in a folder that holds one: its files would mix with the new run's."""
    found = run_files(run_dir)
    if found:
        raise RunFolderError(
            f"{run_dir} already holds a run ({describe_run(run_dir)}; {', '.join(found)}): pass --resume "
            "(resume=True from Python) to continue it, or choose another --out for a new run"
        )


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 0.002, ...}``: nested mappings as dotted keys (lists, e.g. ``teachers``, stay whole)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(_flat(value, name) if isinstance(value, dict) and value else {name: value})
    return out


def _normalised(raw: Any) -> dict[str, Any]:
    """A saved config as the current version writes it (defaults of newer keys filled in), so that only real
    differences count; a file the current schema refuses is compared as written."""
    try:
        return yaml.safe_load(dump_config(RunConfig.model_validate(raw)))
    except ValidationError:
        return raw


def _shown(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_ABSENT = object()


def config_changes(saved: dict[str, Any], cfg: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, new value)}`` for every key whose value differs."""
    old, new = _flat(_normalised(saved)), _flat(yaml.safe_load(dump_config(cfg)))
    return {key: (old.get(key, _ABSENT), new.get(key, _ABSENT)) for key in sorted(old.keys() | new.keys())
            if old.get(key, _ABSENT) != new.get(key, _ABSENT)}


def check_resume_config(run_dir: Path, cfg: RunConfig) -> bool:
    """Refuse to resume with a config that changes what the run computes (anything outside
    :data:`RESUMABLE_KEYS`). Returns whether ``config.yaml`` is still to be written (the folder has none)."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return True
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ResumeConfigError(f"cannot resume {run_dir}: its config.yaml is unreadable ({exc}); restore it, or "
                             "choose another --out for a new run") from None
    if not isinstance(saved, dict):
        raise ResumeConfigError(f"cannot resume {run_dir}: its config.yaml holds no config; restore it, or choose "
                             "another --out for a new run")
    refused = {k: v for k, v in config_changes(saved, cfg).items() if k not in RESUMABLE_KEYS}
    if refused:
        listed = "; ".join(f"{k}: {_shown(old)} in the run, {_shown(new)} now" for k, (old, new) in refused.items())
        raise ResumeConfigError(
            f"cannot resume {run_dir} with another config ({listed}): the checkpoint was trained with the run's "
            f"config.yaml. Restore those values to continue it, or start a new run in another --out (train.init_from="
            f"{run_dir} starts it from these weights). On resume only {', '.join(RESUMABLE_KEYS)} may change"
        )
    return False


def _holder(fd: int) -> str:
    """``' (process 1234)'`` from the lock file, if its holder wrote its id there."""
    with contextlib.suppress(OSError, ValueError):
        return f" (process {int(os.pread(fd, 32, 0).decode().strip())})"
    return ""


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN_DIR/.lock`` exclusively while the body runs; a second writer fails at once, naming the folder.
    ``flock`` belongs to the open file, so the kernel releases it when the process ends however it ends."""
    if fcntl is None:
        yield
        return
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise  # e.g. a file system without locks: the storage error reaches the user as it is
            raise RunFolderError(
                f"{run_dir} is being written by another training{_holder(fd)}: two runs in one folder would "
                "corrupt each other's checkpoints and logs; wait for it to end, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, cfg: RunConfig, *, resume: bool, main: bool = True) -> Iterator[bool]:
    """Apply the run-folder rules to ``run_dir`` for the body (the whole training) and yield whether
    ``config.yaml`` is to be written. Only the process that writes files (``main``: rank 0 under torchrun) takes
    the lock; every process checks, before any of them writes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir) if main else contextlib.nullcontext():
        if resume:
            write_config = check_resume_config(run_dir, cfg)
        else:
            check_new_run(run_dir)
            write_config = True
        yield write_config
