"""A run folder belongs to one run (pipeline/run_dir.py): a new run refuses a folder holding another, two writers
never share one, ``--resume`` refuses a changed config except in keys that cannot change the result, and the demo
replaces only the run folders it wrote itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from polydistill.cli import app
from polydistill.config import load_config
from polydistill.demo.story import DEMO_MARKER, clear_demo_runs
from polydistill.errors import ConfigError
from polydistill.pipeline.run_dir import (
    LOCK_FILE,
    RESUMABLE_KEYS,
    ResumeConfigError,
    RunFolderError,
    check_new_run,
    run_lock,
)
from polydistill.pipeline.train import train_run
from tests.conftest import tiny_config


def config(tiny_data, **changes) -> dict:
    cfg = tiny_config(tiny_data["train"], None, max_steps=4, save_every=1)
    for dotted, value in changes.items():
        section, key = dotted.split(".", 1)
        if "." in key:  # distill.cache.verify
            sub, key = key.split(".")
            cfg.setdefault(section, {}).setdefault(sub, {})[key] = value
        else:
            cfg.setdefault(section, {})[key] = value
    return cfg


@pytest.fixture(scope="module")
def stopped_run(tiny_data, tmp_path_factory) -> Path:
    """A run stopped at step 2 of 4 (as an interruption would leave it); each test works on a copy."""
    run = tmp_path_factory.mktemp("run_folder") / "run"
    train_run(load_config(base=config(tiny_data)), run, stop_at_step=2)
    return run


@pytest.fixture
def run(stopped_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(stopped_run, copy)
    return copy


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_new_run_into_a_folder_holding_a_run_is_refused(tiny_data, run, tmp_path):
    before = snapshot(run)
    with pytest.raises(RunFolderError, match=r"already holds a run \(last written .*, 2 steps trained; "
                                             r"config.yaml, steps.csv, summary.json, checkpoints\): pass --resume"):
        train_run(load_config(base=config(tiny_data)), run)
    assert snapshot(run) == before  # nothing of the old run was touched
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config(tiny_data)))
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(run)])
    assert result.exit_code == 2 and "already holds a run" in result.output and "Traceback" not in result.output


def test_resume_continues_the_run_and_keeps_its_config(tiny_data, run):
    saved = (run / "config.yaml").read_bytes()
    assert train_run(load_config(base=config(tiny_data)), run, resume=True).fit.steps == 4
    assert (run / "config.yaml").read_bytes() == saved
    assert [ln.split(",")[0] for ln in (run / "steps.csv").read_text().splitlines()[1:]] == ["1", "2", "3", "4"]


def test_resume_with_a_changed_lr_or_data_is_refused(tiny_data, run):
    saved = (run / "config.yaml").read_bytes()
    changed = config(tiny_data, **{"train.lr": 0.01, "data.train": str(tiny_data["val"])})
    with pytest.raises(ResumeConfigError, match=r"cannot resume .*data.train: '.*train' in the run, '.*val' now; "
                                             r"train.lr: 0.003 in the run, 0.01 now\)"):
        train_run(load_config(base=changed), run, resume=True)
    assert (run / "config.yaml").read_bytes() == saved


def test_resume_with_only_safe_keys_changed_continues(tiny_data, run):
    assert {"train.progress", "train.log_every", "train.report", "train.tensorboard", "train.threads",
            "data.num_workers", "distill.cache.verify"} <= set(RESUMABLE_KEYS)
    saved = (run / "config.yaml").read_bytes()
    safe = config(tiny_data, **{"train.log_every": 1, "train.save_every": 2, "distill.cache.verify": "size"})
    assert train_run(load_config(base=safe), run, resume=True).fit.steps == 4
    assert (run / "config.yaml").read_bytes() == saved  # config.yaml keeps recording the run as it started


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tiny_data, tmp_path):
    folder = tmp_path / "busy"
    folder.mkdir()
    # the first writer: another process holding the lock (a training's own lock is the same flock on .lock)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(folder / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d' % os.getpid()); print('held', flush=True)\n"
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=rf"busy is being written by another training \(process "
                                                 rf"{holder.pid}\).*choose another --out"):
            train_run(load_config(base=config(tiny_data)), folder)
        assert not (folder / "config.yaml").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel drops a killed process's flock
        holder.wait()
    with run_lock(folder):  # free again
        pass


def test_demo_rerun_replaces_only_its_own_run_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYDISTILL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    (out / "student" / "checkpoints" / "last").mkdir(parents=True)  # the demo's own run, marked
    (out / "student" / DEMO_MARKER).write_text("demo\n")
    (out / "student" / "steps.csv").write_text("step\n1\n")
    (out / "label_only").mkdir()  # a demo run from before the marker: trained on the demo's pool
    pool = tmp_path / "cache" / "data" / "pool-0123456789abcdef"
    (out / "label_only" / "config.yaml").write_text(yaml.safe_dump({"data": {"train": str(pool)}}))
    clear_demo_runs(out, ("student", "label_only"))
    for key in ("student", "label_only"):
        assert sorted(p.name for p in (out / key).iterdir()) == [DEMO_MARKER]
        check_new_run(out / key)  # training may start there

    mine = tmp_path / "mine"
    (mine / "student").mkdir(parents=True)
    (mine / "student" / "notes.txt").write_text("my notes")
    with pytest.raises(ConfigError, match=r"mine/student holds files the demo did not write"):
        clear_demo_runs(mine, ("student", "label_only"))
    assert (mine / "student" / "notes.txt").read_text() == "my notes"
